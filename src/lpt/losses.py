"""Classification losses on cosine logits: label-smoothed CE, GCL and asymmetric GCL (A-GCL).

GCL is the Gaussian clouded logit of Li et al. (CVPR 2022); A-GCL is LPT's variant (Dong et al.,
ICLR 2023, Sec. 3.3) that replaces cross-entropy by the asymmetric focusing of ASL with label
smoothing. All losses take cosine logits in [-1, 1] and apply the scale themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def smoothed_targets(targets: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """One-hot targets with label smoothing: 1 - eps + eps/C at the true class, eps/C elsewhere."""
    onehot = F.one_hot(targets, num_classes).float()
    return onehot * (1.0 - eps) + eps / num_classes


class CosineCE(nn.Module):
    """Cross-entropy with label smoothing on scaled cosine logits.

    Args:
        scale: multiplier applied to the cosine logits (the softmax temperature's inverse).
        label_smoothing: eps of label smoothing.
    """

    def __init__(self, scale: float = 20.0, label_smoothing: float = 0.1):
        super().__init__()
        self.scale = scale
        self.label_smoothing = label_smoothing

    def forward(self, cosine: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.scale * cosine, targets, label_smoothing=self.label_smoothing)


class GCL(nn.Module):
    """Gaussian clouded logit loss: cross-entropy on logits perturbed by class-size-dependent noise.

    ``v_i = s_i - noise_mul * delta_i * m_i / max(m)`` with ``m_i = log(n_max) - log(n_i)`` and
    ``delta ~ |N(0, 1/3)|`` clamped to [0, 1]; the true class then loses ``margin`` and the
    result is multiplied by ``scale``. Noise is off in ``eval()`` mode or when ``noise_mul == 0``.
    When every class has the same count, ``m`` is all zeros and so is the noise (the published
    code divides 0 by 0 there).

    Args:
        class_counts: training images per class, length C.
        margin: subtracted from the true-class cosine.
        scale: multiplier of the perturbed cosines.
        noise_mul: strength of the Gaussian cloud.
        label_smoothing: eps of label smoothing.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        margin: float = 0.1,
        scale: float = 20.0,
        noise_mul: float = 0.5,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if counts.ndim != 1 or counts.numel() < 2 or bool((counts <= 0).any()):
            raise ValueError(f"class_counts must be a 1-D list of at least 2 positive counts, got {class_counts}")
        m = counts.max().log() - counts.log()
        m_max = m.max()
        self.register_buffer("cloud", (m / m_max if m_max > 0 else torch.zeros_like(m)).float(), persistent=False)
        self.margin = margin
        self.scale = scale
        self.noise_mul = noise_mul
        self.label_smoothing = label_smoothing

    def sample_delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """|N(0, 1/3)| clamped to [0, 1], one draw per logit."""
        return (torch.randn(shape, device=device) / 3.0).clamp(-1.0, 1.0).abs()

    def scaled_logits(self, cosine: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Perturbed, margin-adjusted and scaled logits ``[B, C]``."""
        cosine = cosine.float()
        if self.training and self.noise_mul > 0:
            cosine = cosine - self.noise_mul * self.sample_delta(cosine.shape, cosine.device) * self.cloud
        margin = F.one_hot(targets, cosine.shape[1]).to(cosine.dtype) * self.margin
        return self.scale * (cosine - margin)

    def forward(self, cosine: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.scaled_logits(cosine, targets), targets, label_smoothing=self.label_smoothing)


class AGCL(GCL):
    """Asymmetric GCL: GCL logits with asymmetric focusing and label smoothing.

    ``loss = -sum_i y_i * w_i * log p_i`` with ``p = softmax(v)``, smoothed targets ``y`` and
    ``w = (1 - p)^gamma_pos`` at the true class, ``p^gamma_neg`` elsewhere. As in the published
    code, the focusing weights carry gradient. Mean over the batch.
    """

    def __init__(
        self,
        class_counts: Sequence[int] | torch.Tensor,
        margin: float = 0.1,
        scale: float = 20.0,
        noise_mul: float = 0.5,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        label_smoothing: float = 0.1,
    ):
        super().__init__(class_counts, margin, scale, noise_mul, label_smoothing)
        self.gamma_pos = gamma_pos
        self.gamma_neg = gamma_neg

    def forward(self, cosine: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(self.scaled_logits(cosine, targets), dim=1)
        p = log_p.exp()
        is_target = F.one_hot(targets, cosine.shape[1]).bool()
        base = torch.where(is_target, 1.0 - p, p)
        gamma = torch.where(is_target, self.gamma_pos, self.gamma_neg).to(p.dtype)
        weight = base.pow(gamma)
        y = smoothed_targets(targets, cosine.shape[1], self.label_smoothing)
        return -(y * weight * log_p).sum(dim=1).mean()


LOSSES = {"agcl": AGCL, "gcl": GCL, "ce": CosineCE}


def build_loss(name: str, class_counts: Sequence[int], *, margin: float, scale: float, noise_mul: float,
               label_smoothing: float, gamma_pos: float = 0.0, gamma_neg: float = 0.0) -> nn.Module:
    """Build a loss by registry name; raises KeyError listing the valid names."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss '{name}'; choose one of {', '.join(LOSSES)}")
    if name == "ce":
        return CosineCE(scale=scale, label_smoothing=label_smoothing)
    if name == "gcl":
        return GCL(class_counts, margin, scale, noise_mul, label_smoothing)
    return AGCL(class_counts, margin, scale, noise_mul, gamma_pos, gamma_neg, label_smoothing)
