"""A-GCL, GCL and CE against hand computations of the formulas in docs/method.md."""

import math

import pytest
import torch

from lpt.losses import AGCL, GCL, CosineCE

COUNTS = [100, 10, 1]
COSINE = [[0.5, 0.2, -0.1], [0.1, 0.3, 0.4]]
TARGETS = [0, 2]


def hand_agcl(cosine, targets, gamma_pos, gamma_neg, margin=0.1, scale=20.0, eps=0.1):
    """-sum_i y_i w_i log p_i averaged over the batch, written with math only (no noise)."""
    total = 0.0
    for row, t in zip(cosine, targets):
        c = len(row)
        v = [scale * (s - (margin if i == t else 0.0)) for i, s in enumerate(row)]
        z = sum(math.exp(x) for x in v)
        p = [math.exp(x) / z for x in v]
        loss = 0.0
        for i in range(c):
            y = 1 - eps + eps / c if i == t else eps / c
            w = (1 - p[i]) ** gamma_pos if i == t else p[i] ** gamma_neg
            loss -= y * w * math.log(p[i])
        total += loss
    return total / len(cosine)


@pytest.mark.parametrize("gammas", [(0.0, 4.0), (0.5, 8.0)])
def test_agcl_equals_hand_computation(gammas):
    loss = AGCL(COUNTS, gamma_pos=gammas[0], gamma_neg=gammas[1]).eval()
    got = loss(torch.tensor(COSINE), torch.tensor(TARGETS)).item()
    assert got == pytest.approx(hand_agcl(COSINE, TARGETS, *gammas), rel=1e-5)


def test_agcl_noise_off_with_zero_noise_mul_in_training():
    loss = AGCL(COUNTS, noise_mul=0.0).train()
    got = loss(torch.tensor(COSINE), torch.tensor(TARGETS)).item()
    assert got == pytest.approx(hand_agcl(COSINE, TARGETS, 0.0, 4.0), rel=1e-5)


def test_agcl_with_no_focusing_and_smoothing_is_cross_entropy_with_margin():
    loss = AGCL(COUNTS, gamma_pos=0.0, gamma_neg=0.0, label_smoothing=0.0).eval()
    cos, t = torch.tensor(COSINE), torch.tensor(TARGETS)
    margin = torch.nn.functional.one_hot(t, 3) * 0.1
    expected = torch.nn.functional.cross_entropy(20 * (cos - margin), t)
    torch.testing.assert_close(loss(cos, t), expected)


def test_gcl_noise_has_the_stated_distribution():
    torch.manual_seed(0)
    gcl = GCL(COUNTS, margin=0.0, scale=1.0, noise_mul=0.5).train()
    n = 200_000
    cos = torch.zeros(n, 3)
    v = gcl.scaled_logits(cos, torch.zeros(n, dtype=torch.long))
    # m = log(n_max) - log(n_i) = [0, log 10, log 100]; perturbation = -0.5 * delta * m / max(m)
    assert torch.equal(v[:, 0], torch.zeros(n))
    delta_tail = -v[:, 2] / 0.5
    delta_mid = -v[:, 1] / (0.5 * 0.5)
    half_normal_mean = (1 / 3) * math.sqrt(2 / math.pi)
    for delta in (delta_tail, delta_mid):
        assert float(delta.min()) >= 0.0 and float(delta.max()) <= 1.0
        assert float(delta.mean()) == pytest.approx(half_normal_mean, rel=0.01)
        assert float(delta.std()) == pytest.approx((1 / 3) * math.sqrt(1 - 2 / math.pi), rel=0.01)
    # |N(0, 1/3)| exceeds 2/3 with probability 2 * (1 - Phi(2)) = 0.0455
    assert float((delta_tail > 2 / 3).float().mean()) == pytest.approx(0.0455, abs=0.003)


def test_noise_off_in_eval_mode():
    gcl = GCL(COUNTS).eval()
    cos = torch.tensor(COSINE)
    t = torch.tensor(TARGETS)
    assert torch.equal(gcl.scaled_logits(cos, t), gcl.scaled_logits(cos, t))
    assert torch.allclose(gcl.scaled_logits(cos, t), 20 * (cos - 0.1 * torch.nn.functional.one_hot(t, 3)))


def test_equal_counts_give_finite_loss_and_no_noise():
    loss = AGCL([5, 5, 5]).train()
    cos = torch.tensor(COSINE, requires_grad=True)
    value = loss(cos, torch.tensor(TARGETS))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(cos.grad).all()
    assert value.item() == pytest.approx(hand_agcl(COSINE, TARGETS, 0.0, 4.0), rel=1e-5)


def test_focusing_weights_carry_gradient():
    """With gamma_neg > 0, the gradient differs from the one with the weights detached."""
    cos = torch.tensor(COSINE, requires_grad=True)
    AGCL(COUNTS, gamma_neg=4.0).eval()(cos, torch.tensor(TARGETS)).backward()
    g = cos.grad.clone()
    cos.grad = None
    loss = AGCL(COUNTS, gamma_neg=4.0).eval()
    log_p = torch.log_softmax(loss.scaled_logits(cos, torch.tensor(TARGETS)), 1)
    p = log_p.exp().detach()
    onehot = torch.nn.functional.one_hot(torch.tensor(TARGETS), 3).bool()
    w = torch.where(onehot, torch.ones_like(p), p.pow(4.0))
    y = onehot * 0.9 + 0.1 / 3
    (-(y * w * log_p).sum(1).mean()).backward()
    assert not torch.allclose(g, cos.grad)


def test_cosine_ce_matches_torch():
    cos, t = torch.tensor(COSINE), torch.tensor(TARGETS)
    expected = torch.nn.functional.cross_entropy(20 * cos, t, label_smoothing=0.1)
    torch.testing.assert_close(CosineCE(20.0, 0.1)(cos, t), expected)


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="class_counts"):
        AGCL([10, 0, 3])
