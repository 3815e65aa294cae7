"""The losses against hand computations of the formulas in docs/method.md: A-GCL, GCL, CE and the long-tail
losses (logit adjustment, balanced softmax, LDAM-DRW, class-balanced weights, focal, GRW, LADE)."""

import math

import pytest
import torch

from lpt.config import Config, ConfigError, apply_overrides, from_dict
from lpt.losses import (
    AGCL,
    GCL,
    LDAM,
    BalancedSoftmax,
    CosineCE,
    LADE,
    FocalLoss,
    GeneralizedReweight,
    LogitAdjusted,
    class_balanced_weights,
    generalized_reweight_weights,
)
from lpt.methods import Method, stream_losses

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


# ----------------------------------------------------------------------------- long-tail losses

# n^(-1/4) = 1/2, 1/3, 1, 1/4: LDAM's margins at max_margin 0.5 are 0.25, 1/6, 0.5, 0.125
COUNTS4 = [16, 81, 1, 256]
LOGITS4 = [[0.5, 0.2, -0.1, 0.3], [0.1, 0.3, 0.4, -0.2], [-0.3, 0.0, 0.2, 0.6]]
TARGETS4 = [0, 2, 3]
MARGINS4 = [0.25, 1 / 6, 0.5, 0.125]


def hand_ce(rows, targets, offsets=None, weights=None):
    """mean_i w_{y_i} * (log sum_j exp z_ij - z_{i y_i}) with z = row + offsets, written with math only."""
    total = 0.0
    for row, t in zip(rows, targets):
        z = [x + (offsets[j] if offsets else 0.0) for j, x in enumerate(row)]
        total += (weights[t] if weights else 1.0) * (math.log(sum(math.exp(x) for x in z)) - z[t])
    return total / len(rows)


def scaled(rows, scale=20.0):
    return [[scale * x for x in row] for row in rows]


def log_prior(counts):
    return [math.log(n / sum(counts)) for n in counts]


def call(loss, rows=LOGITS4, targets=TARGETS4):
    return loss(torch.tensor(rows), torch.tensor(targets)).item()


def test_logit_adjustment_at_tau_zero_is_cross_entropy():
    la = LogitAdjusted(COUNTS4, scale=20.0, tau=0.0)
    assert call(la) == pytest.approx(hand_ce(scaled(LOGITS4), TARGETS4), rel=1e-6)
    assert call(la) == pytest.approx(call(CosineCE(20.0, 0.0)), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_logit_adjustment_adds_tau_log_prior(tau):
    offsets = [tau * v for v in log_prior(COUNTS4)]  # tau * log(n_j / 354)
    got = call(LogitAdjusted(COUNTS4, scale=20.0, tau=tau))
    assert got == pytest.approx(hand_ce(scaled(LOGITS4), TARGETS4, offsets), rel=1e-6)
    assert got != pytest.approx(hand_ce(scaled(LOGITS4), TARGETS4), rel=1e-3)  # the prior matters here


def test_balanced_softmax_is_ce_on_logits_plus_log_prior_and_la_at_tau_one():
    bs = call(BalancedSoftmax(COUNTS4, scale=20.0))
    assert bs == pytest.approx(hand_ce(scaled(LOGITS4), TARGETS4, log_prior(COUNTS4)), rel=1e-6)
    assert bs == call(LogitAdjusted(COUNTS4, scale=20.0, tau=1.0))


def test_ldam_margins_follow_n_to_the_minus_quarter():
    assert LDAM(COUNTS4, max_margin=0.5).margins.tolist() == pytest.approx(MARGINS4, rel=1e-6)
    assert LDAM(COUNTS4, max_margin=0.2).margins.tolist() == pytest.approx([0.1, 0.2 / 3, 0.2, 0.05], rel=1e-6)


def ldam_rows(scale):
    """scale * (s - m_y at the label), the margins m = MARGINS4."""
    return [[scale * (x - (MARGINS4[t] if j == t else 0.0)) for j, x in enumerate(row)]
            for row, t in zip(LOGITS4, TARGETS4)]


def test_ldam_is_ce_on_margin_subtracted_scaled_logits():
    assert call(LDAM(COUNTS4, scale=30.0)) == pytest.approx(hand_ce(ldam_rows(30.0), TARGETS4), rel=1e-6)


def test_class_balanced_weights_are_the_normalised_inverse_effective_number():
    # beta 0.5, n = 1, 2, 3: (1 - beta) / (1 - beta^n) = 1, 2/3, 4/7 (sum 47/21); times 3 / sum
    assert class_balanced_weights([1, 2, 3], 0.5).tolist() == pytest.approx([63 / 47, 42 / 47, 36 / 47], rel=1e-6)
    assert class_balanced_weights([1, 2, 3], 0.0).tolist() == [1.0, 1.0, 1.0]
    assert CosineCE(20.0, 0.0, [1, 2, 3], cb_beta=0.0).weights is None


CB_WEIGHTS = [63 / 47, 42 / 47, 36 / 47]  # beta 0.5 on counts [1, 2, 3], as above


def test_class_balanced_weights_multiply_each_images_term():
    rows, t = COSINE + [[0.0, 0.3, 0.1]], TARGETS + [1]  # classes 0, 2, 1
    want = hand_ce(scaled(rows), t, weights=CB_WEIGHTS)
    assert call(CosineCE(20.0, 0.0, [1, 2, 3], cb_beta=0.5), rows, t) == pytest.approx(want, rel=1e-6)
    offsets = [0.5 * math.log(n / 6) for n in (1, 2, 3)]
    got = call(LogitAdjusted([1, 2, 3], 20.0, tau=0.5, cb_beta=0.5), rows, t)
    assert got == pytest.approx(hand_ce(scaled(rows), t, offsets, CB_WEIGHTS), rel=1e-6)


def test_weighted_batch_mean_adds_up_over_micro_batches():
    """The plain mean of weighted terms: halves (each weighted 1/2 as the method's shares do) add up to the whole,
    which PyTorch's weighted mean (divided by the batch's sum of weights) would not, with these unequal weights."""
    loss = CosineCE(20.0, 0.0, [1, 2, 3], cb_beta=0.5)
    rows, t = COSINE + [[0.0, 0.3, 0.1], [0.2, 0.2, 0.2]], TARGETS + [1, 1]
    halves = 0.5 * call(loss, rows[:2], t[:2]) + 0.5 * call(loss, rows[2:], t[2:])
    assert call(loss, rows, t) == pytest.approx(halves, rel=1e-6)


def hand_focal(rows, targets, gamma, weights=None):
    """mean_i w_{y_i} * -(1 - p_iy)^gamma * log p_iy, p = softmax(row), with math only."""
    total = 0.0
    for row, t in zip(rows, targets):
        p = math.exp(row[t]) / sum(math.exp(x) for x in row)
        total -= (weights[t] if weights else 1.0) * (1 - p) ** gamma * math.log(p)
    return total / len(rows)


def test_focal_at_gamma_zero_is_cross_entropy():
    assert call(FocalLoss(COUNTS4, 20.0, gamma=0.0)) == pytest.approx(hand_ce(scaled(LOGITS4), TARGETS4), rel=1e-6)


def test_focal_at_gamma_two_is_the_hand_formula():
    rows = scaled(LOGITS4, 5.0)  # a small scale keeps p_y away from 1, so the factor matters
    got = call(FocalLoss(COUNTS4, 5.0, gamma=2.0))
    assert got == pytest.approx(hand_focal(rows, TARGETS4, 2.0), rel=1e-6)
    assert got < 0.9 * hand_ce(rows, TARGETS4)
    rows3, t3 = COSINE + [[0.0, 0.3, 0.1]], TARGETS + [1]
    got = call(FocalLoss([1, 2, 3], 5.0, gamma=2.0, cb_beta=0.5), rows3, t3)
    assert got == pytest.approx(hand_focal(scaled(rows3, 5.0), t3, 2.0, CB_WEIGHTS), rel=1e-6)


def test_focal_factor_carries_gradient():
    """As in the paper (and LIFT), (1 - p_y)^gamma is differentiated too: detaching it changes the gradient."""
    grads = []
    for detach in (False, True):
        z = torch.tensor(scaled(LOGITS4, 5.0), requires_grad=True)
        t = torch.tensor(TARGETS4)
        log_p = torch.log_softmax(z, 1).gather(1, t[:, None]).squeeze(1)
        factor = (1 - log_p.exp()).pow(2.0)
        (-(factor.detach() if detach else factor) * log_p).mean().backward()
        grads.append(z.grad)
    logits = torch.tensor(LOGITS4, requires_grad=True)
    FocalLoss(COUNTS4, 5.0, gamma=2.0)(logits, torch.tensor(TARGETS4)).backward()
    torch.testing.assert_close(logits.grad, 5.0 * grads[0])
    assert not torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


def hand_smoothed_ce(rows, targets, eps):
    """mean_i -sum_j y_ij log p_ij with y = 1 - eps + eps/C at the label, eps/C elsewhere."""
    total = 0.0
    for row, t in zip(rows, targets):
        lse = math.log(sum(math.exp(x) for x in row))
        total -= sum(((1 - eps) * (j == t) + eps / len(row)) * (x - lse) for j, x in enumerate(row))
    return total / len(rows)


def test_label_smoothing_applies_to_the_ce_based_losses():
    prior = [[20 * x + o for x, o in zip(row, log_prior(COUNTS4))] for row in LOGITS4]
    cases = [(LogitAdjusted(COUNTS4, 20.0, 1.0, label_smoothing=0.1), prior),
             (BalancedSoftmax(COUNTS4, 20.0, label_smoothing=0.1), prior),
             (LDAM(COUNTS4, 20.0, label_smoothing=0.1), ldam_rows(20.0)),
             (FocalLoss(COUNTS4, 20.0, gamma=0.0, label_smoothing=0.1), scaled(LOGITS4))]
    for loss, rows in cases:
        assert call(loss) == pytest.approx(hand_smoothed_ce(rows, TARGETS4, 0.1), rel=1e-6), type(loss).__name__


DRW_WEIGHTS = [1e-4 / (1 - 0.9999 ** n) for n in COUNTS4]
DRW_WEIGHTS = [4 * w / sum(DRW_WEIGHTS) for w in DRW_WEIGHTS]
LDAM_ROWS = ldam_rows(20.0)


def test_drw_switches_to_class_balanced_weights_at_its_epoch():
    loss = LDAM(COUNTS4, 20.0, drw_epoch=2)
    for epoch, weights in ((0, None), (1, None), (2, DRW_WEIGHTS), (5, DRW_WEIGHTS), (1, None)):
        loss.set_epoch(epoch)
        assert (loss.weights is None) if weights is None else loss.weights.tolist() == pytest.approx(weights)
        assert call(loss) == pytest.approx(hand_ce(LDAM_ROWS, TARGETS4, weights=weights), rel=1e-6), epoch
    never = LDAM(COUNTS4, 20.0, drw_epoch=0)
    never.set_epoch(100)
    assert never.weights is None


# ----------------------------------------------------------------------------- LIFT+'s GRW and LADE


def test_generalized_reweight_weights_are_the_normalised_inverse_prior_power():
    # counts 1, 2, 3 (prior 1/6, 2/6, 3/6): pi^-1 = 6, 3, 2 (sum 11), times 3 / 11; pi^-0.5 = sqrt(6), sqrt(3), sqrt(2)
    assert generalized_reweight_weights([1, 2, 3], 1.0).tolist() == pytest.approx([18 / 11, 9 / 11, 6 / 11], rel=1e-6)
    half = [math.sqrt(6), math.sqrt(3), math.sqrt(2)]
    assert generalized_reweight_weights([1, 2, 3], 0.5).tolist() == pytest.approx([3 * w / sum(half) for w in half])
    assert generalized_reweight_weights([1, 2, 3], 0.0).tolist() == [1.0, 1.0, 1.0]


def test_grw_value_and_gradient_equal_the_hand_formula():
    """Value: the plain mean of w_y * CE; gradient d/ds_ij = scale * w_{y_i} (p_ij - [j = y_i]) / B."""
    w = [18 / 11, 9 / 11, 6 / 11]
    rows, t = COSINE + [[0.0, 0.3, 0.1]], TARGETS + [1]
    s = torch.tensor(rows, requires_grad=True)
    value = GeneralizedReweight([1, 2, 3], 5.0, exp_scale=1.0)(s, torch.tensor(t))
    assert value.item() == pytest.approx(hand_ce(scaled(rows, 5.0), t, weights=w), rel=1e-6)
    value.backward()
    for i, (row, y) in enumerate(zip(rows, t)):
        z = [5.0 * x for x in row]
        p = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
        want = [5.0 * w[y] * (p[j] - (j == y)) / len(rows) for j in range(3)]
        assert s.grad[i].tolist() == pytest.approx(want, rel=1e-5, abs=1e-7)


def hand_lade(rows, targets, counts, lam=0.1, weight=0.1):
    """LIFT+'s LADELoss (utils/losses.py:107-148) written with math only, on the scaled logits ``rows``."""
    n_cls, batch = len(counts), len(rows)
    prior = [n / sum(counts) for n in counts]
    estimate = 0.0
    for c in range(n_cls):
        members = [row[c] for row, y in zip(rows, targets) if y == c]
        first = sum(members) / (len(members) + 1e-8)
        spread = [row[c] - math.log(prior[c] + 1e-9) + math.log(1 / n_cls + 1e-9) for row in rows]
        second = math.log(sum(math.exp(v) for v in spread)) - math.log(batch)
        estimate -= prior[c] * (first - second - lam * second ** 2)
    return hand_ce(rows, targets, [math.log(p) for p in prior]) + weight * estimate


def test_lade_value_and_gradient_equal_the_published_formula():
    """Value against LIFT+'s formula by hand (one class absent from the batch, as happens), gradient against the hand
    formula's central differences in float64."""
    rows = [[0.5, 0.2, -0.1, 0.3], [0.1, 0.3, 0.4, -0.2], [-0.3, 0.0, 0.2, 0.6], [0.2, 0.1, 0.0, -0.4]]
    t = [0, 2, 3, 0]  # class 1 absent
    loss = LADE(COUNTS4, scale=5.0, remine_lambda=0.1, weight=0.1)
    s = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    value = loss(s, torch.tensor(t))
    assert value.item() == pytest.approx(hand_lade(scaled(rows, 5.0), t, COUNTS4), rel=1e-6)
    assert value.item() != pytest.approx(call(LogitAdjusted(COUNTS4, 5.0, 1.0), rows, t), rel=1e-3)
    value.backward()
    h = 1e-5
    for i in range(4):
        for j in range(4):
            up = [[x + (h if (a, b) == (i, j) else 0.0) for b, x in enumerate(r)] for a, r in enumerate(rows)]
            down = [[x - (h if (a, b) == (i, j) else 0.0) for b, x in enumerate(r)] for a, r in enumerate(rows)]
            numeric = (hand_lade(scaled(up, 5.0), t, COUNTS4) - hand_lade(scaled(down, 5.0), t, COUNTS4)) / (2 * h)
            assert s.grad[i, j].item() == pytest.approx(numeric, rel=1e-4, abs=1e-6), (i, j)


def test_lade_with_zero_weight_is_logit_adjustment():
    assert call(LADE(COUNTS4, 20.0, weight=0.0)) == pytest.approx(call(LogitAdjusted(COUNTS4, 20.0, 1.0)), rel=1e-6)


def test_lade_refuses_micro_batches():
    with pytest.raises(ConfigError, match="'loss.name' is 'lade' with grad_accum > 1"):
        from_dict(apply_overrides({}, ["loss.name=lade", "phase2.grad_accum=2"]))


class _CosinesIn(Method):
    """A method whose 'images' are the logits themselves (unregistered: no name of its own)."""

    def logits(self, model, inputs):
        return {"logits": inputs}


def test_method_forward_tells_the_losses_the_epoch():
    cfg = from_dict(apply_overrides({}, ["loss.name=ldam", "loss.drw_epoch=3", "loss.label_smoothing=0"]))
    method = _CosinesIn(cfg, COUNTS4)
    batch = {"balanced": (torch.tensor(LOGITS4), torch.tensor(TARGETS4))}
    for epoch, weights in ((0, None), (2, None), (3, DRW_WEIGHTS), (9, DRW_WEIGHTS)):
        got = method(None, batch, epoch, 10)["loss"].item()
        assert got == pytest.approx(hand_ce(LDAM_ROWS, TARGETS4, weights=weights), rel=1e-6), epoch


def test_stream_losses_build_the_long_tail_losses_from_the_config():
    def built(*overrides):
        return stream_losses(from_dict(apply_overrides({}, list(overrides))), COUNTS4)["instance"]

    la = built("loss.name=la", "loss.tau=0.5", "loss.cb_beta=0.5", "loss.scale=10")
    assert type(la) is LogitAdjusted and (la.scale, la.tau, la.label_smoothing) == (10.0, 0.5, 0.1)
    assert la.weights.tolist() == pytest.approx(class_balanced_weights(COUNTS4, 0.5).tolist())
    ldam = built("loss.name=ldam", "loss.max_margin=0.2", "loss.drw_epoch=4")
    assert type(ldam) is LDAM and (ldam.max_margin, ldam.drw_epoch) == (0.2, 4)
    focal = built("loss.name=focal", "loss.focal_gamma=1.5")
    assert type(focal) is FocalLoss and focal.gamma == 1.5 and focal.weights is None
    assert type(built("loss.name=bs")) is BalancedSoftmax
    grw = built("loss.name=grw", "loss.grw_exp_scale=0.5")
    assert type(grw) is GeneralizedReweight and grw.exp_scale == 0.5
    lade = built("loss.name=lade", "loss.lade_lambda=0.2", "loss.lade_weight=0.3")
    assert type(lade) is LADE and (lade.remine_lambda, lade.weight) == (0.2, 0.3)
    assert Config().loss.name == "agcl" and type(built()) is AGCL


@pytest.mark.parametrize("overrides, key, expected", [
    (["loss.name=la", "loss.tau=-1"], "loss.tau", "0 or more"),
    (["loss.name=ldam", "loss.max_margin=-0.5"], "loss.max_margin", "0 or more"),
    (["loss.name=ldam", "loss.drw_epoch=-1"], "loss.drw_epoch", "0 or more"),
    (["loss.name=focal", "loss.focal_gamma=-2"], "loss.focal_gamma", "0 or more"),
    (["loss.name=ce", "loss.cb_beta=1"], "loss.cb_beta", "[0, 1)"),
    (["loss.name=ce", "loss.cb_beta=-0.1"], "loss.cb_beta", "[0, 1)"),
    (["loss.cb_beta=0.99"], "loss.cb_beta", "not 'agcl'"),  # would be ignored
    (["loss.name=ldam", "loss.cb_beta=0.99"], "loss.cb_beta", "not 'ldam'"),
    (["loss.name=la", "loss.drw_epoch=3"], "loss.drw_epoch", "not 'la'"),
    (["loss.name=grw", "loss.grw_exp_scale=-1"], "loss.grw_exp_scale", "0 or more"),
    (["loss.name=lade", "loss.lade_weight=-1"], "loss.lade_weight", "0 or more"),
])
def test_bad_long_tail_loss_values_are_one_line_errors_naming_the_key(overrides, key, expected):
    with pytest.raises(ConfigError) as info:
        from_dict(apply_overrides({}, overrides))
    msg = str(info.value)
    assert msg.startswith(f"config key '{key}' is ") and expected in msg and "\n" not in msg


def test_long_tail_loss_values_in_range_are_accepted():
    for overrides in (["loss.name=la", "loss.tau=0", "loss.cb_beta=0.9999"], ["loss.name=ldam", "loss.drw_epoch=3"],
                      ["loss.name=focal", "loss.focal_gamma=0", "loss.cb_beta=0.5"],
                      ["loss.name=ce", "loss.cb_beta=0"]):
        assert from_dict(apply_overrides({}, overrides)).loss.name == overrides[0].split("=")[1]
