"""PEFT modules (lpt.model.peft) against independent references: merged LoRA weights, hand-written block
forwards, SSF's affine formula, identity at initialisation, and gradients only where they should go."""

import json

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import lpt
from lpt.config import ConfigError, load_config
from lpt.methods import check_config
from lpt.model import LPT
from lpt.model.peft import add_peft, aft_ratio, bottleneck_dim, random_mask
from lpt.model.prompted_vit import block_forward, deep_prompt_blocks, embed, plain_blocks, pooled_feature
from lpt.run.load import evaluate_run
from tests.conftest import tiny_run_overrides

pytestmark = pytest.mark.usefixtures("one_thread")
D = 32


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=D, depth=3, num_heads=2, num_classes=0)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return vit.eval()


def perturb(module):
    """Move every PEFT tensor off its initial value (zero up-projections and LoRA B would hide bugs)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(k in name for k in ("lora_", "ssf", "adapter", "adaptformer")):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_lora_equals_the_block_with_merged_weights_and_prompts_see_it():
    vit, reference = tiny_vit(), tiny_vit()
    add_peft(vit, ["lora"], 4)
    perturb(vit)
    for block, ref in zip(vit.blocks, reference.blocks):
        qkv = block.attn.qkv
        delta = torch.zeros_like(ref.attn.qkv.weight)
        delta[:D] = (qkv.lora_a[0] @ qkv.lora_b[0]).t() / 4  # q rows: W + (1 / rank) (A B)^T
        delta[2 * D:] = (qkv.lora_a[1] @ qkv.lora_b[1]).t() / 4  # v rows; k rows unchanged
        with torch.no_grad():
            ref.attn.qkv.weight += delta
    x = embed(reference, torch.randn(2, 3, 16, 16))
    torch.testing.assert_close(plain_blocks(vit, x), reference.blocks(x), atol=1e-5, rtol=1e-5)
    prompts = torch.randn(3, 5, D)
    concatenated = x
    for i, block in enumerate(reference.blocks):  # prompts as ordinary tokens through timm's merged blocks
        concatenated = block(torch.cat([concatenated, prompts[i][None].expand(2, -1, -1)], dim=1))[:, :x.shape[1]]
    torch.testing.assert_close(deep_prompt_blocks(vit, x, prompts), concatenated, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["adapter", "adaptformer"])
def test_bottleneck_adapters_equal_a_hand_written_block(kind):
    vit = tiny_vit()
    add_peft(vit, [kind], 4)
    perturb(vit)
    block = vit.blocks[0]
    x = torch.randn(2, 17, D)

    def bottleneck(m, t):
        out = F.linear(F.relu(F.linear(F.layer_norm(t, (D,), m.ln.weight, m.ln.bias, m.ln.eps), m.down.weight,
                                       m.down.bias)), m.up.weight, m.up.bias)
        return out * m.scale if m.scale is not None else out

    with torch.no_grad():
        attn = block.attn
        qkv = F.linear(block.norm1(x), attn.qkv.weight, attn.qkv.bias)
        qkv = qkv.reshape(2, 17, 3, 2, D // 2).permute(2, 0, 3, 1, 4)
        weights = (qkv[0] @ qkv[1].transpose(-2, -1) / (D // 2) ** 0.5).softmax(-1)
        h = x + attn.proj((weights @ qkv[2]).transpose(1, 2).reshape(2, 17, D))
        if kind == "adapter":  # sequential, on the MLP's output
            mlp = block.mlp.mlp
            m = mlp(block.norm2(h))
            expected = h + m + bottleneck(block.mlp.adapter, m)
        else:  # parallel to the MLP, on the block's residual input, times a learned scale
            expected = h + block.mlp(block.norm2(h)) + bottleneck(block.adaptformer, h)
        torch.testing.assert_close(block_forward(block, x), expected, atol=1e-5, rtol=1e-5)


def test_ssf_is_its_affine_formula_on_linear_and_norm_layers():
    vit, reference = tiny_vit(), tiny_vit()
    add_peft(vit, ["ssf"], 4)
    block, ref = vit.blocks[1], reference.blocks[1]
    x = torch.randn(2, 17, D)
    for tuned, base in ((block.attn.qkv, ref.attn.qkv), (block.attn.proj, ref.attn.proj), (block.mlp.fc1, ref.mlp.fc1),
                        (block.mlp.fc2, ref.mlp.fc2), (block.norm1, ref.norm1), (block.norm2, ref.norm2)):
        t = x if tuned is not block.mlp.fc2 else torch.randn(2, 17, 4 * D)
        expected = base(t) * tuned.ssf.scale + tuned.ssf.shift
        torch.testing.assert_close(tuned(t), expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(block.attn.qkv.ssf.scale, torch.ones(3 * D))  # LIFT's N(1, 0.02) start


def test_every_module_at_identity_gives_the_frozen_backbones_features_exactly():
    vit, reference = tiny_vit(), tiny_vit()
    add_peft(vit, ["bitfit", "ln", "lora", "ssf", "adapter", "adaptformer"], 4)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith("ssf.scale"):
                p.fill_(1.0)
            elif name.endswith("ssf.shift"):
                p.zero_()
    images = torch.randn(2, 3, 16, 16)
    ours = pooled_feature(vit, plain_blocks(vit, embed(vit, images)))
    assert torch.equal(ours, pooled_feature(reference, plain_blocks(reference, embed(reference, images))))


def test_lift_bottleneck_rule():
    assert [bottleneck_dim(c, 12) for c in (10, 100, 365, 1000, 8142)] == [1, 4, 8, 32, 256]


@pytest.mark.parametrize("peft, trained", [
    (["lora"], {"lora_a", "lora_b"}),
    (["adaptformer"], {"adaptformer"}),
    (["bitfit"], {"bias"}),
    (["ln"], {"norm1", "norm2"}),
    (["ssf"], {"ssf"}),
    (["adapter"], {"adapter"}),
    (["aft"], {"aft_weight", "aft_bias"}),
])
def test_gradients_reach_only_the_chosen_module_prompts_and_head(peft, trained):
    model = LPT(tiny_vit(), num_classes=5, prompt_len=2, pool_size=4, split_block=1, top_k=2, peft=peft, peft_dim=4)
    model.set_phase(1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(torch.randn(4, 3, 16, 16)).logsumexp(1).sum()
    loss.backward()
    with torch.no_grad():
        for p in params:
            p -= p.grad if p.grad is not None else 0
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    backbone = {k for k in changed if k.startswith("backbone.")}
    assert changed - backbone == {"shared_prompt", "head.weight"}
    assert backbone and all(any(t in k.split(".") or k.endswith(t) for t in trained) for k in backbone)
    assert set(model.trained_tensors()) - {k for k in model.state_dict() if not k.startswith("backbone.")} \
        == {"backbone." + n for n in model.tuned}


def test_peft_settings_are_checked_before_any_data_loads():
    with pytest.raises(ConfigError, match="model.peft.*lorax"):
        load_config("demo", ["model.peft=[lorax]"])
    with pytest.raises(ConfigError, match="method 'peft' trains the modules of model.peft"):
        check_config(load_config("demo", ["method=peft", "phases=[phase1]", "model.prompt_len=0"]))
    with pytest.raises(ConfigError, match="features computed once: model.peft cannot train there"):
        check_config(load_config("demo", ["method=linear", "phases=[phase1]", "model.prompt_len=0",
                                          "model.peft=[lora]"]))


def test_a_peft_run_trains_its_modules_and_reloads_them(tiny_fmnist, tmp_path):
    overrides = [*tiny_run_overrides(tiny_fmnist), "method=peft", "phases=[phase1]", "model.prompt_len=0",
                 "model.peft=[lora, adaptformer]", "model.peft_dim=2"]
    cfg = load_config("demo", overrides)
    metrics = lpt.train(cfg, tmp_path / "run")
    assert evaluate_run(tmp_path / "run", device="cpu") == metrics
    reloaded = lpt.load_run(tmp_path / "run").model
    tuned = {k: v for k, v in reloaded.trained_tensors().items() if k.startswith("backbone.")}
    assert tuned and all("lora_" in k or "adaptformer" in k for k in tuned)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in tuned.items() if "lora_b" in k)  # it trained
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["method"] == "peft"
    # 3 blocks of width 32, rank / bottleneck 2: LoRA 2 x (32 x 2 + 2 x 32) a block; AdaptFormer LayerNorm 64,
    # down 32 x 2 + 2, up 2 x 32 + 32, scale 1 a block; cosine head 10 x 32
    assert run["phases"]["phase1"]["trainable_by_part"] == {"lora": 3 * 256, "adaptformer": 3 * 227, "head": 320}


# ----------------------------------------------------------------------------- LIFT+'s arbitrary fine-tuning


def test_aft_mask_is_the_published_seeded_draw():
    """LIFT+'s generate_mask: the first int(n * ratio) of torch.randperm(n) on a generator seeded with the seed."""
    mask = random_mask(torch.Size([6, 5]), 0.25, 7)
    chosen = torch.randperm(30, generator=torch.Generator().manual_seed(7))[:7]  # int(30 * 0.25) = 7
    assert mask.shape == (6, 5) and mask.sum() == 7 and set(mask.flatten().nonzero().flatten().tolist()) == set(
        chosen.tolist())
    assert torch.equal(random_mask(torch.Size([6, 5]), 0.25, 7), mask)
    assert not torch.equal(random_mask(torch.Size([6, 5]), 0.25, 8), mask)


def test_aft_default_ratio_is_liftplus_rule():
    # C / (L (a D + b)): all (12 D + 9), attn (4 D + 4), mlp (8 D + 5); capped at 1
    assert aft_ratio(10, 3, 32, "all") == 10 / (3 * 393)
    assert aft_ratio(10, 3, 32, "attn") == 10 / (3 * 132)
    assert aft_ratio(10, 3, 32, "mlp") == 10 / (3 * 261)
    assert aft_ratio(10**6, 3, 32, "all") == 1.0


def aft_model(loc="all", ratio=0.1):
    return LPT(tiny_vit(), num_classes=5, prompt_len=0, pool_size=4, split_block=1, top_k=2, peft=["aft"],
               aft=(ratio, loc, 3))


def test_aft_forward_is_the_vit_with_the_masked_entries_replaced():
    model, reference = aft_model(), tiny_vit()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "aft_" in name:
                p.add_(torch.randn(p.shape, generator=g))
        for block, ref in zip(model.backbone.blocks, reference.blocks):
            for tuned, dense in ((block.attn.qkv, ref.attn.qkv), (block.attn.proj, ref.attn.proj),
                                 (block.mlp.fc1, ref.mlp.fc1), (block.mlp.fc2, ref.mlp.fc2)):
                dense.weight[tuned.weight_mask] = tuned.aft_weight
                dense.bias[tuned.bias_mask] = tuned.aft_bias
    x = embed(reference, torch.randn(2, 3, 16, 16))
    torch.testing.assert_close(plain_blocks(model.backbone, x), reference.blocks(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loc, linears", [("attn", ("attn.qkv", "attn.proj")), ("mlp", ("mlp.fc1", "mlp.fc2")),
                                          ("all", ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))])
def test_aft_step_changes_only_the_masked_entries(loc, linears):
    """One SGD step with momentum and weight decay on every trainable tensor: of the backbone, only the masked
    entries of the chosen layers' weights and biases move; their gradient is the dense weight's at those entries."""
    model = aft_model(loc)
    model.set_phase(1)
    frozen = {k: v.clone() for k, v in tiny_vit().state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.01)
    images = torch.randn(4, 3, 16, 16)
    model(images).logsumexp(1).sum().backward()
    optimizer.step()
    n_moved = 0
    for name, before in frozen.items():
        path, _, attr = name.rpartition(".")
        owner = model.backbone.get_submodule(path)
        after = getattr(owner, attr).detach()
        if path.split(".", 2)[-1] in linears:
            mask = getattr(owner, f"{attr}_mask")
            assert torch.equal(after[~mask], before[~mask]), name
            n_moved += int((after[mask] != before[mask]).sum())
        else:
            assert torch.equal(after, before), name
    assert n_moved > 0
    assert set(model.trainable_by_part()) == {"aft", "head"}


def test_aft_gradient_is_the_dense_weights_gradient_at_the_mask():
    model, dense = aft_model("mlp"), LPT(tiny_vit(), num_classes=5, prompt_len=0, pool_size=4, split_block=1)
    dense.head.load_state_dict(model.head.state_dict())
    dense.backbone.requires_grad_(True)
    images = torch.randn(4, 3, 16, 16)
    for m in (model, dense):
        m.eval()
        m(images).logsumexp(1).sum().backward()
    tuned, reference = model.backbone.blocks[1].mlp.fc1, dense.backbone.blocks[1].mlp.fc1
    torch.testing.assert_close(tuned.aft_weight.grad, reference.weight.grad[tuned.weight_mask], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tuned.aft_bias.grad, reference.bias.grad[tuned.bias_mask], atol=1e-6, rtol=1e-5)


def test_an_aft_run_saves_only_the_masked_entries_and_reloads_them(tiny_fmnist, tmp_path):
    from safetensors.torch import load_file

    overrides = [*tiny_run_overrides(tiny_fmnist), "method=peft", "phases=[phase1]", "model.prompt_len=0",
                 "model.peft=[aft]", "model.aft_loc=mlp", "model.aft_ratio=0.02", "model.aft_seed=5"]
    metrics = lpt.train(load_config("demo", overrides), tmp_path / "run")
    saved = load_file(tmp_path / "run" / "model.safetensors")
    backbone = {k: v for k, v in saved.items() if k.startswith("backbone.")}
    assert backbone and all(k.rsplit(".", 1)[1] in ("aft_weight", "aft_bias") and ".mlp." in k for k in backbone)
    run = lpt.load_run(tmp_path / "run")
    vit = run.model.backbone
    # every block's fc1 (4D x D, 4D) and fc2 (D x 4D, D) keep int(n * 0.02) entries each
    counts = [int(n * 0.02) for m in (vit.blocks[0].mlp.fc1, vit.blocks[0].mlp.fc2) for n in
              (m.base.weight.numel(), m.base.bias.numel())]
    assert sum(v.numel() for v in backbone.values()) == len(vit.blocks) * sum(counts)
    assert evaluate_run(tmp_path / "run", device="cpu") == metrics
    moved = vit.blocks[0].mlp.fc1.weight[vit.blocks[0].mlp.fc1.weight_mask] != vit.blocks[0].mlp.fc1.base.weight[
        vit.blocks[0].mlp.fc1.weight_mask]
    assert moved.any()  # it trained; the masked entries the run saved are the ones it loads
    with pytest.raises(ConfigError, match="aft trains entries of the weights that lora"):
        load_config("demo", ["model.peft=[aft, lora]"])
    with pytest.raises(ConfigError, match="0 <= aft_ratio <= 1"):
        load_config("demo", ["model.peft=[aft]", "model.aft_ratio=1.5"])


def initialised_head_and_features(root, tmp_path, head_init):
    """The classifier a run starts from (one epoch at lr 1e-12 leaves it as initialised) and, by hand, the
    plain ViT features and labels of its training images (evaluation transform)."""
    from lpt.data import build_datasets, build_transform, with_transform
    from lpt.evaluation import evaluate, source_features
    from lpt.run.load import build_run_model

    cfg = load_config("demo", [*tiny_run_overrides(root), f"model.head_init={head_init}", "phases=[phase1]",
                               "phase1.epochs=1", "phase1.lr=1e-12", "model.feature_dropout=0"])
    lpt.train(cfg, tmp_path / "run")
    head = lpt.load_run(tmp_path / "run").model.head.weight
    model, _ = build_run_model(cfg, 10)
    out = evaluate(model, with_transform(build_datasets(cfg.data).train, build_transform(cfg.data, train=False)),
                   source_features(model, ["plain"]), device=torch.device("cpu"), progress=False)
    return head, out["plain"], out["labels"]


def test_class_mean_head_init_is_each_class_mean_training_feature_normalised(tiny_fmnist, tmp_path):
    head, features, labels = initialised_head_and_features(tiny_fmnist, tmp_path, "class_mean")
    expected = torch.stack([torch.from_numpy(features[labels == c].mean(0)) for c in range(10)])
    torch.testing.assert_close(head, F.normalize(expected, dim=1), atol=1e-6, rtol=1e-5)


def test_linear_probe_head_init_is_scikit_learns_balanced_logistic_regression(tiny_fmnist, tmp_path):
    from sklearn.linear_model import LogisticRegression

    head, features, labels = initialised_head_and_features(tiny_fmnist, tmp_path, "linear_probe")
    clf = LogisticRegression(max_iter=100, class_weight="balanced").fit(features, labels)
    torch.testing.assert_close(head, F.normalize(torch.from_numpy(clf.coef_).float(), dim=1), atol=1e-5, rtol=1e-4)
