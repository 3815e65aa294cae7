"""The training step's schedule, LPT's method (its loss composition) and the phase trainer on a tiny model."""

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from lpt.config import Config, PhaseConfig
from lpt.engine.step import Env, TrainingError, TrainStep, lr_schedule, scaled_lr
from lpt.engine.trainer import PhaseTrainer
from lpt.methods import get_method, stream_losses
from lpt.losses import AGCL
from lpt.model import LPT

COUNTS = [100, 40, 20, 8, 2]
CPU = torch.device("cpu")


def lpt_method():
    """LPT's method object (A-GCL of both streams, eta 0.5) for the class counts COUNTS."""
    return get_method("lpt")(Config(), COUNTS)


def train_phase(model, method, phase, stream, pcfg, **options):
    return PhaseTrainer(model, method, f"phase{phase}", stream, pcfg, Env(CPU, progress=False), desc=f"phase{phase}",
                        **options).run()


pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------- schedule


def test_lr_schedule_values():
    lrs = lr_schedule(0.1, 10, 2)
    assert len(lrs) == 10
    # warm-up base * (s + 1) / warmup, then 0.5 * base * (1 + cos(pi * (s - 2) / 8))
    expected = {
        0: 0.05,  # 0.1 * 1 / 2
        1: 0.1,  # 0.1 * 2 / 2
        2: 0.1,  # t = 0
        3: 0.0961939766,  # t = 1/8: 0.05 * (1 + cos(pi / 8)) = 0.05 * 1.9238795
        6: 0.05,  # t = 1/2
        9: 0.0038060234,  # t = 7/8: 0.05 * (1 - 0.9238795)
    }
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-8), step
    for s in range(2, 10):
        assert lrs[s] == pytest.approx(0.05 * (1 + math.cos(math.pi * (s - 2) / 8)), rel=1e-12)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_lr_schedule_without_warmup_starts_at_base():
    lrs = lr_schedule(0.2, 4, 0)
    assert lrs == pytest.approx([0.2, 0.1 * (1 + math.cos(math.pi / 4)), 0.1, 0.1 * (1 + math.cos(3 * math.pi / 4))])


def test_lr_schedule_all_warmup():
    assert lr_schedule(0.3, 3, 3) == pytest.approx([0.1, 0.2, 0.3])


def test_scaled_lr():
    assert scaled_lr(PhaseConfig(lr=0.02, batch_size=64), 1) == pytest.approx(0.005)  # 0.02 * 64 / 256
    assert scaled_lr(PhaseConfig(lr=0.02, batch_size=64), 4) == pytest.approx(0.02)  # 0.02 * 64 * 4 / 256
    assert scaled_lr(PhaseConfig(lr=0.04, batch_size=256), 1) == pytest.approx(0.04)


# ----------------------------------------------------------------------------- methods


def test_stream_weight():
    method = lpt_method()
    for e in range(10):
        assert method.stream_weight("balanced", 2, e, 10) == 1.0
        assert method.stream_weight("instance", 1, e, 10) == 1.0
        assert method.stream_weight("balanced", 1, e, 10) == 1.0
    got = [method.stream_weight("instance", 2, e, 10) for e in range(10)]
    # 0.5 * (10 - e) / 10
    assert got == pytest.approx([0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05])


def test_stream_losses_use_the_per_stream_focusing():
    losses = stream_losses(Config(), COUNTS)
    assert set(losses) == {"balanced", "instance"}
    assert all(isinstance(loss, AGCL) for loss in losses.values())
    assert (losses["balanced"].gamma_pos, losses["balanced"].gamma_neg) == (0.0, 4.0)
    assert (losses["instance"].gamma_pos, losses["instance"].gamma_neg) == (0.5, 8.0)
    for loss in losses.values():
        assert (loss.margin, loss.scale, loss.noise_mul, loss.label_smoothing) == (0.1, 20.0, 0.5, 0.1)
        # cloud m_i / max(m) with m_i = log(100 / n_i)
        cloud = [math.log(100 / n) / math.log(50) for n in COUNTS]
        assert loss.cloud.tolist() == pytest.approx(cloud, rel=1e-6)


def tiny_lpt(phase, seed=0):
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=0)
    with torch.no_grad():  # nonzero weights everywhere (timm zero-inits some biases and the class token)
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model = LPT(vit, num_classes=5, prompt_len=3, pool_size=4, split_block=2, top_k=2)
    model.set_phase(phase)
    return model.eval()


def reference_agcl(gamma_pos, gamma_neg):
    return AGCL(COUNTS, margin=0.1, scale=20.0, noise_mul=0.5, gamma_pos=gamma_pos, gamma_neg=gamma_neg,
                label_smoothing=0.1).eval()


def key_term(model, images):
    """1 - mean over batch and top-k of cos(q, k_j), with the top-k keys picked here."""
    q = model.query(images)
    sims = F.cosine_similarity(q[:, None], model.pool.keys[None], dim=-1)
    return 1.0 - sims.topk(model.pool.top_k, dim=1).values.mean()


def two_batches(seed=1):
    g = torch.Generator().manual_seed(seed)
    xb, xi = torch.randn(4, 3, 16, 16, generator=g), torch.randn(3, 3, 16, 16, generator=g)
    yb, yi = torch.tensor([0, 1, 2, 4]), torch.tensor([0, 0, 3])
    return {"balanced": (xb, yb), "instance": (xi, yi)}


@pytest.mark.parametrize("phase", [1, 2])
def test_lpt_phase_loss_equals_hand_assembled_loss(phase):
    model = tiny_lpt(phase)
    method = lpt_method().eval()
    batches = two_batches()
    (xb, yb), (xi, yi) = batches["balanced"], batches["instance"]
    out = method(model, batches, 2, 10)
    beta = 0.4  # 0.5 * (10 - 2) / 10
    with torch.no_grad():
        lb, li = model(xb), model(xi)  # separate forward passes
        bal, ins = reference_agcl(0.0, 4.0), reference_agcl(0.5, 8.0)
        term_b, term_i = bal(lb, yb), ins(li, yi)
        if phase == 2:
            term_b, term_i = term_b + key_term(model, xb), term_i + key_term(model, xi)
        expected = term_b + beta * term_i
        swapped = ins(lb, yb) + beta * bal(li, yi) + (expected - term_b - beta * term_i)
    # one concatenated forward equals two separate ones
    torch.testing.assert_close(out["logits"], torch.cat([lb, li]), atol=1e-5, rtol=1e-5)
    assert torch.equal(out["labels"], torch.cat([yb, yi]))
    assert out["loss"].ndim == 0 and out["loss"].requires_grad
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # the test tells the streams' losses apart
    assert out["loss"].item() != pytest.approx(swapped.item(), rel=1e-3)
    # the stream order in the dict does not matter
    reordered = method(model, {"instance": batches["instance"], "balanced": batches["balanced"]}, 2, 10)
    assert reordered["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_lpt_phase_single_stream_has_weight_one():
    model = tiny_lpt(2)
    method = lpt_method().eval()
    xi, yi = two_batches()["instance"]
    out = method(model, {"instance": (xi, yi)}, 5, 10)
    with torch.no_grad():
        expected = reference_agcl(0.5, 8.0)(model(xi), yi) + key_term(model, xi)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------- train_phase


class TinyStream:
    """Three iterations per epoch of a balanced and an instance batch; NaN images where asked."""

    def __init__(self, steps=3, nan_at=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [
            {"balanced": (torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g)),
             "instance": (torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g))}
            for _ in range(steps)
        ]
        self.nan_at = nan_at  # (epoch, iteration)
        self.epochs = []

    def set_epoch(self, epoch, start_step=0):
        self.epochs.append(epoch)
        self.start_step = start_step

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, b in enumerate(self.batches):
            if i < self.start_step:
                continue
            if self.nan_at == (self.epochs[-1], i):
                b = {k: (torch.full_like(x, float("nan")), y) for k, (x, y) in b.items()}
            yield b


@pytest.mark.parametrize("phase", [1, 2])
def test_train_phase_trains_only_the_phase_tensors(phase):
    model = tiny_lpt(phase)
    method = lpt_method()
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trained = {k: v.clone() for k, v in model.trained_tensors().items()}
    stream, seen = TinyStream(), []
    pcfg = PhaseConfig(epochs=2, batch_size=4, lr=2.0, weight_decay=1e-3)
    records = train_phase(model, method, phase, stream, pcfg, on_epoch_end=seen.append)
    assert stream.epochs == [0, 1]
    assert len(records) == 2 and seen == records
    assert [r["epoch"] for r in records] == [1, 2] and {r["phase"] for r in records} == {f"phase{phase}"}
    for r in records:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert 0.0 <= r["train_acc"] <= 100.0
    # base lr 2.0 * 4 / 256 = 0.03125; 6 steps, 3 of warm-up: step 2 at base, step 5 at t = 2/3 -> base / 4
    assert records[0]["lr"] == pytest.approx(0.03125)
    assert records[1]["lr"] == pytest.approx(0.0078125)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), k
    changed = {k for k, v in model.trained_tensors().items() if not torch.equal(v, trained[k])}
    assert changed == ({"shared_prompt", "head.weight"} if phase == 1 else {"pool.prompts", "pool.keys", "head.weight"})


def test_train_phase_nan_loss_raises_naming_the_step():
    model = tiny_lpt(2)
    method = lpt_method()
    with pytest.raises(TrainingError, match=r"phase2: loss is not finite at epoch 1, step 0"):
        train_phase(model, method, 2, TinyStream(nan_at=(0, 0)), PhaseConfig(epochs=2, batch_size=4))


def test_train_phase_nan_loss_later_names_the_global_step():
    model = tiny_lpt(1)
    method = lpt_method()
    stream = TinyStream(nan_at=(1, 1))  # second epoch, second iteration: global step 3 + 1 = 4
    with pytest.raises(TrainingError, match=r"loss is not finite at epoch 2, step 4;"):
        train_phase(model, method, 1, stream, PhaseConfig(epochs=3, batch_size=4), log_every=1)
    assert stream.epochs == [0, 1]


def test_train_phase_nan_loss_names_the_first_bad_step_with_default_log_every():
    model = tiny_lpt(1)
    method = lpt_method()
    with pytest.raises(TrainingError, match=r"loss is not finite at epoch 1, step 1;"):
        train_phase(model, method, 1, TinyStream(steps=5, nan_at=(0, 1)), PhaseConfig(epochs=1, batch_size=4))


@pytest.mark.parametrize("phase", [1, 2])
def test_gradient_accumulation_equals_the_full_batch(phase):
    """grad_accum splits each step into micro-batches; without noise or dropout the update is the same."""
    batches = two_batches()
    grads = []
    for accum in (1, 2, 4):
        model = tiny_lpt(phase)
        model.dropout.p = 0.0
        method = lpt_method().eval()
        params = method.prepare(model, f"phase{phase}")
        step = TrainStep(model, method, params, PhaseConfig(epochs=10, grad_accum=accum), [0.0], Env(CPU), "phase")
        out = step.forward_backward(batches, 2)
        grads.append(([p.grad.clone() for p in model.parameters() if p.requires_grad], out["loss"]))
    for g, loss in grads[1:]:
        torch.testing.assert_close(loss, grads[0][1], atol=1e-5, rtol=1e-5)
        for a, b in zip(g, grads[0][0]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_out_of_memory_names_the_batch_size_and_suggests_accumulation():
    class OutOfMemory(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model = tiny_lpt(2)
    params = [p for p in model.parameters() if p.requires_grad]
    step = TrainStep(model, OutOfMemory(), params, PhaseConfig(), [0.0], Env(CPU), "phase2")
    with pytest.raises(TrainingError, match=r"phase2: GPU out of memory at batch size 4 per stream \(7 images per "
                                            r"step\); lower phase2.batch_size or set phase2.grad_accum=2"):
        step.forward_backward(two_batches(), 0)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_key_term_is_the_published_half_sum_over_the_selected_keys(k):
    """The published script subtracts 0.5 * reduced_sim, reduced_sim = sum over images and selected keys of
    cos(q, k_j) / B; lpt adds 1 to it (a constant), whatever k is."""
    model = tiny_lpt(2)
    model.pool.top_k = k
    method = lpt_method().eval()
    xi, yi = two_batches()["instance"]
    out = method(model, {"instance": (xi, yi)}, 5, 10)
    with torch.no_grad():
        q = model.query(xi)
        cos = [[F.cosine_similarity(q[b], key, dim=0).item() for key in model.pool.keys] for b in range(len(xi))]
        reduced_sim = sum(sum(sorted(row, reverse=True)[:k]) for row in cos) / len(xi)
        expected = reference_agcl(0.5, 8.0)(model(xi), yi).item() + 1.0 - 0.5 * reduced_sim
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_published_schedule_equals_timms_scheduler_stepped_per_epoch_as_the_script(monkeypatch):
    from timm.scheduler import CosineLRScheduler

    seen = []
    call = TrainStep.__call__

    def recording(self, batches, index, epoch):
        out = call(self, batches, index, epoch)
        seen.append(self.optimizer.param_groups[0]["lr"])
        return out

    monkeypatch.setattr(TrainStep, "__call__", recording)
    pcfg = PhaseConfig(epochs=3, batch_size=4, lr=2.0, schedule="published")
    train_phase(tiny_lpt(1), lpt_method(), 1, TinyStream(steps=3), pcfg)
    base = 2.0 * 4 / 256
    # DongSky/LPT train_dual_dualloss.py: built once, stepped with step(epoch + 1) after each epoch
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    scheduler = CosineLRScheduler(optimizer, warmup_lr_init=1e-6, t_initial=3, cycle_decay=0.1, warmup_t=1)
    expected = []
    for epoch in range(3):
        expected += [optimizer.param_groups[0]["lr"]] * 3
        scheduler.step(epoch + 1)
    assert seen == expected
    by_hand = [1e-6] * 3 + [0.5 * base * (1 + math.cos(math.pi / 3))] * 3 \
        + [0.5 * base * (1 + math.cos(2 * math.pi / 3))] * 3
    assert seen == pytest.approx(by_hand, rel=1e-12)
