"""Backbone pretraining: MAE masking and loss by hand, the glyph generator, the recipes end to end on
tiny data, weights that load back into timm exactly, the card, and one-line errors."""

import json
import logging
import shlex
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from lpt.cli import build_parser, main
from lpt.config import ConfigError
from lpt.engine.step import TrainingError
from lpt.model import create_backbone, weights_fingerprint
from lpt.pretrain import (
    FontError, GlyphDataset, MaskedAutoencoder, PretrainConfig, find_fonts, masked_patch_loss, patchify, pretrain,
    random_masking, select_glyphs,
)
from lpt.pretrain.runner import build_encoder, train_loop

TINY = {"patch_size": 7, "depth": 2, "embed_dim": 32, "num_heads": 2}  # 28 px: 16 patches
TINY_ARGS = [a for k, v in TINY.items() for a in ("--backbone-arg", f"{k}={v}")]
TINY_DECODER = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fonts():
    try:
        return find_fonts()
    except FontError as exc:
        pytest.skip(f"no system font: {exc}")


def tiny_encoder(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_encoder(PretrainConfig(recipe="mae", steps=1, backbone_args={**TINY, **overrides}))


def assert_loads_back(out, encoder, args):
    """The file holds fp16 timm tensors and no head; create_backbone yields the encoder rounded to fp16."""
    path = out / "backbone.safetensors"
    with safe_open(str(path), "pt") as fh:
        assert all(fh.get_tensor(k).dtype == torch.float16 for k in fh.keys())
        assert not any(k.startswith("head") for k in fh.keys())
        assert set(fh.keys()) == set(encoder.state_dict())
    loaded, identity = create_backbone("vit_tiny_patch16_224", checkpoint=str(path), **args)
    assert identity.source == "file"
    state = loaded.state_dict()
    assert state.keys() == encoder.state_dict().keys()
    for name, value in encoder.state_dict().items():
        assert torch.equal(state[name], value.half().float()), name
    card = json.loads((out / "card.json").read_text())
    assert card["weights"]["fingerprint"] == weights_fingerprint(loaded) == identity.fingerprint
    return card


# ----------------------------------------------------------------------------- MAE: masking and loss


@pytest.mark.parametrize("n, ratio", [(16, 0.75), (49, 0.75), (10, 0.5), (7, 0.6)])
def test_masking_keeps_round_n_times_one_minus_ratio(n, ratio):
    keep = round(n * (1 - ratio))
    x = torch.arange(n, dtype=torch.float32).repeat(5, 1)[..., None]  # token value = its position
    kept, mask, ids_restore = random_masking(x, ratio)
    assert kept.shape == (5, keep, 1)
    assert mask.sum(dim=1).tolist() == [n - keep] * 5
    for b in range(5):
        assert sorted(kept[b, :, 0].long().tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(n).repeat(5, 1))


def test_masking_follows_noise():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    kept, mask, _ = random_masking(torch.arange(4.0)[None, :, None], 0.5, noise)
    assert kept.flatten().tolist() == [1.0, 3.0]  # the two lowest scores, lowest first
    assert mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_masked_patch_loss_by_hand():
    # image 0: patch 1 masked; image 1: both patches masked. Raw pixels: squared errors averaged per
    # patch (1, then 4 and 0), summed over masked patches and divided by their number 3 -- not the
    # mean of per-image means, 1.5.
    target = torch.tensor([[[1.0, 2, 3, 4], [0, 0, 2, 2]], [[2.0, 2, 2, 2], [0, 0, 0, 0]]])
    pred = torch.tensor([[[0.0, 0, 0, 0], [1, 1, 1, 1]], [[0.0, 0, 0, 0], [0, 0, 0, 0]]])
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert masked_patch_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(5 / 3)
    # Per-patch normalisation: patch [0, 0, 2, 2] has mean 1 and unbiased variance 4/3, so it becomes
    # [-a, -a, a, a] with a^2 = 3/4; against 1: (2 (1 + a)^2 + 2 (1 - a)^2) / 4 = 1 + a^2 = 1.75.
    only = torch.tensor([[0.0, 1.0]])
    assert masked_patch_loss(pred[:1], target[:1], only).item() == pytest.approx(1.75, rel=1e-5)
    # The visible patch is ignored whatever its prediction.
    wild = pred[:1].clone()
    wild[0, 0] = 1e3
    assert masked_patch_loss(wild, target[:1], only).item() == pytest.approx(1.75, rel=1e-5)


def test_patchify_matches_patch_grid():
    images = torch.randn(2, 3, 12, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    for r in range(3):
        for c in range(2):
            block = images[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4]  # [B, C, p, p] -> pixel-major, channel last
            assert torch.equal(patches[:, 2 * r + c], block.permute(0, 2, 3, 1).reshape(2, -1))


def test_mae_encodes_visible_patches_and_scores_masked_ones_only():
    model = MaskedAutoencoder(tiny_encoder(), 0.75, **TINY_DECODER)
    images = torch.randn(3, 3, 28, 28)
    widths = []
    model.encoder.blocks[0].register_forward_hook(lambda m, inp, out: widths.append(inp[0].shape[1]))
    out = model(images, torch.rand(3, 16, generator=torch.Generator().manual_seed(0)))
    assert widths == [1 + 4]  # class token + round(16 * 0.25) visible patches
    assert out["mask"].sum(dim=1).tolist() == [12.0] * 3
    # the loss by hand: per-patch normalised targets, mean squared error over the 36 masked patches
    pred, target, mask = out["pred"].detach(), patchify(images, 7), out["mask"]
    errors = []
    for b in range(3):
        for k in torch.nonzero(mask[b]).flatten().tolist():
            t = target[b, k]
            errors.append(((pred[b, k] - (t - t.mean()) / (t.var() + 1e-6).sqrt()) ** 2).mean())
    assert out["loss"].item() == pytest.approx(torch.stack(errors).mean().item(), rel=1e-5)
    out["pred"].retain_grad()
    out["loss"].backward()
    grad = out["pred"].grad.abs().sum(dim=-1)
    assert torch.all(grad[mask == 0] == 0) and torch.all(grad[mask == 1] > 0)


def test_mae_under_bf16_autocast():
    """The GPU path's dtypes (bf16 activations, fp32 parameters and mask), exercised on the CPU."""
    model = MaskedAutoencoder(tiny_encoder(), 0.75, **TINY_DECODER)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 28, 28))
    assert out["mask"].dtype == torch.float32 and out["loss"].dtype == torch.float32
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.encoder.pos_embed.grad is not None and model.mask_token.grad is not None


# ----------------------------------------------------------------------------- glyphs


def test_glyphs_deterministic_for_a_seed(fonts):
    glyphs = select_glyphs(fonts, 12, seed=0)
    assert select_glyphs(fonts, 12, seed=0) == glyphs
    a, b = GlyphDataset(glyphs, 40, 16, seed=3), GlyphDataset(glyphs, 40, 16, seed=3)
    first = [a[i][0] for i in range(24)]
    assert all(torch.equal(b[i][0], first[i]) for i in reversed(range(24)))  # any order, any instance
    assert not torch.equal(GlyphDataset(glyphs, 40, 16, seed=4)[0][0], first[0])
    assert not torch.equal(GlyphDataset(glyphs, 40, 16, seed=3, split=1)[0][0], first[0])


def test_glyphs_have_the_requested_classes(fonts):
    glyphs = select_glyphs(fonts, 12, seed=0)
    assert glyphs.num_classes == 12 and len(set(glyphs.chars)) == 12
    assert all(ids and max(ids) < len(fonts) for ids in glyphs.font_ids)
    dataset = GlyphDataset(glyphs, 24, 16)
    items = [dataset[i] for i in range(24)]
    assert [y for _, y in items] == list(range(12)) * 2
    assert all(x.dtype == torch.uint8 and x.shape == (16, 16) and x.max() > 0 for x, _ in items)


def test_glyph_classes_span_many_scripts(fonts):
    glyphs = select_glyphs(fonts, 60, seed=0)
    assert len(glyphs.scripts) >= 8 and sum(glyphs.scripts.values()) == 60


def test_missing_fonts_one_line_error(tmp_path):
    with pytest.raises(FontError, match="fonts-dejavu-core") as err:
        find_fonts([str(tmp_path)])
    assert "\n" not in str(err.value)


def test_too_few_characters_one_line_error(fonts, tmp_path):
    shutil.copy(fonts[0], tmp_path / fonts[0].name)
    with pytest.raises(FontError, match="distinct characters") as err:
        select_glyphs(find_fonts([str(tmp_path)]), 100_000)
    assert "\n" not in str(err.value)


def test_cli_missing_fonts(tmp_path, capsys):
    empty = tmp_path / "no-fonts"
    empty.mkdir()
    rc = main(["--quiet", "pretrain", "--recipe", "glyphs", "--out", str(tmp_path / "out"), *TINY_ARGS,
               "--steps", "1", "--device", "cpu", "--font-dir", str(empty)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "fonts-dejavu-core" in err
    assert not (tmp_path / "out" / "backbone.safetensors").exists()


# ----------------------------------------------------------------------------- recipes end to end


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_mae_pretrain_saves_the_trained_encoder(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(48, 28, 28), dtype=np.uint8)
    cfg = PretrainConfig(recipe="mae", backbone_args=TINY, steps=4, batch_size=16, log_every=2, device="cpu",
                         eval_images=32, **TINY_DECODER)
    lines, logger = Lines(), logging.getLogger("lpt")
    logger.addHandler(lines)
    level, logger.level = logger.level, logging.INFO
    try:
        result = pretrain(cfg, tmp_path, images=images)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert len([m for m in lines.messages if m.startswith("pretrain mae step")]) == 2  # steps 2 and 4
    card = assert_loads_back(tmp_path, result.encoder, cfg.encoder_args())
    assert not torch.equal(result.encoder.state_dict()["blocks.0.attn.qkv.weight"],
                           tiny_encoder().state_dict()["blocks.0.attn.qkv.weight"])  # it trained
    assert card["final_metric"]["name"] == "mae_loss" and np.isfinite(card["final_metric"]["value"])
    assert card["data"]["masking"] == "12 of 16 patches per image (ratio 0.75)"
    assert card["training"]["steps"] == 4 and card["hardware"]["cpu"] and card["wall_time_s"] > 0
    md = (tmp_path / "card.md").read_text()
    assert card["command"] in md and card["weights"]["fingerprint"] in md


def test_glyph_pretrain_saves_the_trained_encoder(tmp_path, fonts):
    args = {"patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2}
    cfg = PretrainConfig(recipe="glyphs", backbone_args=args, img_size=16, steps=2, batch_size=8, device="cpu",
                         num_classes=5, eval_per_class=2, workers=0)
    result = pretrain(cfg, tmp_path)
    card = assert_loads_back(tmp_path, result.encoder, cfg.encoder_args())
    assert card["final_metric"]["name"] == "glyph_accuracy" and 0 <= card["final_metric"]["value"] <= 100
    assert card["data"]["num_classes"] == 5 and len(card["data"]["characters"]) == 5
    assert not any(k.startswith("head") for k in result.encoder.state_dict())


def test_cli_mae_on_idx_files(tmp_path, tiny_fmnist, capsys):
    out = tmp_path / "mae"
    argv = ["--quiet", "pretrain", "--recipe", "mae", "--out", str(out), "--data-root", str(tiny_fmnist), *TINY_ARGS,
            "--steps", "2", "--batch", "32", "--lr", "0.002", "--device", "cpu", "--log-every", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    card = json.loads((out / "card.json").read_text())
    assert card["weights"]["fingerprint"] in printed and "final mae_loss" in printed
    loaded, _ = create_backbone("vit_tiny_patch16_224", checkpoint=str(out / "backbone.safetensors"),
                                img_size=28, **TINY)
    assert card["weights"]["fingerprint"] == weights_fingerprint(loaded)
    assert card["data"]["images"] == 400 and "labels unused" in card["data"]["source"]
    # the recorded command parses back to the same settings
    again = build_parser().parse_args(shlex.split(card["command"])[1:])
    assert (again.recipe, again.steps, again.batch, again.lr, again.log_every) == ("mae", 2, 32, 0.002, 1)
    assert again.backbone_arg == [f"{k}={v}" for k, v in TINY.items()] and again.data_root == str(tiny_fmnist)


# ----------------------------------------------------------------------------- settings and errors


@pytest.mark.parametrize("kwargs, match", [
    ({"recipe": "simclr", "steps": 1}, "unknown recipe"),
    ({"recipe": "mae"}, "exactly one of steps"),
    ({"recipe": "mae", "steps": 5, "epochs": 2}, "exactly one of steps"),
    ({"recipe": "mae", "steps": 1, "backbone_args": {"img_size": 32}}, "contradicts"),
    ({"recipe": "mae", "steps": 1, "mask_ratio": 1.0}, "mask_ratio"),
    ({"recipe": "glyphs", "steps": 1, "num_classes": 1}, "num_classes"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PretrainConfig(**kwargs)


def test_patch_size_must_tile_the_image():
    with pytest.raises(ConfigError, match="patch_size=4"):
        build_encoder(PretrainConfig(recipe="mae", steps=1))  # 28 px with vit_tiny's 16 px patches


def test_non_finite_loss_aborts():
    class Diverging:
        name, metric, betas = "mae", "mae_loss", (0.9, 0.95)
        model = nn.Linear(2, 1)

        def batches(self, total):
            while True:
                yield torch.ones(4, 2)

        def step(self, batch):
            return {"loss": self.model(batch).mean() * float("nan")}

    cfg = PretrainConfig(recipe="mae", steps=3, log_every=2)
    with pytest.raises(TrainingError, match="non-finite mae loss by step 2"):
        train_loop(Diverging(), [0.1, 0.1, 0.1], cfg, torch.device("cpu"))
