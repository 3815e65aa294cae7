"""The packaged presets: each loads, validates, says where its values come from, and trains two steps.

The training test swaps each preset's backbone for a tiny random ViT and its data for a generated
set with the benchmark's class count (one tiny PNG reused by every line), keeping everything else
the preset says: method, head, prompts, loss, sampling, learning-rate rule.
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as tv

from conftest import CLIP_EMBED

from lpt.config import load_config, preset_names
from lpt.data import build_init_transform, build_transform
from lpt.methods import REGISTRY
from lpt.model.peft import bottleneck_dim

BENCHMARKS = {  # preset -> classes of its benchmark
    "places_lt": 365, "imagenet_lt": 1000, "inat2018": 8142, "cifar100_lt": 100,
    "vpt_deep_places_lt": 365, "vpt_shallow_places_lt": 365, "linear_places_lt": 365, "full_places_lt": 365,
    **{f"{recipe}_{name}": classes for recipe in ("lift", "lift_in21k", "lpt_adaptformer", "lift_clip", "lpt_clip",
                                                  "lift_plus_clip")
       for name, classes in (("places_lt", 365), ("imagenet_lt", 1000), ("inat2018", 8142), ("cifar100_lt", 100))},
    # LIFT+'s commands: the ImageNet-21k ViT on all but ImageNet-LT, CLIP ViT-L/14 on the three large ones
    "lift_plus_places_lt": 365, "lift_plus_inat2018": 8142, "lift_plus_cifar100_lt": 100,
    "lift_plus_clip_l14_places_lt": 365, "lift_plus_clip_l14_imagenet_lt": 1000, "lift_plus_clip_l14_inat2018": 8142,
    "lift_plus_clip_l14_336_inat2018": 8142,
}
LPT_PRESETS = ("places_lt", "imagenet_lt", "inat2018", "cifar100_lt")
DIM, DEPTH = 32, 2
TINY_VIT = [
    "model.pretrained=false", "model.checkpoint=",
    f"model.backbone_args={{img_size: 32, patch_size: 8, depth: {DEPTH}, embed_dim: {DIM}, num_heads: 2}}",
    "model.split_block=1",  # K must be below the tiny ViT's 2 blocks
    "data.img_size=32", "data.test_resize=32", "data.num_workers=0",
    "phase1.epochs=1", "phase2.epochs=1", "eval_batch_size=512", "progress=false", "device=cpu",
    "phase1.schedule=steps", "phase2.schedule=steps",  # the lr check below is the per-step warm-up's
    "phase1.warmup_epochs=1", "phase2.warmup_epochs=1", "tta=none",
]


def preset_text(name: str) -> str:
    return (resources.files("lpt.presets") / f"{name}.yaml").read_text()


# ----------------------------------------------------------------------------- loading


def test_every_benchmark_has_its_preset():
    assert set(BENCHMARKS) <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert cfg.method in REGISTRY
    if name in BENCHMARKS:
        assert "." in cfg.model.backbone, "pin the timm weights tag (arch.tag)"


EVAL_GEOMETRY = {  # preset -> (img_size, test_resize) it evaluates with; before test_resize=0 followed img_size
    **{name: (224, 256) for name in BENCHMARKS}, "demo": (28, 28), "folder": (28, 32),
    "lift_plus_clip_l14_336_inat2018": (336, 384)}


def test_every_preset_keeps_its_evaluation_resize():
    assert {name: (load_config(name).data.img_size, load_config(name).data.test_resize)
            for name in preset_names()} == EVAL_GEOMETRY


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_preset_value_names_its_source(name):
    lines = preset_text(name).splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[a-z_0-9]+:\s*\S", line):  # a key with a value (not a section header)
            commented = "#" in line or lines[i - 1].lstrip().startswith("#")
            assert commented, f"{name}.yaml:{i + 1}: '{line.strip()}' has no comment naming its source"


@pytest.mark.parametrize("name", LPT_PRESETS)
def test_lpt_presets_carry_the_paper_settings(name):
    cfg = load_config(name)
    d, m, lo = cfg.data, cfg.model, cfg.loss
    assert m.backbone == "vit_base_patch16_224.augreg_in21k" and m.pretrained
    assert (d.img_size, d.test_resize, d.test_resize_mode) == (224, 256, "square")  # script: Resize((256, 256))
    assert d.interpolation == "bilinear"  # the script's transforms use torchvision's default
    assert (d.mean, d.std, d.train_aug) == ([0.5] * 3, [0.5] * 3, "rrc_flip")
    assert (m.prompt_len, m.pool_size, m.split_block, m.top_k, m.head, m.query) == (10, 20, 6, 2, "cosine", "shared")
    assert (lo.name, lo.margin, lo.scale, lo.noise_mul, lo.eta) == ("agcl", 0.1, 20.0, 0.5, 0.5)
    assert cfg.method == "lpt" and cfg.phases == ["phase1", "phase2"]
    for p in (cfg.phase1, cfg.phase2):
        assert (p.lr, p.momentum, p.warmup_epochs, p.sampling) == (0.02, 0.9, 1.0, "dual")


PAPER_PRESETS = (*LPT_PRESETS, "linear_places_lt", "vpt_deep_places_lt", "full_places_lt")  # they stand for paper rows


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_use_the_published_layer_norm_and_schedule(name):
    cfg = load_config(name)
    assert cfg.model.layer_norm_eps == 1e-5  # the published model's nn.LayerNorm default, not timm's 1e-6
    assert [getattr(cfg, p).schedule for p in cfg.phases] == ["published"] * len(cfg.phases)


@pytest.mark.parametrize("name", ["demo", "folder"])
def test_offline_presets_keep_timm_layer_norm_and_per_step_schedule(name):
    cfg = load_config(name)  # the demo's numbers are pinned (test_pinned.py): its recipe must not move
    assert (cfg.model.layer_norm_eps, cfg.phase1.schedule, cfg.phase2.schedule) == (0.0, "steps", "steps")


@pytest.mark.parametrize("name", ["linear_places_lt", "vpt_deep_places_lt"])
def test_table1_baselines_train_as_the_paper_states(name):
    p = load_config(name).phase1  # Table 1: 20 epochs, lr 0.02, weight decay 1e-4
    assert (p.epochs, p.lr, p.weight_decay, p.sampling) == (20, 0.02, 1e-4, "instance")


def test_cifar100_lt_preset_is_ratio_100_of_500():
    d = load_config("cifar100_lt").data
    assert (d.source, d.imbalance_ratio, d.max_per_class, d.subsample_seed) == ("cifar100", 100, 500, 0)
    assert load_config("cifar100_lt", ["data.imbalance_ratio=200"]).data.imbalance_ratio == 200


@pytest.mark.parametrize("name, method, depth, head, loss", [
    ("vpt_deep_places_lt", "vpt", "deep", "linear", "ce"),
    ("vpt_shallow_places_lt", "vpt", "shallow", "linear", "ce"),
    ("linear_places_lt", "linear", "deep", "linear", "ce"),
    ("full_places_lt", "full", "deep", "linear", "ce"),
])
def test_baseline_presets(name, method, depth, head, loss):
    cfg = load_config(name)
    assert (cfg.method, cfg.model.prompt_depth, cfg.model.head, cfg.loss.name) == (method, depth, head, loss)
    assert cfg.phases == ["phase1"] and cfg.phase1.sampling == "instance" and cfg.loss.scale == 1.0
    assert cfg.data == load_config("places_lt").data  # same data as LPT on Places-LT


def test_vpt_shallow_trains_with_the_optimiser_of_places_lt():
    cfg, lpt = load_config("vpt_shallow_places_lt"), load_config("places_lt")
    keys = ("batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "schedule")
    assert [getattr(cfg.phase1, k) for k in keys] == [getattr(lpt.phase1, k) for k in keys]
    assert cfg.model.layer_norm_eps == lpt.model.layer_norm_eps == 1e-5


# ----------------------------------------------------------------------------- LIFT's own transforms

LIFT_FAMILY = [name for name in preset_names() if name.startswith("lift")]


def lift_pipelines(name: str, mean, std) -> dict[str, tv.Compose]:
    """The evaluation pipelines of a preset's source, written with torchvision as the source writes them: LIFT
    (shijxcs/LIFT@661ead9 trainer.py:109-147: bilinear, Resize(224 * 8 // 7) / Resize(224 + 24) + FiveCrop /
    Resize(224) for the class-mean init) and LIFT+ (shijxcs/LIFT-plus@ea555ea trainer.py:135-156: the same sizes,
    bicubic)."""
    how = tv.InterpolationMode.BICUBIC if name.startswith("lift_plus") else tv.InterpolationMode.BILINEAR
    size = 336 if "336" in name else 224
    finish = [tv.ToTensor(), tv.Normalize(mean, std)]
    return {
        "test": tv.Compose([tv.Resize(size * 8 // 7, interpolation=how), tv.CenterCrop(size), *finish]),
        "init": tv.Compose([tv.Resize(size, interpolation=how), tv.CenterCrop(size), *finish]),
        "crops": tv.Compose([tv.Resize(size + 24, interpolation=how), tv.FiveCrop(size),
                             tv.Lambda(lambda crops: torch.stack([tv.Normalize(mean, std)(tv.ToTensor()(c))
                                                                  for c in crops]))]),
    }


@pytest.fixture(scope="module")
def wide_photo() -> Image.Image:
    """A 400 x 300 image of noise: every crop box gives other pixels."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", LIFT_FAMILY)
def test_lift_presets_crop_as_their_source_on_a_non_square_image(name, wide_photo):
    """Test, class-mean-init and five-crop views equal the source's torchvision pipelines (FiveCrop's order is
    top-left, top-right, bottom-left, bottom-right, centre; lpt puts the centre first); the square resize the
    presets had before would give other pixels."""
    d = load_config(name).data
    theirs = lift_pipelines(name, d.mean, d.std)
    torch.testing.assert_close(build_transform(d, train=False)(wide_photo), theirs["test"](wide_photo))
    torch.testing.assert_close(build_init_transform(d)(wide_photo), theirs["init"](wide_photo))
    crops = build_transform(d, train=False, expand=load_config(name).tta_expand)(wide_photo)
    torch.testing.assert_close(crops[[1, 2, 3, 4, 0]], theirs["crops"](wide_photo))
    square = build_transform(load_config(name, ["data.test_resize_mode=square"]).data, train=False)(wide_photo)
    assert not torch.allclose(square, theirs["test"](wide_photo), atol=0.1)


@pytest.mark.parametrize("name", [n for n in BENCHMARKS if n.startswith("lift_plus")])
def test_lift_plus_presets_carry_its_recipe(name):
    """LIFT+'s defaults (utils/config.py) and its commands' epochs and accumulation (scripts/run_main.sh,
    run_backbones.sh); the training crop is its minimalist augmentation, bicubic."""
    cfg = load_config(name)
    d, m, p = cfg.data, cfg.model, cfg.phase1
    assert (d.train_aug, d.mda_func, d.interpolation, d.test_resize_mode) == ("mda", "convex", "bicubic", "shorter")
    assert type(build_transform(d, train=True).transforms[0]).__name__ == "MinimalistRandomResizedCrop"
    assert (m.peft, m.head, cfg.loss.name, cfg.loss.scale, cfg.method) == (["adaptformer"], "cosine", "la", 25, "peft")
    assert m.head_init == ("text" if "clip" in name else "class_mean")
    assert (p.lr * 128 / 256, p.batch_size, p.weight_decay, p.schedule, p.sampling) == (
        0.02, 128, 5e-4, "published", "instance")
    assert p.epochs == (15 if "inat2018" in name else 5)
    assert p.grad_accum == (8 if "336" in name else 4 if "l14" in name else 1)
    assert (cfg.tta, cfg.tta_expand) == ("crops", 24)


# ----------------------------------------------------------------------------- two training steps each


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (8, 8), (90, 120, 150)).save(root / "img.png")
    return root


def generated_data(name: str, root: Path, folder: Path) -> tuple[list[str], int]:
    """Overrides replacing the preset's data, and the number of training images."""
    classes = BENCHMARKS[name]
    test_labels = [c * classes // 50 for c in range(50)]
    if load_config(name).data.source == "inat_json":  # keep the preset's own source: the official JSON layout
        cats = [{"id": c, "name": f"species {c}"} for c in range(classes)]

        def ann_file(path: Path, labels: list[int]) -> str:
            images = [{"id": i, "file_name": "img.png"} for i in range(len(labels))]
            anns = [{"id": i, "image_id": i, "category_id": y} for i, y in enumerate(labels)]
            path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
            return str(path)

        train = list(range(classes))  # one image per class: 8,142 classes are already many images
        return ["data.source=inat_json", f"data.root={root}",
                f"data.train_list={ann_file(folder / 'train.json', train)}",
                f"data.test_list={ann_file(folder / 'val.json', test_labels)}"], len(train)
    train = [c for c in range(classes) for _ in range(2)]
    (folder / "train.txt").write_text("".join(f"img.png {y}\n" for y in train))
    (folder / "test.txt").write_text("".join(f"img.png {y}\n" for y in test_labels))
    return ["data.source=list", f"data.root={root}", f"data.train_list={folder / 'train.txt'}",
            f"data.test_list={folder / 'test.txt'}", "data.imbalance_ratio=1", "data.max_per_class=0"], len(train)


def expected_trainable(cfg, classes: int, backbone_params: int) -> dict[str, int]:
    """Trainable parameters of each stage, from the method's definition."""
    m = cfg.model
    r = bottleneck_dim(classes, DEPTH)  # AdaptFormer a block: LayerNorm 2D, down D r + r, up r D + D, scale 1
    feature = CLIP_EMBED if m.projection else DIM  # CLIP's joint space: the classifier's input and the keys
    head = classes * feature + (classes if m.head == "linear" else 0) + (
        DEPTH * (2 * DIM + DIM * r + r + r * DIM + DIM + 1) if m.peft == ["adaptformer"] else 0)
    if cfg.method == "lpt":
        return {"phase1": DEPTH * m.prompt_len * DIM + head,
                "phase2": m.pool_size * ((DEPTH - m.split_block) * m.prompt_len * DIM + feature) + head}
    if cfg.method == "vpt":
        return {"phase1": (1 if m.prompt_depth == "shallow" else DEPTH) * m.prompt_len * DIM + head}
    return {"phase1": head + (backbone_params if cfg.method == "full" else 0)}


STEPS, BATCH = 2, 16


@pytest.fixture
def two_steps(monkeypatch):
    """Cut every epoch the runner builds to its first two steps, so that a benchmark's class count
    (8,142 for iNaturalist, one training image each at least) costs 2 x 2 batches, not an epoch."""
    import lpt.run.train as runner
    from lpt.data import TrainStream

    full = runner.build_train_stream
    monkeypatch.setattr(runner, "build_train_stream", lambda *a, **k: TrainStream(full(*a, **k).loaders, STEPS))


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_preset_trains_two_steps_on_generated_data(name, image_root, tmp_path, two_steps, request):
    from lpt.run.train import train

    data, n_train = generated_data(name, image_root, tmp_path)
    assert n_train >= STEPS * BATCH
    clip = request.getfixturevalue("tiny_clip")["overrides"] if load_config(name).model.text else []
    cfg = load_config(name, [*TINY_VIT, *clip, *data, f"phase1.batch_size={BATCH}", f"phase2.batch_size={BATCH}"])
    train(cfg, tmp_path / "run")

    classes = BENCHMARKS[name]
    assert len(json.loads((tmp_path / "run" / "classes.json").read_text())["classes"]) == classes
    epochs = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "epoch" in r]
    assert [r["phase"] for r in epochs] == cfg.phases
    for r in epochs:
        assert math.isfinite(r["loss"])
        base_lr = getattr(cfg, r["phase"]).lr
        assert r["lr"] == pytest.approx(base_lr * BATCH / 256)  # step 2 of 2 ends the one warm-up epoch
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    trainable = {phase: s["trainable_params"] for phase, s in run["phases"].items()}
    assert trainable == expected_trainable(cfg, classes, run["backbone_params"])
