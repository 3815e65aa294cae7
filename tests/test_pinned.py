"""Pinned numbers: the demo preset's training losses and metrics, and one official-checkpoint forward.

Written before the code was restructured and kept byte-for-byte since: any change of behaviour in
the training step, the samplers, the losses, the model or the checkpoint import moves these values.
Only the public API is used (``lpt.train``, ``lpt.load_config``, ``lpt.load_official_checkpoint``),
so the test survives any move of the code behind it. Deterministic mode, one thread, CPU.
"""

import json

import pytest
import torch

import lpt
from lpt.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")

# Tiny data (conftest.tiny_fmnist, imbalance 10: 40 ... 4 images per class, 150 in all), the demo
# preset's shipped backbone; a batch of 160 per stream makes every epoch exactly one step.
STEPS = ["data.imbalance_ratio=10", "data.max_per_class=40", "phase1.epochs=3", "phase2.epochs=2",
         "phase1.batch_size=160", "phase2.batch_size=160", "eval_batch_size=80", "progress=false",
         "deterministic=true"]

# (phase, epoch) -> loss of that epoch's single step
PINNED_LOSSES = {
    ("phase1", 1): 7.390305042266846,
    ("phase1", 2): 5.724458694458008,
    ("phase1", 3): 4.334094047546387,
    ("phase2", 1): 5.932517051696777,
    ("phase2", 2): 4.885424613952637,
}
PINNED_EVALS = {
    "phase1": [41.25, None, 66.66666666666667, 30.357142857142858],  # overall, many (none here), medium, few
    "phase2": [73.75, None, 100.0, 62.5],
}


def test_demo_preset_losses_and_metrics_are_pinned(tiny_fmnist, tmp_path):
    cfg = load_config("demo", [f"data.root={tiny_fmnist}", *STEPS])
    metrics = lpt.train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {(r["phase"], r["epoch"]): r["loss"] for r in records if "epoch" in r}
    evals = {r["phase"]: [r["eval"][k] for k in ("overall", "many", "medium", "few")] for r in records if "eval" in r}
    assert losses.keys() == PINNED_LOSSES.keys()
    for key, loss in PINNED_LOSSES.items():
        assert losses[key] == pytest.approx(loss, abs=1e-5), key
    for phase, values in PINNED_EVALS.items():
        assert evals[phase] == pytest.approx(values, abs=1e-9), phase
    assert [metrics[k] for k in ("overall", "many", "medium", "few")] == pytest.approx(PINNED_EVALS["phase2"])


def _official_file(path) -> None:
    """A tiny checkpoint in the published layout: ViT of depth 2, width 16, 4 prompt tokens, m = 3, K = 1, C = 5."""
    from timm import create_model

    torch.manual_seed(0)
    vit = create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=28, patch_size=7,
                       depth=2, embed_dim=16, num_heads=2)
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=gen) * 0.2 for k, v in vit.state_dict().items()}
    state |= {
        "prompt_learner.Prompt_Tokens": torch.randn(2, 4, 16, generator=gen),
        "prompt_learner.Prompt_Tokens_pool": torch.randn(3, 1, 4, 16, generator=gen),
        "prompt_learner.Prompt_Keys": torch.randn(3, 16, generator=gen),
        "prompt_learner.head.weight": torch.randn(16, 5, generator=gen),
    }
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)


PINNED_OFFICIAL_LOGITS = [  # [3 images, 5 classes], row by row
    -0.29459768533706665, 0.25250720977783203, -0.19459538161754608, 0.08625197410583496, -0.1783054769039154,
    -0.29849088191986084, 0.24646133184432983, -0.19122174382209778, 0.08210586756467819, -0.17518647015094757,
    -0.30098873376846313, 0.2542096674442291, -0.1935664415359497, 0.08065017312765121, -0.17168739438056946,
]
PINNED_OFFICIAL_GROUPS = [[0, 1], [0, 2], [0, 2]]


def test_official_checkpoint_forward_is_pinned(tmp_path):
    _official_file(tmp_path / "official.pth")
    model = lpt.load_official_checkpoint(tmp_path / "official.pth", backbone="vit_tiny_patch16_224", top_k=2,
                                         img_size=28, patch_size=7, depth=2, embed_dim=16, num_heads=2)
    images = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model.forward_train(images)
    assert out["logits"].flatten().tolist() == pytest.approx(PINNED_OFFICIAL_LOGITS, abs=1e-6)
    assert out["groups"].tolist() == PINNED_OFFICIAL_GROUPS
