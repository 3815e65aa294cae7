"""CLIP backbones: lpt's zero-shot classifier and text-initialised heads against open_clip's own CLIP.

A random open_clip model (conftest ``tiny_clip``) is saved as a released CLIP is, one checkpoint
holding both towers; lpt reads its image tower as timm's CLIP ViT through timm's checkpoint filter
and its text tower through open_clip. Nothing is downloaded.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import CLIP_DIM, CLIP_EMBED

from lpt.cli import main
from lpt.config import ConfigError, load_config
from lpt.data import build_datasets, with_eval_transform
from lpt.data.names import clean_name, prompt_names
from lpt.engine.step import Env
from lpt.methods.zeroshot import ZERO_SHOT_OVERRIDES
from lpt.model.build import build_model
from lpt.model.text import class_embeddings, prompt_templates
from lpt.run import files
from lpt.run.head_init import init_head, text_weights

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = ["cat", "aquarium fish", "T-shirt/top", "great white shark"]


def clip_config(tiny_clip, tiny_fmnist, *extra):
    return load_config("demo", [f"data.root={tiny_fmnist}", "data.img_size=32", "data.test_resize=32",
                                "data.max_per_class=8", "data.imbalance_ratio=1", "progress=false",
                                *tiny_clip["overrides"], *extra])


def open_clip_logits(tiny_clip, images, names):
    """open_clip's own zero-shot logits: ``model(image, text)`` with CLIP's single prompt and its logit scale."""
    model = open_clip.create_model("tiny-clip", pretrained=str(tiny_clip["checkpoint"])).eval()
    text = open_clip.get_tokenizer("tiny-clip")([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        image_features, text_features, scale = model(images, text)
    return scale * image_features @ text_features.t()


def test_zero_shot_logits_equal_open_clips(tiny_clip, tiny_fmnist):
    cfg = clip_config(tiny_clip, tiny_fmnist, *ZERO_SHOT_OVERRIDES)
    model, identity = build_model(cfg.model, len(NAMES), seed=0)
    embeddings, scale = class_embeddings(cfg.model, NAMES, torch.device("cpu"))
    with torch.no_grad():
        model.head.weight.copy_(text_weights(model, embeddings))
    images = torch.randn(6, 3, 32, 32)
    theirs = open_clip_logits(tiny_clip, images, NAMES)
    assert scale == pytest.approx(np.exp(2.5))  # the checkpoint's own temperature, not CLIP's initial one
    with torch.no_grad():
        torch.testing.assert_close(scale * model.eval()(images), theirs, atol=1e-5, rtol=1e-5)
    assert identity.source == "file" and model.head.weight.shape == (len(NAMES), CLIP_EMBED)


def test_the_image_tower_is_open_clips_through_timms_filter(tiny_clip, tiny_fmnist):
    cfg = clip_config(tiny_clip, tiny_fmnist, "model.projection=true", "model.prompt_len=0")
    model, _ = build_model(cfg.model, 3, seed=0)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.plain_feature(images), tiny_clip["model"].encode_image(images),
                                   atol=1e-5, rtol=1e-5)


def text_initialised(tiny_clip, tiny_fmnist, *extra):
    cfg = clip_config(tiny_clip, tiny_fmnist, "model.head_init=text", *extra)
    splits = build_datasets(cfg.data)
    model, _ = build_model(cfg.model, splits.num_classes, seed=0)
    text = init_head(model, splits, cfg, Env(torch.device("cpu"), "fp32"))
    return cfg, splits, model.eval(), text


@pytest.mark.parametrize("method", ["lpt", "vpt", "linear", "peft"])
def test_text_initialised_classifier_starts_as_zero_shot_clip(tiny_clip, tiny_fmnist, method):
    extra = {"lpt": ["model.prompt_len=0"], "linear": ["method=linear", "phases=[phase1]", "model.prompt_len=0"],
             "vpt": ["method=vpt", "phases=[phase1]", "model.prompt_len=0"],
             "peft": ["method=peft", "phases=[phase1]", "model.prompt_len=0", "model.peft=[adaptformer]"]}[method]
    cfg, splits, model, text = text_initialised(tiny_clip, tiny_fmnist, "model.projection=true", *extra)
    names = [n.replace("_", " ") for n in splits.classes]
    assert text["meta"]["names"] == names and text["meta"]["templates"] == "single"
    images = torch.stack([with_eval_transform(splits.test, cfg.data)[i][0] for i in range(8)])
    zero_shot = open_clip_logits(tiny_clip, images, names) / np.exp(2.5)  # the cosines
    with torch.no_grad():
        torch.testing.assert_close(model(images), zero_shot, atol=1e-5, rtol=1e-5)


def test_text_init_before_the_projection_is_lifts_mapping(tiny_clip, tiny_fmnist):
    """LIFT (projection off): features are the tower's before its projection P, and each class starts at
    normalize(t @ P), shijxcs/LIFT trainer.py init_head_text_feat's ``text_features @ proj.t()``."""
    cfg, splits, model, text = text_initialised(tiny_clip, tiny_fmnist, "model.prompt_len=0")
    proj = tiny_clip["model"].visual.proj.detach()  # open_clip's [D, E]
    expected = F.normalize(text["embeddings"] @ proj.t(), dim=1)
    torch.testing.assert_close(model.head.weight.detach(), expected, atol=1e-6, rtol=1e-6)
    assert model.head.weight.shape == (splits.num_classes, CLIP_DIM)


def test_ensemble_templates_are_clips_eighty():
    templates = prompt_templates("ensemble")
    assert len(templates) == 80 and templates[0]("x") == "a bad photo of a x."
    assert prompt_templates("single") == ["a photo of a {}."]


def test_lpt_eval_zero_shot_writes_a_run_with_open_clips_accuracy(tiny_clip, tiny_fmnist, tmp_path, capsys):
    out = tmp_path / "zs"
    overrides = [f"data.root={tiny_fmnist}", "data.img_size=32", "data.test_resize=32", "data.max_per_class=8",
                 "data.imbalance_ratio=1", "progress=false", *tiny_clip["overrides"]]
    assert main(["eval", "--zero-shot", "--config", "demo", "--out", str(out), *overrides]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "zeroshot" and list(run["phases"]) == ["zeroshot"]
    assert run["phases"]["zeroshot"]["trainable_params"] == 0
    cfg = files.read_config(out)
    splits = build_datasets(cfg.data)
    test = with_eval_transform(splits.test, cfg.data)
    images = torch.stack([test[i][0] for i in range(len(test))])
    names = [n.replace("_", " ") for n in splits.classes]
    expected = (open_clip_logits(tiny_clip, images, names).argmax(1).numpy() == np.array(test.targets)).mean()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"] == pytest.approx(100 * expected)
    embeddings, meta = files.read_text_embeddings(out)
    assert embeddings.shape == (10, CLIP_EMBED) and meta["names"] == names
    assert "zero-shot" in capsys.readouterr().out
    assert (out / "report.html").is_file()
    assert "| trained parameters (all phases) | 0 (0.00% of the backbone) |" in (out / "report.md").read_text()
    assert main(["eval", "--run", str(out), "--json"]) == 0  # a zero-shot run reloads like any other
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["overall"] == pytest.approx(100 * expected)
    from lpt.analysis.compare import compare_row
    assert compare_row(out)["trainable_params"] == 0 and compare_row(out)["method"] == "zero-shot"


def test_zero_shot_refuses_a_config_that_trains(tiny_clip, tiny_fmnist, tmp_path):
    cfg = clip_config(tiny_clip, tiny_fmnist, *ZERO_SHOT_OVERRIDES, "model.peft=[lora]")
    from lpt.methods import check_config
    with pytest.raises(ConfigError, match="zeroshot.*model.peft=\\[\\]"):
        check_config(cfg)


# ----------------------------------------------------------------------------- without the extra, and bad input


def test_without_open_clip_a_text_feature_asks_for_the_extra(tiny_clip, tiny_fmnist, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now raises ImportError
    cfg = clip_config(tiny_clip, tiny_fmnist, "model.head_init=text")
    with pytest.raises(ConfigError) as exc:
        class_embeddings(cfg.model, NAMES, torch.device("cpu"))
    assert str(exc.value) == "model.text needs open_clip, an optional extra of lpt: pip install 'lpt[clip]'"
    model, _ = build_model(clip_config(tiny_clip, tiny_fmnist).model, 3, seed=0)  # the image tower needs no extra
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_without_open_clip_the_cli_says_so_in_one_line(tiny_clip, tiny_fmnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    overrides = [f"data.root={tiny_fmnist}", "data.img_size=32", "data.test_resize=32", *tiny_clip["overrides"]]
    assert main(["eval", "--zero-shot", "--config", "demo", "--out", str(tmp_path / "zs"), *overrides]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "lpt eval: error: model.text needs open_clip, an optional extra of lpt: pip install 'lpt[clip]'"
    assert not (tmp_path / "zs" / "model.safetensors").exists()


def test_text_keys_need_a_text_tower():
    with pytest.raises(ConfigError, match="model.head_init.*model.text"):
        load_config("demo", ["model.head_init=text"])
    with pytest.raises(ConfigError, match="model.projection.*model.text"):
        load_config("demo", ["model.projection=true"])


def test_unknown_text_tower_is_named(tiny_clip, tiny_fmnist):
    cfg = clip_config(tiny_clip, tiny_fmnist, "model.text=ViT-Q-99")
    with pytest.raises(ConfigError, match="'ViT-Q-99': not an open_clip model"):
        class_embeddings(cfg.model, NAMES, torch.device("cpu"))


# ----------------------------------------------------------------------------- class names


def test_clean_names():
    assert [clean_name(n) for n in ("aquarium_fish", "/a/abbey", "apartment_building-outdoor", " T-shirt/top ")] == [
        "aquarium fish", "abbey", "apartment building-outdoor", "T-shirt/top"]


def test_names_from_classnames_beside_the_list_and_from_an_override(tmp_path):
    (tmp_path / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    cfg = load_config("demo", ["data.source=list", f"data.train_list={tmp_path / 'train.txt'}"]).data
    assert prompt_names(cfg, ["n01440764", "n01443537", "n01484850"]) == ["tench", "goldfish", "great white shark"]
    (tmp_path / "mine.txt").write_text("carp\ngold_fish\nshark\n")
    cfg.class_names = str(tmp_path / "mine.txt")
    assert prompt_names(cfg, ["n01440764", "n01443537", "n01484850"]) == ["carp", "gold fish", "shark"]


def test_names_from_a_folder_class_index_in_either_form(tmp_path):
    """A ``folder readable name`` index gives its names in label order; a ``folder label`` index (any line
    order) names no class, so the folders' own names serve."""
    (tmp_path / "index.txt").write_text("n01 tench\nn02 goldfish\n")
    cfg = load_config("folder", [f"data.class_index={tmp_path / 'index.txt'}"]).data
    assert prompt_names(cfg, ["n01", "n02"]) == ["tench", "goldfish"]
    (tmp_path / "index.txt").write_text("gold_fish 1\ntench 0\n")
    assert prompt_names(cfg, ["tench", "gold_fish"]) == ["tench", "gold fish"]


def test_wordnet_ids_are_refused_with_a_way_out(tmp_path):
    cfg = load_config("folder").data
    with pytest.raises(ConfigError, match="class 1 is named 'n01443537'.*data.class_names"):
        prompt_names(cfg, ["tench", "n01443537"])
    (tmp_path / "short.txt").write_text("tench\n")
    cfg.class_names = str(tmp_path / "short.txt")
    with pytest.raises(ConfigError, match="short.txt: 1 class names; the data has 2 classes"):
        prompt_names(cfg, ["a", "b"])


def test_an_untagged_clip_backbone_is_refused_before_anything_loads(tiny_clip, tiny_fmnist):
    from lpt.model.build import check_fits

    cfg = clip_config(tiny_clip, tiny_fmnist, "model.backbone=vit_base_patch16_clip_224")
    with pytest.raises(ConfigError, match="without a weights tag.*vit_base_patch16_clip_224.openai"):
        check_fits(cfg.model, cfg.data.img_size)


def test_a_backbone_run_otherwise_than_trained_is_warned_not_refused(caplog):
    from lpt.config import ModelConfig
    from lpt.model.build import warn_mismatches

    clip_mean, clip_std = list(open_clip.OPENAI_DATASET_MEAN), list(open_clip.OPENAI_DATASET_STD)
    warn_mismatches(ModelConfig(backbone="vit_base_patch16_clip_224.openai"), clip_mean, clip_std)
    assert "vit_base_patch16_clip_224.openai runs OpenAI's CLIP weights with GELU" in caplog.text
    assert "vit_base_patch16_clip_quickgelu_224.openai gives the original model" in caplog.text
    assert "normalisation" not in caplog.text  # CLIP's own statistics
    caplog.clear()
    warn_mismatches(ModelConfig(backbone="vit_base_patch16_clip_quickgelu_224.openai"), clip_mean, clip_std)
    in21k = ModelConfig(backbone="vit_base_patch16_224.augreg_in21k")
    warn_mismatches(in21k, [0.5] * 3, [0.5] * 3)
    assert caplog.text == ""
    warn_mismatches(in21k, clip_mean, clip_std)
    assert "are not vit_base_patch16_224.augreg_in21k's own normalisation [0.5, 0.5, 0.5]" in caplog.text


def test_imagenet_lt_classnames_give_clips_imagenet_names():
    """ImageNet-LT's classnames.txt (shared split lists) beside the training list gives, label by label, the
    names open_clip's zero-shot ImageNet classifier uses."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "shared" / "splits" / "imagenet_lt"
    if not (folder / "classnames.txt").is_file():
        pytest.skip("the shared split lists are not on this machine")
    wnids = [line.split()[0] for line in (folder / "classnames.txt").read_text().splitlines()]
    cfg = load_config("imagenet_lt", [f"data.train_list={folder / 'ImageNet_LT_train.txt'}"]).data
    assert prompt_names(cfg, wnids) == list(open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES)
