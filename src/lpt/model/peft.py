"""Parameter-efficient modules on a timm ViT, in the forms of LIFT (Shi et al., ICML 2024; shijxcs/LIFT
``models/peft_modules.py`` and ``peft_vit.py``), trainable alone or beside LPT's prompts.

They are put *into* the backbone's blocks, so that every forward that calls the blocks' own
submodules (``lpt.model.prompted_vit``) computes with them, prompts included:

- ``lora``: a low-rank update of the query and value rows of ``attn.qkv``, ``q += s * x A_q B_q``
  (``s = 1 / rank``, A Kaiming-uniform, B zero). It is part of the projection's ``weight``, which
  the prompts' keys and values are computed with, so prompted attention stays the concatenated-token
  definition.
- ``ssf``: scale and shift (``y * gamma + beta``) after ``attn.qkv``, ``attn.proj``, ``mlp.fc1``,
  ``mlp.fc2``, ``norm1`` and ``norm2``; on a linear layer it is folded into its weight and bias.
- ``adapter``: a sequential bottleneck ``y + up(relu(down(ln(y))))`` on the MLP's output ``y``.
- ``adaptformer``: a bottleneck parallel to the MLP, ``scale * up(relu(down(ln(x))))`` on the
  block's residual input ``x``, added to the block's output; ``scale`` is learned.
- ``bitfit`` (every bias of the blocks) and ``ln`` (every LayerNorm of the blocks) train existing
  tensors.
- ``aft``, LIFT+'s arbitrary fine-tuning (shijxcs/LIFT-plus@ea555ea models/models.py:39-45, 86-91, 163-168,
  280-284; models/modules.py:92-110): a fixed random share of the entries of the weights and biases of
  ``attn.qkv``/``attn.proj`` (``attn``), ``mlp.fc1``/``mlp.fc2`` (``mlp``) or all four (``all``) trains; the
  others stay frozen. Only the chosen entries are parameters (and saved); the mask is rebuilt from its seed.

Bottleneck modules start with a zero up-projection and LoRA with a zero B, so the model starts as
the frozen backbone; SSF starts at LIFT's ``gamma ~ N(1, 0.02)``, ``beta ~ N(0, 0.02)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer


AFT_LINEARS = {"attn": (("attn", "qkv"), ("attn", "proj")), "mlp": (("mlp", "fc1"), ("mlp", "fc2"))}
AFT_LINEARS["all"] = AFT_LINEARS["attn"] + AFT_LINEARS["mlp"]
AFT_PER_BLOCK = {"attn": (4, 4), "mlp": (8, 5), "all": (12, 9)}  # (a, b): a block's tensors there hold ~ D (a D + b)


def aft_ratio(num_classes: int, depth: int, dim: int, loc: str) -> float:
    """LIFT+'s default share of AFT (shijxcs/LIFT-plus@ea555ea trainer.py:313-321): ``C / (L (a D + b))``, so that
    about ``C * D`` entries train, as many as a classifier has; at most 1."""
    a, b = AFT_PER_BLOCK[loc]
    return min(1.0, num_classes / (depth * (dim * a + b)))


def random_mask(shape: torch.Size, ratio: float, seed: int) -> torch.Tensor:
    """LIFT+'s ``generate_mask``: the first ``int(n * ratio)`` positions of ``torch.randperm(n)`` on a generator
    seeded with ``seed`` (the same for every tensor, so tensors of one shape share their pattern), as a bool mask."""
    n = math.prod(shape)
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: int(n * ratio)]
    return torch.zeros(n, dtype=torch.bool).index_fill_(0, chosen, True).view(shape)


class SparseTunedLinear(nn.Module):
    """A frozen ``nn.Linear`` whose entries under a fixed random mask train (AFT): ``aft_weight`` and ``aft_bias``
    hold the chosen entries (in row-major order), starting at the pretrained values, and ``weight`` / ``bias``
    are the base's with them scattered in (LIFT+'s ``MaskedParameter``: weight decay acts on the entries)."""

    def __init__(self, base: nn.Linear, ratio: float, seed: int):
        super().__init__()
        self.base = base
        self.register_buffer("weight_mask", random_mask(base.weight.shape, ratio, seed), persistent=False)
        self.aft_weight = nn.Parameter(base.weight.detach()[self.weight_mask].clone())
        if base.bias is not None:
            self.register_buffer("bias_mask", random_mask(base.bias.shape, ratio, seed), persistent=False)
            self.aft_bias = nn.Parameter(base.bias.detach()[self.bias_mask].clone())

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight.masked_scatter(self.weight_mask, self.aft_weight)

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.base.bias is None else self.base.bias.masked_scatter(self.bias_mask, self.aft_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def bottleneck_dim(num_classes: int, depth: int) -> int:
    """LIFT's default bottleneck (adapters) and rank (LoRA): ``2 ** max(0, int(log2(C / (2 L))))``."""
    return 2 ** max(0, int(math.log2(num_classes / (depth * 2))))


class SSF(nn.Module):
    """Per-channel scale and shift, ``x * gamma + beta``."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim).normal_(1.0, 0.02))
        self.shift = nn.Parameter(torch.empty(dim).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class TunedLinear(nn.Module):
    """A frozen ``nn.Linear`` with LoRA on some output rows and/or SSF after it, as one affine map.

    ``weight`` and ``bias`` are the tuned projection's (read by code that applies part of the rows,
    as the prompts' keys and values do); ``forward`` is ``F.linear`` with them.
    """

    def __init__(self, base: nn.Linear, lora_rows: list[slice] | None = None, rank: int = 0, ssf: bool = False):
        super().__init__()
        self.base = base
        self.lora_rows = lora_rows or []
        if self.lora_rows:
            self.lora_a = nn.ParameterList(
                [nn.init.kaiming_uniform_(nn.Parameter(torch.empty(base.in_features, rank)), a=math.sqrt(5))
                 for _ in self.lora_rows])
            self.lora_b = nn.ParameterList([nn.Parameter(torch.zeros(rank, s.stop - s.start)) for s in self.lora_rows])
            self.scaling = 1.0 / rank
        self.ssf = SSF(base.out_features) if ssf else None

    @property
    def weight(self) -> torch.Tensor:
        w = self.base.weight
        if self.lora_rows:
            delta = torch.zeros_like(w)
            for rows, a, b in zip(self.lora_rows, self.lora_a, self.lora_b):
                delta[rows] = self.scaling * (a @ b).t()
            w = w + delta
        return w if self.ssf is None else w * self.ssf.scale[:, None]

    @property
    def bias(self) -> torch.Tensor | None:
        b = self.base.bias
        if self.ssf is None:
            return b
        return self.ssf.shift if b is None else b * self.ssf.scale + self.ssf.shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Bottleneck(nn.Module):
    """LIFT's adapter body, ``up(relu(down(ln(x))))`` (times a learned ``scale`` for AdaptFormer), with a zero
    up-projection so that it starts at 0."""

    def __init__(self, dim: int, bottleneck: int, learned_scale: bool):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        for tensor in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(tensor)
        self.scale = nn.Parameter(torch.ones(1)) if learned_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(F.relu(self.down(self.ln(x))))
        return out if self.scale is None else out * self.scale


class SequentialAdapter(nn.Module):
    """The block's MLP followed by an adapter on its output: ``y + adapter(y)``."""

    def __init__(self, mlp: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.mlp, self.adapter = mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        return y + self.adapter(y)


class ScaledShifted(nn.Module):
    """A norm layer followed by SSF."""

    def __init__(self, norm: nn.Module, dim: int):
        super().__init__()
        self.norm, self.ssf = norm, SSF(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ssf(self.norm(x))


def add_peft(vit: VisionTransformer, modules: list[str], dim: int, aft: tuple[float, str, int] = (0.0, "all", 0)
             ) -> list[str]:
    """Put ``modules`` (names of ``lpt.config.PEFT``) into every block of ``vit`` with bottleneck / rank ``dim``
    (and AFT's ``(ratio, location, seed)``); return the names (in ``vit.state_dict()``) of the tensors they train."""
    width = vit.embed_dim
    for block in vit.blocks:
        if "aft" in modules:
            ratio, loc, seed = aft
            for parent, name in AFT_LINEARS[loc]:
                owner = getattr(block, parent)
                setattr(owner, name, SparseTunedLinear(getattr(owner, name), ratio, seed))
        attn, mlp = block.attn, block.mlp
        if "lora" in modules or "ssf" in modules:
            lora = [slice(0, width), slice(2 * width, 3 * width)] if "lora" in modules else None
            attn.qkv = TunedLinear(attn.qkv, lora, dim, ssf="ssf" in modules)
        if "ssf" in modules:
            attn.proj, mlp.fc1, mlp.fc2 = (TunedLinear(m, ssf=True) for m in (attn.proj, mlp.fc1, mlp.fc2))
            block.norm1, block.norm2 = ScaledShifted(block.norm1, width), ScaledShifted(block.norm2, width)
        if "adapter" in modules:
            block.mlp = SequentialAdapter(block.mlp, Bottleneck(width, dim, learned_scale=False))
        if "adaptformer" in modules:
            block.adaptformer = Bottleneck(width, dim, learned_scale=True)
    return [name for name, _ in vit.named_parameters() if _is_tuned(name, modules)]


# the PEFT module a parameter belongs to, by the name parts add_peft gives its own tensors
MODULE_PARTS = (("lora", ("lora_a", "lora_b")), ("ssf", ("ssf",)), ("adaptformer", ("adaptformer",)),
                ("adapter", ("adapter",)), ("aft", ("aft_weight", "aft_bias")))


def peft_part(name: str) -> str | None:
    """The PEFT module (lora, ssf, adaptformer, adapter) whose own tensor ``name`` is; None for the ViT's own."""
    parts = name.split(".")
    return next((module for module, keys in MODULE_PARTS if any(k in parts for k in keys)), None)


def _is_tuned(name: str, modules: list[str]) -> bool:
    """Whether a parameter of the tuned ViT trains: a PEFT module's own, or an existing bias / LayerNorm
    tensor of a block under ``bitfit`` / ``ln``."""
    if peft_part(name) is not None:
        return True
    parts = name.split(".")
    in_block = parts[0] == "blocks"
    if "bitfit" in modules and in_block and parts[-1] == "bias":
        return True
    return "ln" in modules and in_block and any(p.startswith("norm") for p in parts[2:-1])
