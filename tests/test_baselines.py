"""Baselines and ablations run through the same trainer: what trains, what reloads."""

import json

import pytest
import torch

import lpt
from lpt.config import ConfigError, load_config
from lpt.methods import check_config
from lpt.run.load import build_run_model, evaluate_run
from lpt.run.train import train
from lpt.model.prompted_vit import embed, pooled_feature

METHODS = {
    "vpt_deep_linear_ce": ["method=vpt", "phases=[phase1]", "model.head=linear", "loss.name=ce", "loss.scale=1",
                           "phase1.sampling=instance"],
    "vpt_shallow": ["method=vpt", "phases=[phase1]", "model.prompt_depth=shallow", "phase1.sampling=balanced"],
    "linear": ["method=linear", "phases=[phase1]", "model.prompt_len=0"],
    "full": ["method=full", "phases=[phase1]", "model.prompt_len=0"],
    "lpt_joint": ["method=lpt_joint", "phases=[phase2]"],
    "lpt_plain_query": ["model.query=plain", "phase1.epochs=1"],
}


def initial_tensors(cfg):
    model, _ = build_run_model(cfg, 10)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", METHODS)
def test_method_trains_what_it_should_and_reloads(name, tiny_overrides, tmp_path):
    cfg = load_config("demo", tiny_overrides + METHODS[name])
    before = initial_tensors(cfg)
    metrics = train(cfg, tmp_path / name)
    assert evaluate_run(tmp_path / name, device="cpu") == metrics
    after = lpt.load_run(tmp_path / name).model.state_dict()
    changed = {k if k.startswith("pool.") else k.split(".")[0]
               for k in before if not torch.equal(before[k], after[k])}
    expected = {
        "vpt_deep_linear_ce": {"shared_prompt", "head"},
        "vpt_shallow": {"shared_prompt", "head"},
        "linear": {"head"},
        "full": {"backbone", "head"},
        "lpt_joint": {"shared_prompt", "pool.prompts", "pool.keys", "head"},
        "lpt_plain_query": {"shared_prompt", "pool.prompts", "pool.keys", "head"},
    }[name]
    assert changed == expected
    run = json.loads((tmp_path / name / "run.json").read_text())
    assert run["method"] == cfg.method


def test_plain_query_is_the_plain_vit_feature(tiny_overrides):
    cfg = load_config("demo", tiny_overrides + ["model.query=plain"])
    model, _ = build_run_model(cfg, 10)
    model.eval()
    images = torch.randn(3, 3, 28, 28)
    vit = model.backbone
    torch.testing.assert_close(model.query(images), pooled_feature(vit, vit.blocks(embed(vit, images))))
    assert not torch.allclose(model.query(images), model.phase1_feature(images))


@pytest.mark.parametrize("overrides, message", [
    (["method=vpt"], "phases=\\[phase1\\]"),
    (["method=linear", "phases=[phase1]"], "prompt_len=0"),
    (["model.prompt_depth=shallow"], "method=vpt"),
    (["method=lpt_joint", "phases=[phase1]"], "phases=\\[phase2\\]"),
    (["method=prompt_soup"], "crt, full, linear, lpt, lpt_joint, lws, peft, vpt"),
])
def test_method_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(load_config("demo", overrides))


def test_a_method_is_one_class_the_trainer_run_and_tables_find_by_name(tiny_overrides, tmp_path):
    from lpt.analysis.compare import compare_runs
    from lpt.methods import REGISTRY, Method

    class HeadOnly(Method):  # the prompt stays as initialised: only the classifier trains
        name = "test_head_only"
        label = "head only"

        def prepare(self, model, phase):
            model.set_phase(1)
            model.shared_prompt.requires_grad_(False)
            return list(model.head.parameters())

    try:
        cfg = load_config("demo", tiny_overrides + ["method=test_head_only", "phases=[phase1]", "phase1.epochs=1"])
        before = initial_tensors(cfg)
        train(cfg, tmp_path / "run")
        after = lpt.load_run(tmp_path / "run").model.state_dict()
        assert {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])} == {"head"}
        assert compare_runs([tmp_path / "run"])[0]["method"] == "head only"
        with pytest.raises(ConfigError, match="method 'test_head_only' has one stage: set phases=\\[phase1\\]"):
            check_config(load_config("demo", tiny_overrides + ["method=test_head_only"]))
    finally:
        del REGISTRY[HeadOnly.name]
