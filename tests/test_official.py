"""Import of the published LPT checkpoint (DongSky/LPT): numerics against a straightforward
re-implementation of the official forward, the CLI run directory, key handling and one-line errors."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

import lpt
from lpt.metrics import shot_accuracy
from lpt.cli import main
from lpt.model.official import OfficialCheckpointError, load_official_checkpoint
from lpt.model.state import CheckpointError, read_tensors

ARCH = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2)
BACKBONE = "vit_tiny_patch16_224"  # ViT-Tiny's layout; ARCH overrides its sizes
BACKBONE_ARGS = [f"--backbone-arg={k}={v}" for k, v in ARCH.items()]
L, P, D, M, K, C = 4, 3, 32, 5, 2, 6


def official_state() -> dict[str, torch.Tensor]:
    """State dict in the official layout: a timm ViT's own names plus the prompt learner, random nonzero.

    Token embeddings are kept small so that the first LayerNorms see a small variance and eps
    (1e-5 officially, 1e-6 in timm) visibly matters.
    """
    g = torch.Generator().manual_seed(0)
    vit = VisionTransformer(**ARCH, num_classes=0)
    state = {}
    for name, value in vit.state_dict().items():
        noise = torch.randn(value.shape, generator=g)
        if "norm" in name and name.endswith("weight"):
            state[name] = 1 + 0.1 * noise
        elif name.startswith(("patch_embed", "pos_embed", "cls_token")):
            state[name] = 0.01 * noise
        else:
            state[name] = 0.1 * noise
    state["prompt_learner.Prompt_Tokens"] = 0.02 * torch.randn(L, P, D, generator=g)
    state["prompt_learner.Prompt_Tokens_pool"] = 0.02 * torch.randn(M, L - K, P, D, generator=g)
    state["prompt_learner.Prompt_Keys"] = torch.randn(M, D, generator=g)
    state["prompt_learner.head.weight"] = torch.rand(D, C, generator=g) * 2 - 1  # NormedLinear: [D, C]
    return state


def official_forward(state: dict[str, torch.Tensor], images: torch.Tensor, top_k: int = 2):
    """The official VPT_ViT forward, written out: prompts are concatenated as ordinary tokens and their
    outputs dropped after each block; the query is a separate pass; phase 2 recomputes all L blocks."""
    vit = VisionTransformer(**ARCH, num_classes=0)
    vit.load_state_dict({k: v for k, v in state.items() if not k.startswith("prompt_learner.")})
    for m in vit.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = 1e-5  # the official blocks use nn.LayerNorm's default
    shared, pool = state["prompt_learner.Prompt_Tokens"], state["prompt_learner.Prompt_Tokens_pool"]
    keys, w = state["prompt_learner.Prompt_Keys"], state["prompt_learner.head.weight"]
    b, p = images.shape[0], shared.shape[1]

    def tokens():
        x = vit.patch_embed(images)
        return torch.cat([vit.cls_token.expand(b, -1, -1), x], dim=1) + vit.pos_embed

    with torch.no_grad():
        x = tokens()
        for i, blk in enumerate(vit.blocks):
            x = blk(torch.cat([x, shared[i].expand(b, -1, -1)], dim=1))[:, :-p]
        query = vit.norm(x)[:, 0]
        sim = F.normalize(keys) @ F.normalize(query).t()
        groups = sim.t().topk(top_k, 1, True, True).indices
        group_prompt = pool[groups].mean(dim=1)
        x = tokens()
        for i, blk in enumerate(vit.blocks):
            if i >= K:
                x = blk(torch.cat([x, shared[i].expand(b, -1, -1), group_prompt[:, i - K]], dim=1))[:, :-2 * p]
            else:
                x = blk(torch.cat([x, shared[i].expand(b, -1, -1)], dim=1))[:, :-p]
        feature = vit.norm(x)[:, 0]
        logits = F.normalize(feature, dim=1) @ F.normalize(w, dim=0)
    return logits, groups


@pytest.fixture(scope="module")
def state():
    return official_state()


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def save_official(path, state, prefix=""):
    torch.save({"state_dict": {prefix + k: v for k, v in state.items()}, "epoch": 90}, path)
    return path


def test_api_matches_official_forward(state, images, tmp_path):
    model = lpt.load_official_checkpoint(save_official(tmp_path / "lpt.pth", state), backbone=BACKBONE, **ARCH)
    assert model.phase == 2 and not model.training
    assert (model.split_block, model.pool.top_k, model.pool.prompts.shape) == (K, 2, (M, L - K, P, D))
    ref_logits, ref_groups = official_forward(state, images)
    with torch.no_grad():
        out = model.forward_features(images)
        logits = model.head(out["feature"])
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    assert torch.equal(out["groups"], ref_groups) and torch.equal(model.match(images), ref_groups)
    torch.testing.assert_close(model(images), ref_logits, rtol=0, atol=1e-5)
    # eps is part of the official numerics: timm's 1e-6 gives measurably different logits here
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = 1e-6
    with torch.no_grad():
        assert (model(images) - ref_logits).abs().max() > 1e-4


def write_list_data(root, rng):
    """16x16 RGB images under root with a 'relative/path label' training and test list."""
    counts = [150, 120, 60, 30, 12, 5]  # many, many, medium, medium, few, few
    (root / "img").mkdir()
    train = "".join(f"train/{c}/{i}.png {c}\n" for c, n in enumerate(counts) for i in range(n))
    (root / "train.txt").write_text(train)
    lines = []
    for c in range(C):
        for i in range(3):
            name = f"img/{c}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name)
            lines.append(f"{name} {c}\n")
    (root / "test.txt").write_text("".join(lines))
    return counts


def test_cli_import_gives_a_run_that_loads_and_evaluates(state, images, tmp_path, capsys):
    counts = write_list_data(tmp_path, np.random.default_rng(0))
    # import only counts the training labels; eval checks the listed training files exist (empty ones do)
    for c, n in enumerate(counts):
        (tmp_path / "train" / str(c)).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "train" / str(c) / f"{i}.png").write_bytes(b"")
    ckpt = save_official(tmp_path / "lpt.pth", state, prefix="module.")  # DataParallel layout
    out = tmp_path / "run"
    data = ["--data", "source=list", f"root={tmp_path}", f"train_list={tmp_path / 'train.txt'}",
            f"test_list={tmp_path / 'test.txt'}", "img_size=16", "test_resize=16", "num_workers=0"]
    assert main(["--quiet", "import-official", str(ckpt), "--backbone", BACKBONE, *BACKBONE_ARGS, "--out", str(out),
                 "--train-list", str(tmp_path / "train.txt"), *data]) == 0

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == "lpt" and cfg["phases"] == ["phase1", "phase2"]
    m = cfg["model"]
    assert (m["prompt_len"], m["pool_size"], m["split_block"], m["top_k"]) == (P, M, K, 2)
    assert m["layer_norm_eps"] == 1e-5 and m["pretrained"] is False and m["backbone_args"] == ARCH
    assert m["checkpoint"] == "backbone.safetensors"  # inside the run directory: the directory can move
    from safetensors.torch import load_file
    backbone = load_file(out / "backbone.safetensors")
    assert set(backbone) == {k for k in state if not k.startswith("prompt_learner.")}
    assert all(torch.equal(backbone[k], state[k]) for k in backbone)
    classes = json.loads((out / "classes.json").read_text())
    assert classes == {"classes": [str(c) for c in range(C)], "train_counts": counts}
    tensors, meta = read_tensors(out / "model.safetensors")
    assert meta["phase"] == 2 and meta["num_classes"] == C and meta["model"] == m
    assert torch.equal(tensors["head.weight"], state["prompt_learner.head.weight"].t())

    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(out, moved)
    assert lpt.load_run(moved).identity.fingerprint == meta["backbone"]["fingerprint"]
    run = lpt.load_run(out)
    assert run.model.phase == 2 and not run.model.training
    assert run.identity.fingerprint == meta["backbone"]["fingerprint"]
    ref_logits, ref_groups = official_forward(state, images)
    with torch.no_grad():
        torch.testing.assert_close(run.model(images), ref_logits, rtol=0, atol=1e-5)
    assert torch.equal(run.model.match(images), ref_groups)

    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--json", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    from lpt.data import build_datasets
    test = build_datasets(run.config.data).test
    batch = torch.stack([test[i][0] for i in range(len(test))])
    labels = [test[i][1] for i in range(len(test))]
    expected = shot_accuracy(official_forward(state, batch)[0].argmax(1).tolist(), labels, counts)
    assert {k: metrics[k] for k in expected} == expected

    # the imported run holds no training record, but it is a run: a train into it without --overwrite deletes nothing
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["--quiet", "train", "--config", "demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds an imported lpt run" in err and "--overwrite" in err and "\n" not in err
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop("prompt_learner.Prompt_Keys"), ["missing", "'prompt_learner.Prompt_Keys'"]),
    (lambda s: s.update({"prompt_learner.Prompt_Extra": torch.zeros(2, 3)}),
     ["unexpected", "'prompt_learner.Prompt_Extra'", "(2, 3)"]),
    (lambda s: s.update({"prompt_learner.Prompt_Tokens_pool": torch.zeros(M, L - K, P, D + 1)}),
     ["'prompt_learner.Prompt_Tokens_pool'", f"({M}, {L - K}, {P}, {D + 1})", f"({L}, {P}, {D})"]),
    (lambda s: s.update({"prompt_learner.Prompt_Keys": torch.zeros(M + 1, D)}),
     ["'prompt_learner.Prompt_Keys'", f"({M + 1}, {D})", f"({M}, {D})"]),
    (lambda s: s.update({"prompt_learner.head.weight": torch.zeros(C, D + 1)}),
     ["'prompt_learner.head.weight'", f"({C}, {D + 1})", f"({D}, C)"]),
    (lambda s: s.update({"blocks.1.attn.qkv.weight": torch.zeros(3 * D, D + 1)}),
     ["'blocks.1.attn.qkv.weight'", f"({3 * D}, {D + 1})", f"({3 * D}, {D})"]),
    (lambda s: s.pop("norm.bias"), ["missing", "'norm.bias'", f"({D},)"]),
])
def test_layout_errors_are_one_line_and_name_key_and_shapes(state, tmp_path, edit, words):
    broken = dict(state)
    edit(broken)
    ckpt = save_official(tmp_path / "broken.pth", broken)
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_checkpoint(ckpt, backbone=BACKBONE, **ARCH)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_head_tensors_are_dropped_and_module_prefix_stripped(state, images, tmp_path):
    extra = dict(state, **{"head.weight": torch.zeros(10, D), "head.bias": torch.zeros(10)})
    ckpt = save_official(tmp_path / "lpt.pth", extra, prefix="module.")
    model = load_official_checkpoint(ckpt, backbone=BACKBONE, **ARCH)
    with torch.no_grad():
        torch.testing.assert_close(model(images), official_forward(state, images)[0], rtol=0, atol=1e-5)


class Payload:
    """A pickle whose loading would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(state, tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pth"
    torch.save({"state_dict": state, "payload": Payload(marker)}, ckpt)
    with pytest.raises(CheckpointError, match="refusing .*system"):
        load_official_checkpoint(ckpt, backbone=BACKBONE, **ARCH)
    assert main(["import-official", str(ckpt), "--backbone", BACKBONE, *BACKBONE_ARGS, "--out", str(tmp_path / "r"),
                 "--train-counts", str(tmp_path / "counts.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lpt import-official: error: refusing") and "\n" not in err
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_train_counts_are_required_and_checked(state, tmp_path, capsys):
    ckpt = save_official(tmp_path / "lpt.pth", state)
    args = ["import-official", str(ckpt), "--backbone", BACKBONE, *BACKBONE_ARGS, "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit):
        main(args)  # argparse: one of --train-list / --train-counts is required
    (tmp_path / "counts.json").write_text(json.dumps([5] * (C - 1)))
    assert main(args + ["--train-counts", str(tmp_path / "counts.json")]) == 2
    assert f"expected a JSON list of {C} positive integers" in capsys.readouterr().err
    (tmp_path / "train.txt").write_text("".join(f"a/{i}.png {i}\n" for i in range(C + 1)))
    assert main(args + ["--train-list", str(tmp_path / "train.txt")]) == 2
    assert f"label {C} is outside [0, {C})" in capsys.readouterr().err
    (tmp_path / "counts.json").write_text(json.dumps([7] * C))
    (tmp_path / "names.txt").write_text("".join(f"class {c}\n" for c in range(C)))
    assert main(args + ["--train-counts", str(tmp_path / "counts.json"), "--classes", str(tmp_path / "names.txt"),
                        "--top-k", "3"]) == 0
    run = lpt.load_run(tmp_path / "run")
    assert run.classes == [f"class {c}" for c in range(C)] and run.train_counts == [7] * C
    assert run.model.pool.top_k == 3 and run.config.model.top_k == 3
