"""Prompted forward equals timm's forward and the straightforward token-concatenation forward."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from lpt.model import LPT
from lpt.model.prompted_vit import deep_prompt_blocks, embed, pooled_feature, shallow_prompt_forward

VARIANTS = {
    "plain": {},
    "deit3_layerscale": {"no_embed_class": True, "init_values": 0.1},
    "qk_norm": {"qk_norm": True},
    "reg_tokens": {"reg_tokens": 2},
}


def tiny_vit(seed=0, **kwargs):
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=0, **kwargs)
    # Nonzero, non-trivial weights everywhere (timm zero-inits some biases and the class token).
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return vit.eval()


def concat_blocks(vit, x, prompts):
    """Reference: prompts as ordinary tokens through each timm block, outputs dropped."""
    n = x.shape[1]
    for i, p in enumerate(prompts):
        p = p if p.ndim == 3 else p[None].expand(x.shape[0], -1, -1)
        x = vit.blocks[i](torch.cat([x, p], dim=1))[:, :n]
    return x


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_length_prompt_equals_timm(variant):
    vit = tiny_vit(**VARIANTS[variant])
    images = torch.randn(3, 3, 16, 16)
    prompts = torch.zeros(4, 0, 32)
    ours = pooled_feature(vit, deep_prompt_blocks(vit, embed(vit, images), prompts))
    theirs = vit.forward_head(vit.forward_features(images), pre_logits=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_only_prompts_equal_token_concatenation(variant):
    vit = tiny_vit(**VARIANTS[variant])
    images = torch.randn(3, 3, 16, 16)
    prompts = torch.randn(4, 5, 32)
    x = embed(vit, images)
    torch.testing.assert_close(deep_prompt_blocks(vit, x, prompts), concat_blocks(vit, x, prompts), atol=1e-5,
                               rtol=1e-5)
    per_image = torch.randn(3, 4, 5, 32)
    torch.testing.assert_close(deep_prompt_blocks(vit, x, per_image),
                               concat_blocks(vit, x, per_image.unbind(1)), atol=1e-5, rtol=1e-5)


def test_prompts_change_the_output():
    vit = tiny_vit()
    x = embed(vit, torch.randn(2, 3, 16, 16))
    assert not torch.allclose(deep_prompt_blocks(vit, x, torch.randn(4, 5, 32)),
                              deep_prompt_blocks(vit, x, torch.zeros(4, 0, 32)), atol=1e-3)


def test_shallow_prompt_with_no_tokens_equals_timm():
    vit = tiny_vit(reg_tokens=2)
    images = torch.randn(2, 3, 16, 16)
    theirs = vit.forward_head(vit.forward_features(images), pre_logits=True)
    torch.testing.assert_close(shallow_prompt_forward(vit, images, torch.zeros(0, 32)), theirs, atol=1e-5, rtol=1e-5)


def make_lpt(phase=2, **kwargs):
    model = LPT(tiny_vit(**kwargs), num_classes=7, prompt_len=3, pool_size=5, split_block=2, top_k=2).eval()
    model.set_phase(phase)
    return model


def reference_phase2_logits(model, images):
    """Independent phase 2: a separate query pass, then all L blocks recomputed with token concatenation."""
    vit, k = model.backbone, model.split_block
    x = embed(vit, images)
    q = pooled_feature(vit, concat_blocks(vit, x, list(model.shared_prompt)))
    sim = torch.nn.functional.cosine_similarity(q[:, None], model.pool.keys[None], dim=-1)
    groups = sim.argsort(dim=1, descending=True)[:, : model.pool.top_k]
    group_prompt = model.pool.prompts[groups].mean(1)  # [B, L-K, P, D]
    prompts = [u for u in model.shared_prompt[:k]]
    prompts += [torch.cat([model.shared_prompt[k + i][None].expand(len(images), -1, -1), group_prompt[:, i]], 1)
                for i in range(len(vit.blocks) - k)]
    feature = pooled_feature(vit, concat_blocks(vit, x, prompts))
    return model.head(feature), groups


@pytest.mark.parametrize("variant", ["plain", "qk_norm"])
def test_phase2_with_reuse_equals_recomputing_all_blocks(variant):
    model = make_lpt(**VARIANTS[variant])
    images = torch.randn(6, 3, 16, 16)
    logits, groups = reference_phase2_logits(model, images)
    torch.testing.assert_close(model(images), logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.match(images), groups)
    assert model(images).shape == (6, 7) and model.query(images).shape == (6, 32)


def test_compiled_forwards_equal_eager_ones():
    model = make_lpt()
    with torch.no_grad():  # randomise the prompts and keys so that groups differ between images
        for p in (model.shared_prompt, model.pool.prompts, model.pool.keys):
            p.normal_()
    images = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        eager = model.forward_train(images)
        model.compile_forwards()
        compiled = model.forward_train(images)
    assert hasattr(model.forward_train, "_torchdynamo_orig_callable")
    torch.testing.assert_close(compiled["logits"], eager["logits"], atol=1e-5, rtol=1e-5)
    assert torch.equal(compiled["groups"], eager["groups"])


def test_match_is_sorted_most_similar_first():
    model = make_lpt()
    images = torch.randn(8, 3, 16, 16)
    q = torch.nn.functional.normalize(model.query(images), dim=-1)
    keys = torch.nn.functional.normalize(model.pool.keys, dim=-1)
    sims = (q @ keys.t()).gather(1, model.match(images))
    assert bool((sims[:, 0] >= sims[:, 1]).all())


def test_cosine_logits_are_bounded():
    logits = make_lpt(phase=1)(torch.randn(4, 3, 16, 16))
    assert logits.abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize("phase", [1, 2])
def test_gradients_reach_only_prompts_keys_and_classifier(phase):
    model = make_lpt(phase=phase).train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trained = {k: v.clone() for k, v in model.trained_tensors().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model.forward_train(torch.randn(4, 3, 16, 16))
    loss = out["logits"].sum() + (out["key_sim"].sum() if phase == 2 else 0)
    loss.backward()
    opt.step()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    expected = {"head.weight", "shared_prompt"} if phase == 1 else {"head.weight", "pool.prompts", "pool.keys"}
    assert with_grad == expected
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    changed = {k for k, v in model.trained_tensors().items() if not torch.equal(v, trained[k])}
    assert changed == expected


# ----------------------------------------------------------------------------- foundation towers through timm

FOUNDATION = {  # timm name -> small random architecture of the same family
    "vit_base_patch16_clip_224.openai": {"img_size": 32, "patch_size": 8},  # pre-norm, class token, projection head
    "vit_small_patch14_reg4_dinov2.lvd142m": {"img_size": 28, "patch_size": 14},  # registers, LayerScale
    "vit_base_patch16_siglip_224.v2_webli": {"img_size": 32, "patch_size": 8},  # no class token, attention pooling
}


@pytest.mark.parametrize("name", FOUNDATION)
def test_zero_length_prompts_reproduce_foundation_towers(name):
    from lpt.model import create_backbone

    torch.manual_seed(0)
    vit, _ = create_backbone(name, pretrained=False, keep_head=True, embed_dim=32, depth=2, num_heads=2,
                             **FOUNDATION[name])
    with torch.no_grad():  # nonzero weights everywhere (LayerScale starts at 1e-5, timm zero-inits some biases)
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    images = torch.randn(3, 3, vit.patch_embed.img_size[0], vit.patch_embed.img_size[1])
    x = deep_prompt_blocks(vit, embed(vit, images), torch.zeros(2, 0, 32))
    with torch.no_grad():
        torch.testing.assert_close(pooled_feature(vit, x), vit.forward_head(vit.forward_features(images),
                                                                            pre_logits=True), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled_feature(vit, x, project=True), vit(images), atol=1e-5, rtol=1e-5)
    lpt = LPT(vit, num_classes=5, prompt_len=3, pool_size=4, split_block=1, top_k=2).eval()
    lpt.set_phase(2)
    assert lpt(images).shape == (3, 5)


@pytest.mark.parametrize("name, message", [
    ("eva02_tiny_patch14_224.mim_in22k", "expected a timm VisionTransformer, got Eva"),
    ("vit_small_patch16_18x2_224", "block 0 is ParallelThingsBlock"),
])
def test_towers_with_other_blocks_are_refused_in_one_line(name, message):
    from lpt.model import BackboneError, create_backbone

    with pytest.raises(BackboneError, match=message) as exc:
        create_backbone(name, pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    assert "\n" not in str(exc.value)
