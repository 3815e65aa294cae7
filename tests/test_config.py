"""Typed config: the packaged preset, round trips through YAML, dotted overrides and their errors."""

import dataclasses

import pytest

from lpt.cli import main
from lpt.config import (
    Config,
    ConfigError,
    DataConfig,
    apply_overrides,
    from_dict,
    load_config,
    preset_names,
    read_yaml,
    save_config,
    to_dict,
)

# ----------------------------------------------------------------------------- the demo preset


def test_demo_preset_loads_its_values():
    cfg = load_config("demo")
    assert "demo" in preset_names()
    assert cfg.data.source == "fashion_mnist"
    assert cfg.data.imbalance_ratio == 100.0 and isinstance(cfg.data.imbalance_ratio, float)
    assert cfg.data.max_per_class == 500
    assert cfg.data.img_size == 28 and cfg.data.train_aug == "none"
    assert cfg.model.backbone == "demo_vit_glyphs" and cfg.model.backbone_args == {}  # bundled with lpt
    assert (cfg.model.prompt_len, cfg.model.pool_size, cfg.model.split_block, cfg.model.top_k) == (10, 20, 3, 2)
    assert (cfg.phase1.epochs, cfg.phase1.batch_size, cfg.phase1.lr) == (8, 64, 0.04)
    assert (cfg.phase2.epochs, cfg.phase2.batch_size, cfg.phase2.lr) == (4, 64, 0.04)
    assert cfg.eval_batch_size == 500
    # keys the preset leaves out keep the dataclass defaults
    assert cfg.loss == Config().loss
    assert cfg.phases == ["phase1", "phase2"]


def test_demo_round_trips_through_dict_and_yaml(tmp_path):
    cfg = load_config("demo")
    data = to_dict(cfg)
    assert from_dict(data) == cfg
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    saved = read_yaml(path)
    assert saved == data
    assert from_dict(saved) == cfg
    assert load_config(str(path)) == cfg


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(str(path)) == dataclasses.replace(Config(), data=DataConfig(test_resize=256))  # 0 resolved


@pytest.mark.parametrize("overrides, test_resize", [
    ([], 256), (["data.img_size=28"], 32), (["data.img_size=384"], 439),
    (["data.img_size=28", "data.test_resize=28"], 28),
])
def test_test_resize_follows_img_size_unless_set(tmp_path, overrides, test_resize):
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  source: folder\n")
    cfg = load_config(str(path), overrides)
    assert cfg.data.test_resize == test_resize
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert read_yaml(tmp_path / "run" / "config.yaml")["data"]["test_resize"] == test_resize  # the run says what ran


def test_test_resize_below_img_size_is_refused(capsys):
    assert main(["train", "--config", "demo", "data.img_size=32", "data.test_resize=28"]) == 2
    assert capsys.readouterr().err == ("lpt train: error: config key 'data.test_resize' is 28; expected 0 (follow "
                                       "data.img_size) or at least data.img_size (32)\n")
    assert main(["train", "--config", "demo", "data.img_size=32", "data.test_resize=0", "data.init_resize=28"]) == 2
    assert capsys.readouterr().err == ("lpt train: error: config key 'data.init_resize' is 28; expected 0 (follow "
                                       "data.test_resize) or at least data.img_size (32)\n")


# ----------------------------------------------------------------------------- overrides


def test_overrides_set_typed_values():
    data = apply_overrides({}, [
        "phase1.epochs=5", "data.mean=[0.1,0.2,0.3]", "model.backbone_args.depth=4", "model.pretrained=false",
    ])
    assert data == {
        "phase1": {"epochs": 5}, "data": {"mean": [0.1, 0.2, 0.3]},
        "model": {"backbone_args": {"depth": 4}, "pretrained": False},
    }
    cfg = from_dict(data)
    assert cfg.phase1.epochs == 5 and type(cfg.phase1.epochs) is int
    assert cfg.data.mean == [0.1, 0.2, 0.3]
    assert cfg.model.backbone_args == {"depth": 4}
    assert cfg.model.pretrained is False
    # untouched keys keep their defaults, including the other phase's
    assert cfg.phase2 == Config().phase2
    assert dataclasses.replace(cfg.phase1, epochs=10) == Config().phase1


def test_overrides_on_a_preset_merge_into_free_form_dict():
    cfg = load_config("demo", ["model.backbone_args={img_size: 28, patch_size: 7}", "model.backbone_args.depth=4",
                               "phase1.epochs=5", "data.mean=[1, 0, 0]"])
    assert cfg.model.backbone_args == {"img_size": 28, "patch_size": 7, "depth": 4}
    assert cfg.phase1.epochs == 5 and cfg.phase2.epochs == 4
    assert cfg.data.mean == [1.0, 0.0, 0.0] and all(type(v) is float for v in cfg.data.mean)


def test_override_later_wins_and_empty_value_is_empty_string():
    cfg = from_dict(apply_overrides({}, ["phase1.epochs=5", "phase1.epochs=7", "init=run0", "init="]))
    assert cfg.phase1.epochs == 7
    assert cfg.init == ""


# ----------------------------------------------------------------------------- errors


def config_error(overrides, base=None):
    with pytest.raises(ConfigError) as info:
        from_dict(apply_overrides(base if base is not None else {}, overrides))
    return str(info.value)


def test_unknown_key_names_it_and_lists_valid_keys():
    msg = config_error(["phase1.epoch=3"])
    assert "phase1.epoch" in msg
    for valid in ("epochs", "batch_size", "lr", "warmup_epochs", "sampling"):
        assert valid in msg


def test_unknown_top_level_key():
    msg = config_error(["seeds=3"])
    assert "'seeds'" in msg and "phase1" in msg and "seed" in msg


def test_unknown_key_in_yaml_file_names_it(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("phase1:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"phase1\.epoch'.*epochs"):
        load_config(str(path))


def test_sub_key_on_a_leaf():
    msg = config_error(["phase1.epochs.max=3"])
    assert "phase1.epochs.max" in msg and "'phase1.epochs' has no sub-keys" in msg


def test_section_name_alone():
    msg = config_error(["phase1=3"])
    assert "'phase1'" in msg and "section" in msg


@pytest.mark.parametrize("override, key, expected", [
    ("phase1.epochs=abc", "phase1.epochs", "integer"),
    ("phase1.epochs=2.5", "phase1.epochs", "integer"),
    ("phase2.lr=fast", "phase2.lr", "number"),
    ("model.pretrained=3", "model.pretrained", "true or false"),
    ("data.mean=0.5", "data.mean", "list"),
    ("data.mean=[0.1, x, 0.3]", "data.mean[1]", "number"),
    ("model.backbone_args=3", "model.backbone_args", "mapping"),
])
def test_wrong_type_names_the_key(override, key, expected):
    msg = config_error([override])
    assert f"'{key}'" in msg and expected in msg


def test_invalid_choice_lists_choices():
    msg = config_error(["loss.name=ride"])
    assert "loss.name" in msg and "ride" in msg
    for choice in ("agcl", "gcl", "ce", "la", "bs", "ldam", "focal", "grw", "lade"):
        assert choice in msg


def test_top_k_larger_than_pool():
    msg = config_error(["model.pool_size=4", "model.top_k=5"])
    assert "model.top_k" in msg and "pool_size" in msg
    assert from_dict(apply_overrides({}, ["model.pool_size=4", "model.top_k=4"])).model.top_k == 4


def test_phase2_alone_needs_init():
    from lpt.methods import check_config

    with pytest.raises(ConfigError) as info:
        check_config(from_dict(apply_overrides({}, ["phases=[phase2]"])))
    assert "phases" in str(info.value) and "init" in str(info.value)
    assert from_dict(apply_overrides({}, ["phases=[phase2]", "init=runs/p1"])).phases == ["phase2"]


@pytest.mark.parametrize("phases", ["[phase2, phase1]", "[phase1, phase1]", "[phase3]"])
def test_bad_phase_lists(phases):
    assert "phases" in config_error([f"phases={phases}", "init=runs/p1"])


def test_no_phases_only_for_a_method_that_trains_nothing():
    from lpt.methods import check_config

    with pytest.raises(ConfigError, match=r"'phases' is \[\]; method 'lpt' trains phase1, phase2"):
        check_config(from_dict(apply_overrides({}, ["phases=[]"])))


def test_override_without_equals():
    with pytest.raises(ConfigError, match=r"phase1\.epochs 5.*dotted\.key=value"):
        apply_overrides({}, ["phase1.epochs 5"])


def test_malformed_yaml_value_in_override_raises_config_error():
    with pytest.raises(ConfigError, match=r"data\.mean"):
        apply_overrides({}, ["data.mean=[0.1, 0.2"])


@pytest.mark.parametrize("text", ["- phase1\n- phase2\n", "42\n", "just a string\n"])
def test_yaml_file_that_is_not_a_mapping(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="mapping") as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_invalid_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("phase1: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_malformed_yaml_is_one_line_naming_file_line_and_problem(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  img_size: 28\n  test_resize: 28: x\n")  # PyYAML's message spans 5 lines
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"lpt train: error: {path} line 3, column 18: not valid YAML: mapping values are not allowed here\n"


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as info:
        load_config("no_such_preset")
    msg = str(info.value)
    assert "no_such_preset" in msg and "presets: " in msg and "demo" in msg


def test_bad_override_on_a_preset_names_the_key():
    with pytest.raises(ConfigError, match=r"phase1\.epochs"):
        load_config("demo", ["phase1.epochs=abc"])


def test_backbone_args_entry_without_value_is_refused():
    with pytest.raises(ConfigError, match="backbone_args.*img_size:28"):
        load_config("demo", ["model.backbone_args={img_size:28}"])


@pytest.mark.parametrize("liftplus, ours", [("none", "random"), ("linear_probing", "linear_probe"),
                                            ("class_mean", "class_mean"), ("semantic", "text")])
def test_liftplus_classifier_init_names_are_read_as_head_init(liftplus, ours, tmp_path):
    extra = ["model.text=ViT-B-16"] if ours == "text" else []
    cfg = load_config("demo", [f"model.head_init={liftplus}", *extra])
    assert cfg.model.head_init == ours
    save_config(cfg, tmp_path / "config.yaml")  # the run says what ran
    assert read_yaml(tmp_path / "config.yaml")["model"]["head_init"] == ours
