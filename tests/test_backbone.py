"""Backbone loading: local weight files, identity and fingerprint, clear errors."""

import pytest
import torch
from safetensors.torch import save_file

from lpt.model import BackboneError, create_backbone, weights_fingerprint

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture
def source_vit():
    torch.manual_seed(3)
    vit, _ = create_backbone("vit_tiny_patch16_224", pretrained=False, **TINY)
    return vit


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_loads_exactly(source_vit, tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    state = {k: v.clone() for k, v in source_vit.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    torch.manual_seed(99)  # a different random init underneath, overwritten by the file
    vit, identity = create_backbone("vit_tiny_patch16_224", checkpoint=str(path), **TINY)
    assert identity.source == "file" and identity.checkpoint == str(path)
    assert identity.fingerprint == weights_fingerprint(source_vit)
    for name, value in source_vit.state_dict().items():
        assert torch.equal(vit.state_dict()[name], value), name
    assert not any(p.requires_grad for p in vit.parameters())


def test_random_init_is_reported(caplog):
    _, identity = create_backbone("vit_tiny_patch16_224", pretrained=False, **TINY)
    assert identity.source == "random" and identity.pretrained_tag == ""
    assert "RANDOMLY INITIALISED" in caplog.text


def test_fingerprint_tracks_weights(source_vit):
    before = weights_fingerprint(source_vit)
    with torch.no_grad():
        source_vit.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    assert weights_fingerprint(source_vit) != before


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(BackboneError, match="unknown backbone 'vit_bogus'"):
        create_backbone("vit_bogus", pretrained=False)
    with pytest.raises(BackboneError, match="does not exist"):
        create_backbone("vit_tiny_patch16_224", checkpoint=str(tmp_path / "none.pth"), **TINY)
    bad = tmp_path / "w.txt"
    bad.write_text("x")
    with pytest.raises(BackboneError, match=r"\.safetensors"):
        create_backbone("vit_tiny_patch16_224", checkpoint=str(bad), **TINY)
    with pytest.raises(BackboneError, match="VisionTransformer"):
        create_backbone("resnet18", pretrained=False)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"pos_embed": torch.zeros(1, 3, 3)}, wrong)
    with pytest.raises(BackboneError, match="wrong.safetensors"):
        create_backbone("vit_tiny_patch16_224", checkpoint=str(wrong), **TINY)


def test_weights_file_with_a_missing_or_extra_tensor_is_refused(source_vit, tmp_path):
    state = {k: v.clone() for k, v in source_vit.state_dict().items()}
    del state["blocks.0.norm1.weight"]
    save_file(state, tmp_path / "missing.safetensors")
    with pytest.raises(BackboneError, match=r"missing tensor 'blocks.0.norm1.weight'"):
        create_backbone("vit_tiny_patch16_224", checkpoint=str(tmp_path / "missing.safetensors"), **TINY)
    state = {k: v.clone() for k, v in source_vit.state_dict().items()} | {"extra.weight": torch.zeros(2)}
    save_file(state, tmp_path / "extra.safetensors")
    with pytest.raises(BackboneError, match=r"unexpected tensor 'extra.weight'"):
        create_backbone("vit_tiny_patch16_224", checkpoint=str(tmp_path / "extra.safetensors"), **TINY)


# ----------------------------------------------------------------------------- backbones shipped with lpt


def test_shipped_demo_backbone_loads_offline_and_matches_its_card():
    import json

    from safetensors import safe_open

    from lpt.model.bundled import BUNDLED

    bundle = BUNDLED["demo_vit_glyphs"]
    card = json.loads(bundle.card_path().read_text())
    assert bundle.weights_path().stat().st_size < 10 * 2**20  # the package budget
    vit, identity = create_backbone("demo_vit_glyphs")
    assert identity.source == "bundled" and identity.fingerprint == card["weights"]["fingerprint"] == bundle.fingerprint
    assert identity.args == card["weights"]["args"] and vit.patch_embed.patch_size == (7, 7) and len(vit.blocks) == 6
    with safe_open(str(bundle.weights_path()), "pt") as fh:  # every stored tensor arrived, as fp16 values
        for key in fh.keys():
            assert torch.equal(vit.state_dict()[key], fh.get_tensor(key).float()), key
    # the random counterpart has the same shape, other weights, and says it is random
    rand, rand_id = create_backbone("demo_vit_random")
    assert rand_id.source == "random" and rand_id.fingerprint != identity.fingerprint
    assert {k: v.shape for k, v in rand.state_dict().items()} == {k: v.shape for k, v in vit.state_dict().items()}


def test_shipped_backbone_refuses_other_shapes_and_a_damaged_file(tmp_path, monkeypatch):
    from lpt.model import bundled

    with pytest.raises(BackboneError, match=r"'demo_vit_glyphs' is fixed at .*patch_size': 4"):
        create_backbone("demo_vit_glyphs", patch_size=4)
    vit, _ = create_backbone("demo_vit_glyphs", img_size=28, drop_path_rate=0.0)  # consistent arguments are fine
    state = {k: v.half().clone() for k, v in vit.state_dict().items()}
    state["cls_token"] += 1.0
    weights = tmp_path / "weights" / "demo_vit_glyphs.safetensors"
    weights.parent.mkdir()
    save_file(state, weights)
    monkeypatch.setattr(bundled.resources, "files", lambda package: tmp_path)
    with pytest.raises(BackboneError, match="fingerprint .* its card says 2bb8a3b2cbde7f79; the file is damaged"):
        create_backbone("demo_vit_glyphs")
    weights.unlink()
    with pytest.raises(BackboneError, match="missing from the lpt installation"):
        create_backbone("demo_vit_glyphs")
