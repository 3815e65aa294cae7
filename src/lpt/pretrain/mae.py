"""Masked-autoencoder pretraining of a timm ViT encoder.

He et al., "Masked Autoencoders Are Scalable Vision Learners" (CVPR 2022): the encoder sees only a
random 25 % of each image's patches; a small transformer decoder gets the encoded visible patches
plus a shared mask token at every masked position, with its own position embeddings, and predicts
the pixels of every patch; the loss is the mean squared error on the masked patches only, against
targets normalised per patch.

The encoder is an unchanged timm ``VisionTransformer``; the forward here calls its own submodules
(``patch_embed``, ``pos_drop``, ``patch_drop``, ``norm_pre``, ``blocks``, ``norm``), so its state dict
keeps timm's key names and loads into ``timm.create_model`` as is.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, VisionTransformer


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings, as in MAE.

    Args:
        dim: embedding width, a multiple of 4 (half encodes rows, half columns).
        grid: (rows, columns) of the patch grid.

    Returns:
        [rows * columns, dim] in row-major patch order.
    """
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (cols.reshape(-1), rows.reshape(-1)):  # MAE's order: width half first
        angles = coord[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images into non-overlapping square patches, in the patch embedding's row-major order.

    Args:
        images: [B, C, H, W], H and W multiples of ``patch``.
        patch: patch side in pixels.

    Returns:
        [B, (H / patch) * (W / patch), patch * patch * C].
    """
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Patches each image keeps: round(N * (1 - ratio))."""
    return round(num_patches * (1.0 - mask_ratio))


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of round(N * (1 - ratio)) tokens per image (MAE's per-sample shuffle).

    Args:
        x: tokens [B, N, D].
        mask_ratio: fraction of tokens to drop, in [0, 1).
        noise: [B, N] scores; the lowest are kept. Default: uniform random.

    Returns:
        kept tokens [B, keep, D] (in ascending-noise order), mask [B, N] (1 = masked, 0 = kept) and
        ids_restore [B, N], the permutation that puts the shuffled sequence back in patch order.
    """
    b, n, d = x.shape
    keep = num_visible(n, mask_ratio)
    if noise is None:
        noise = torch.rand(b, n, device=x.device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = x.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
    mask = torch.ones(b, n, device=x.device)  # float32 even under autocast: its sum counts patches exactly
    mask[:, :keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Mean squared error over the masked patches only.

    Args:
        pred: predicted pixels [B, N, P].
        target: true pixels [B, N, P].
        mask: [B, N], 1 where the patch was masked; visible patches do not count.
        norm_pix: normalise each target patch by its own mean and (unbiased) variance, as in MAE.
        eps: added to the variance.

    Returns:
        scalar: sum over masked patches of the per-patch mean squared error, divided by their number.
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def _check_encoder(encoder: VisionTransformer) -> None:
    pe = encoder.patch_embed
    if encoder.pos_embed is None or getattr(encoder, "dynamic_img_size", False) or not getattr(pe, "flatten", True):
        raise ValueError("MAE needs a ViT with absolute position embeddings and a fixed image size")
    if pe.patch_size[0] != pe.patch_size[1]:
        raise ValueError(f"MAE here needs square patches, got {pe.patch_size}")


class MaskedAutoencoder(nn.Module):
    """A timm ViT encoder on visible patches and a small transformer decoder that rebuilds the rest.

    Args:
        encoder: timm ``VisionTransformer`` (headless); its patch-position embeddings are reset to
            fixed 2-D sine-cosine values (MAE's initialisation) and stay trainable.
        mask_ratio: fraction of patches masked per image (MAE: 0.75).
        decoder_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_heads: decoder attention heads.
        norm_pix_loss: per-patch normalised pixel targets (MAE's default).
    """

    def __init__(self, encoder: VisionTransformer, mask_ratio: float = 0.75, decoder_dim: int = 128,
                 decoder_depth: int = 4, decoder_heads: int = 4, norm_pix_loss: bool = True):
        super().__init__()
        _check_encoder(encoder)
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        pe = encoder.patch_embed
        self.patch = pe.patch_size[0]
        # Tokens before the patches (class, registers) and how many of them carry a position embedding.
        self.num_prefix = encoder.num_prefix_tokens
        self.num_prefix_pos = 0 if encoder.no_embed_class else self.num_prefix
        with torch.no_grad():
            encoder.pos_embed[:, self.num_prefix_pos:] = sincos_pos_embed(encoder.embed_dim, pe.grid_size)

        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(decoder_dim, pe.grid_size)[None], persistent=False)
        self.decoder_blocks = nn.Sequential(*[
            Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm)
            for _ in range(decoder_depth)
        ])
        self.decoder_norm = norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * pe.proj.in_channels)
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("encoder."):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _prefix_tokens(self, batch: int) -> torch.Tensor:
        enc = self.encoder
        tokens = [t.expand(batch, -1, -1) for t in (enc.cls_token, enc.reg_token) if t is not None]
        prefix = torch.cat(tokens, dim=1) if tokens else enc.pos_embed.new_zeros(batch, 0, enc.embed_dim)
        return prefix + enc.pos_embed[:, : self.num_prefix_pos]

    def encode(self, images: torch.Tensor, noise: torch.Tensor | None = None):
        """Encode the visible patches.

        Args:
            images: [B, C, H, W].
            noise: optional [B, N] masking scores (see :func:`random_masking`).

        Returns:
            latent [B, prefix + keep, D] after the encoder's final norm, mask [B, N], ids_restore [B, N].
        """
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed[:, self.num_prefix_pos:]
        x, mask, ids_restore = random_masking(x, self.mask_ratio, noise)
        x = torch.cat([self._prefix_tokens(x.shape[0]), x], dim=1)
        x = enc.norm_pre(enc.patch_drop(enc.pos_drop(x)))
        return enc.norm(enc.blocks(x)), mask, ids_restore

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch's pixels [B, N, patch * patch * C] from the visible latents."""
        x = self.decoder_embed(latent)
        prefix, visible = x[:, : self.num_prefix], x[:, self.num_prefix:]
        b, n = ids_restore.shape
        fill = self.mask_token.to(visible.dtype).expand(b, n - visible.shape[1], -1)
        full = torch.cat([visible, fill], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([prefix, full + self.decoder_pos_embed], dim=1)  # prefix tokens: no decoder position
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, self.num_prefix:])

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Returns ``loss`` (masked-patch MSE), ``pred`` [B, N, P], ``target`` [B, N, P] and ``mask`` [B, N]."""
        latent, mask, ids_restore = self.encode(images, noise)
        pred = self.decode(latent, ids_restore)
        target = patchify(images, self.patch)
        return {"loss": masked_patch_loss(pred, target, mask, self.norm_pix_loss), "pred": pred,
                "target": target, "mask": mask}
