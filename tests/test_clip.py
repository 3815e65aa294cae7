"""CLIP backbones: lpt's zero-shot classifier and text-initialised heads against open_clip's own CLIP.

A random open_clip model (conftest ``tiny_clip``) is saved as a released CLIP is, one checkpoint
holding both towers; lpt reads its image tower as timm's CLIP ViT through timm's checkpoint filter
and its text tower through open_clip. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transform import image_transform
from PIL import Image
from conftest import CLIP_DIM, CLIP_EMBED

from lpt.cli import main
from lpt.config import ConfigError, load_config
from lpt.data import build_datasets, build_transform, with_eval_transform
from lpt.data.names import clean_name, prompt_names
from lpt.engine.step import Env
from lpt.methods.zeroshot import ZERO_SHOT_OVERRIDES, zero_shot_config
from lpt.model.build import build_model, check_fits
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
    folder = Path(__file__).resolve().parents[2] / "shared" / "splits" / "imagenet_lt"
    if not (folder / "classnames.txt").is_file():
        pytest.skip("the shared split lists are not on this machine")
    wnids = [line.split()[0] for line in (folder / "classnames.txt").read_text().splitlines()]
    cfg = load_config("imagenet_lt", [f"data.train_list={folder / 'ImageNet_LT_train.txt'}"]).data
    assert prompt_names(cfg, wnids) == list(open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES)


# ----------------------------------------------------------------------------- OpenAI's CLIP from local files

README = Path(__file__).resolve().parents[1] / "README.md"
CONVERSION = "open_clip.load_openai_model"  # README's command that turns OpenAI's TorchScript release into a file


def readme_clip_section() -> str:
    text = README.read_text()
    return text[text.index("## CLIP backbones"):text.index("\n## ", text.index("## CLIP backbones") + 1)]


def readme_line(marker: str) -> str:
    (line,) = [line for line in readme_clip_section().splitlines() if marker in line and not line.startswith("#")]
    return line


@pytest.fixture(scope="module")
def openai_checkpoint(tiny_openai_clip) -> Path:
    """The tiny OpenAI TorchScript archive (``ViT-B-16.pt``) converted by README's own command, run as written."""
    words = shlex.split(readme_line(CONVERSION))
    assert words[:2] == ["python", "-c"]
    folder = tiny_openai_clip["archive"].parent
    done = subprocess.run([sys.executable, *words[1:]], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "ViT-B-16.safetensors"


def openai_preset(tiny_openai_clip, checkpoint, preset: str, kind: str = "quickgelu", *extra):
    """A CLIP preset with the tiny OpenAI CLIP's file as README says (model.checkpoint), its towers shrunk to the
    tiny sizes; everything else, the text tower's ``openai`` tag included, is the preset's."""
    return load_config(preset, [f"model.checkpoint={checkpoint}", f"model.text={tiny_openai_clip['configs'][kind]}",
                                *tiny_openai_clip["overrides"], *extra])


def open_clip_text(tiny_openai_clip, names) -> tuple[torch.Tensor, torch.Tensor]:
    """open_clip's QuickGELU model's tokens and unit-norm text embeddings of CLIP's prompt for ``names``."""
    tokens = open_clip.get_tokenizer("tiny-openai-quickgelu")([f"a photo of a {n}." for n in names])
    with torch.no_grad():
        return tokens, F.normalize(tiny_openai_clip["model"].encode_text(tokens), dim=-1)


@pytest.mark.parametrize("kind", ["quickgelu", "plain"])  # as the presets' ViT-B-16-quickgelu, and as ViT-B-16
def test_openai_weights_in_a_clip_preset_are_open_clips_quickgelu_clip(tiny_openai_clip, openai_checkpoint, kind):
    """Text embeddings, CLIP's logit scale and zero-shot logits (``lpt eval --zero-shot --config lift_clip_*``) of
    OpenAI-format weights given as one file equal open_clip's QuickGELU CLIP's: the text tower reads the file,
    not the preset's ``openai`` tag, and runs QuickGELU as the image tower does even where its config is silent."""
    cfg = openai_preset(tiny_openai_clip, openai_checkpoint, "lift_clip_places_lt", kind, *ZERO_SHOT_OVERRIDES)
    assert (cfg.model.backbone, cfg.model.text_pretrained) == ("vit_base_patch16_clip_quickgelu_224.openai", "openai")
    check_fits(cfg.model, 32)
    tokens, theirs = open_clip_text(tiny_openai_clip, NAMES)
    embeddings, scale = class_embeddings(cfg.model, NAMES, torch.device("cpu"))
    torch.testing.assert_close(embeddings, theirs, atol=1e-5, rtol=0)
    assert scale == pytest.approx(100.0, rel=1e-6)
    model, identity = build_model(cfg.model, len(NAMES), seed=0)
    with torch.no_grad():
        model.head.weight.copy_(text_weights(model, embeddings))
        images = torch.randn(6, 3, 32, 32)
        image_features, text_features, clip_scale = tiny_openai_clip["model"](images, tokens)
        torch.testing.assert_close(scale * model.eval()(images), clip_scale * image_features @ text_features.t(),
                                   atol=1e-5 * scale, rtol=0)  # cosines within 1e-5
    assert identity.source == "file"


@pytest.mark.parametrize("preset", ["lift_clip_cifar100_lt", "lpt_clip_cifar100_lt"])
def test_a_clip_presets_text_initialised_head_is_open_clips_quickgelu_text(tiny_openai_clip, openai_checkpoint,
                                                                             tiny_fmnist, preset):
    """The classifier a CLIP preset starts from: open_clip's text embeddings in the joint space (lpt_clip_*), or
    mapped through the image tower's projection P as LIFT does, ``normalize(t @ P.t())`` (lift_clip_*)."""
    data = ["data.source=fashion_mnist", f"data.root={tiny_fmnist}", "data.img_size=32", "data.test_resize=32",
            "data.max_per_class=8", "data.imbalance_ratio=1", "data.num_workers=0", "progress=false"]
    cfg = openai_preset(tiny_openai_clip, openai_checkpoint, preset, "quickgelu", *data)
    splits = build_datasets(cfg.data)
    model, _ = build_model(cfg.model, splits.num_classes, seed=0)
    text = init_head(model, splits, cfg, Env(torch.device("cpu"), "fp32"))
    _, theirs = open_clip_text(tiny_openai_clip, text["meta"]["names"])
    if not cfg.model.projection:
        theirs = F.normalize(theirs @ tiny_openai_clip["model"].visual.proj.detach().t(), dim=1)
    torch.testing.assert_close(model.head.weight.detach(), theirs, atol=1e-5, rtol=0)
    assert text["meta"]["text_pretrained"] == str(openai_checkpoint)  # what the text tower read, not the tag


@pytest.mark.parametrize("overrides, text, image", [
    (["model.backbone=vit_base_patch16_clip_224.openai"], "QuickGELU by its open_clip config ViT-B-16-quickgelu",
     "GELU"),
    (["model.backbone=vit_base_patch16_clip_224.openai", "model.text=ViT-B-16"],
     "QuickGELU as its weights 'openai' were trained", "GELU"),
    (["model.text=ViT-B-16", "model.text_pretrained=laion2b_s34b_b88k"],
     "GELU as its weights 'laion2b_s34b_b88k' were trained", "QuickGELU"),
])
def test_towers_of_two_activations_are_refused_in_one_line(overrides, text, image):
    cfg = load_config("lift_clip_places_lt", overrides)
    expected = (f"CLIP's towers run one activation, but the text tower (model.text={cfg.model.text!r}) runs {text} "
                f"and the image tower (model.backbone={cfg.model.backbone!r}) {image}: name both with one")
    for refuse in (lambda: check_fits(cfg.model, 224), lambda: class_embeddings(cfg.model, NAMES, torch.device("cpu"))):
        with pytest.raises(ConfigError) as exc:  # before any weights download
            refuse()
        assert str(exc.value).startswith(expected) and "\n" not in str(exc.value)


def test_a_quickgelu_text_config_over_a_gelu_image_tower_file_is_refused(tiny_clip, tiny_openai_clip, tiny_fmnist):
    cfg = clip_config(tiny_clip, tiny_fmnist, f"model.text={tiny_openai_clip['configs']['quickgelu']}")
    with pytest.raises(ConfigError, match="runs QuickGELU by its open_clip config tiny-openai-quickgelu and the "
                                          "image tower .* GELU"):
        check_fits(cfg.model, 32)


def test_a_torchscript_archive_is_refused_with_the_command_that_converts_it(tiny_openai_clip, openai_checkpoint):
    """OpenAI's original ``.pt`` release, for either tower: one line saying what lpt reads and README's command
    that converts it, with the file's own paths."""
    from lpt.model import BackboneError

    archive = tiny_openai_clip["archive"]
    command = readme_line(CONVERSION).replace("ViT-B-16.pt", str(archive))
    command = command.replace("ViT-B-16.safetensors", str(openai_checkpoint))
    cfg = openai_preset(tiny_openai_clip, archive, "lift_clip_places_lt")
    with pytest.raises(BackboneError) as exc:
        build_model(cfg.model, 3, seed=0)
    assert str(exc.value) == (f"backbone checkpoint {archive} is a TorchScript archive (as OpenAI's original CLIP .pt "
                              "files are); lpt reads state dicts (.safetensors, .pth, .pt, .bin, .npz): convert an "
                              f"OpenAI CLIP once with open_clip: {command}")
    cfg = openai_preset(tiny_openai_clip, openai_checkpoint, "lift_clip_places_lt", "quickgelu",
                        f"model.text_pretrained={archive}")
    with pytest.raises(ConfigError, match=f"^text tower weights {archive} is a TorchScript archive.*{CONVERSION}"):
        class_embeddings(cfg.model, NAMES, torch.device("cpu"))


def test_an_image_tower_only_checkpoint_says_where_the_text_tower_goes(tiny_openai_clip, tmp_path):
    from safetensors.torch import save_file

    image_only = tmp_path / "image_tower.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_openai_clip["model"].state_dict().items()
               if k.startswith("visual.")}, image_only)
    cfg = openai_preset(tiny_openai_clip, image_only, "lift_clip_places_lt")
    with pytest.raises(ConfigError, match="does not hold open_clip's tiny-openai-quickgelu whole .* the text "
                                          "tower's file in model.text_pretrained$"):
        class_embeddings(cfg.model, NAMES, torch.device("cpu"))


@pytest.fixture(scope="module")
def offline_zero_shot_run(tiny_openai_clip, openai_checkpoint, tiny_fmnist, tmp_path_factory) -> Path:
    """``lpt eval --zero-shot --config lift_clip_cifar100_lt model.checkpoint=FILE`` (README's form, the towers
    shrunk, Fashion-MNIST-format data) in a process with no hub access and an empty hub cache."""
    base = tmp_path_factory.mktemp("offline")
    out = base / "zs"
    overrides = [f"model.checkpoint={openai_checkpoint}", f"model.text={tiny_openai_clip['configs']['quickgelu']}",
                 *tiny_openai_clip["overrides"], "data.source=fashion_mnist", f"data.root={tiny_fmnist}",
                 "data.img_size=32", "data.test_resize=32", "data.max_per_class=8", "data.imbalance_ratio=1",
                 "data.num_workers=0", "progress=false", "device=cpu"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(base / "hf"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(files.__file__).parents[2]), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "lpt", "eval", "--zero-shot", "--config", "lift_clip_cifar100_lt",
                           "--out", str(out), *overrides], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_a_clip_preset_reads_both_towers_from_model_checkpoint_offline(offline_zero_shot_run, openai_checkpoint):
    _, meta = files.read_text_embeddings(offline_zero_shot_run)
    assert meta["text_pretrained"] == str(openai_checkpoint) and meta["logit_scale"] == pytest.approx(100.0)
    assert json.loads((offline_zero_shot_run / "run.json").read_text())["backbone"]["source"] == "file"


def test_lpt_predict_on_a_zero_shot_run_prints_clips_probabilities(offline_zero_shot_run, tiny_openai_clip, tmp_path,
                                                                   capsys):
    """softmax(CLIP's logit scale x cosine), as open_clip's own model gives it, not softmax(loss.scale x cosine)."""
    from PIL import Image

    from lpt.run.load import load_run

    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    run = load_run(offline_zero_shot_run)
    names = files.read_text_embeddings(offline_zero_shot_run)[1]["names"]
    tokens, _ = open_clip_text(tiny_openai_clip, names)
    with torch.no_grad():
        image_features, text_features, scale = tiny_openai_clip["model"](run.transform(Image.open(path))[None], tokens)
        theirs = (scale * image_features @ text_features.t()).softmax(dim=1)
    assert run.logit_scale == pytest.approx(100.0) != run.config.loss.scale
    torch.testing.assert_close(run.predict([path]), theirs, atol=1e-5, rtol=0)
    assert main(["predict", "--run", str(offline_zero_shot_run), str(path), "--topk", "3"]) == 0
    top = theirs[0].topk(3)
    expected = ", ".join(f"{run.classes[i]} ({p:.3f})" for p, i in zip(top.values.tolist(), top.indices.tolist()))
    assert capsys.readouterr().out.strip() == f"{path}: {expected}"


def test_zero_shot_metrics_json_probabilities_use_clips_logit_scale(offline_zero_shot_run):
    """metrics.json's NLL is of softmax(CLIP's logit scale x cosine), as lpt eval and run.predict, not of loss.scale."""
    from lpt.data import build_test_dataset
    from lpt.run.load import evaluate_run, load_run

    run = load_run(offline_zero_shot_run)
    test = build_test_dataset(run.config.data)
    with torch.no_grad():
        cosines = run.model(torch.stack([test[i][0] for i in range(len(test))])).double()
    labels = torch.as_tensor(test.targets)
    metrics = json.loads((offline_zero_shot_run / "metrics.json").read_text())
    assert metrics["nll"] == pytest.approx(F.cross_entropy(100.0 * cosines, labels).item(), rel=1e-5)
    assert evaluate_run(offline_zero_shot_run, device="cpu")["nll"] == pytest.approx(metrics["nll"], rel=1e-6)


def test_readmes_clip_commands_resolve_with_one_activation_for_both_towers(tmp_path):
    """README's CLIP commands (the local OpenAI, LAION and converted files) resolve as ``lpt train`` would
    resolve them, the towers' activation check included; its conversion command is run by ``openai_checkpoint``."""
    from test_reproduce_commands import resolve, train_commands

    stand_in = tmp_path / "split.txt"
    stand_in.write_text("img.png 0\n")
    # the conversion line's quoted ';' would split it as a statement: only lpt's lines are read
    lpt_lines = "\n".join(line for line in readme_clip_section().splitlines() if CONVERSION not in line)
    commands = [argv for argv in train_commands(lpt_lines) if any("checkpoint=" in w for w in argv)]
    assert len(commands) == 3
    backbones = {resolve(argv, stand_in).model.backbone for argv in commands}
    assert backbones == {"vit_base_patch16_clip_quickgelu_224.openai", "vit_base_patch16_clip_224.laion2b"}


@pytest.mark.parametrize("preset", ["lift_clip_places_lt", "lpt_clip_inat2018"])
def test_zero_shot_evaluates_with_clips_own_transform(preset):
    """``lpt eval --zero-shot`` sees what CLIP's preprocessing makes of a non-square image (open_clip's evaluation
    transform: bicubic resize of the shorter side to 224, centre crop), not the preset's 256-pixel resize."""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    d = zero_shot_config(preset, []).data
    clip = image_transform(224, is_train=False, mean=tuple(d.mean), std=tuple(d.std))
    torch.testing.assert_close(build_transform(d, train=False)(photo), clip(photo))
    assert zero_shot_config(preset, ["data.test_resize=256"]).data.test_resize == 256  # the command line wins
