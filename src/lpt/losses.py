"""Classification losses on the model's logits: CE, GCL, A-GCL and the long-tail losses LA, BS, LDAM(-DRW), focal,
GRW and LADE.

GCL is the Gaussian clouded logit of Li et al. (CVPR 2022); A-GCL is LPT's variant (Dong et al.,
ICLR 2023, Sec. 3.3) that replaces cross-entropy by the asymmetric focusing of ASL with label
smoothing. Logit adjustment (Menon et al., ICLR 2021), balanced softmax (Ren et al., NeurIPS 2020),
LDAM with deferred re-weighting (Cao et al., NeurIPS 2019), focal loss (Lin et al., ICCV 2017) and
class-balanced weights (Cui et al., CVPR 2019) follow their papers and LIFT's ``utils/losses.py``
(shijxcs/LIFT); generalized re-weighting (Zhang et al., CVPR 2021) and LADE (Hong et al., CVPR 2021) follow
LIFT+'s (shijxcs/LIFT-plus@ea555ea utils/losses.py:63-76 and 107-148). All losses take the logits (cosines in
[-1, 1] for the cosine head, raw for a linear head) and apply ``scale`` themselves; docs/method.md states each form.
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DRW_BETA = 0.9999  # beta of the class-balanced weights that deferred re-weighting switches to (LDAM-DRW)


def checked_counts(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The class counts as a float64 vector; ValueError unless 1-D with at least 2 positive counts."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 2 or bool((counts <= 0).any()):
        raise ValueError(f"class_counts must be a 1-D list of at least 2 positive counts, got {class_counts}")
    return counts


def class_balanced_weights(class_counts: Sequence[int] | torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al.'s inverse effective number ``(1 - beta) / (1 - beta^n_j)``, normalised to sum C.

    ``beta = 0`` gives all ones (no re-weighting); as beta approaches 1 the weights approach 1 / n_j.
    """
    counts = checked_counts(class_counts)
    w = (1.0 - beta) / (1.0 - beta ** counts)
    return (w * len(counts) / w.sum()).float()


def generalized_reweight_weights(class_counts: Sequence[int] | torch.Tensor, exp_scale: float) -> torch.Tensor:
    """GRW's weights ``pi_j^(-exp_scale)`` with ``pi_j = n_j / sum n``, normalised to mean 1 (sum C), as LIFT+'s
    ``GeneralizedReweightLoss`` (shijxcs/LIFT-plus@ea555ea utils/losses.py:63-70); ``exp_scale = 0`` is all ones."""
    counts = checked_counts(class_counts)
    w = (counts / counts.sum()).pow(-exp_scale)
    return (w * len(counts) / w.sum()).float()


def log_prior(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``log(n_j / sum n)``, the log of the training label prior."""
    counts = checked_counts(class_counts)
    return (counts / counts.sum()).log().float()


def smoothed_targets(targets: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """One-hot targets with label smoothing: 1 - eps + eps/C at the true class, eps/C elsewhere."""
    onehot = F.one_hot(targets, num_classes).float()
    return onehot * (1.0 - eps) + eps / num_classes


class CosineCE(nn.Module):
    """Cross-entropy with label smoothing on scaled logits, optionally class-balanced (``loss.name=ce``).

    ``loss = mean_i w_{y_i} * CE(scale * s_i, y_i)`` with ``w = 1`` unless ``cb_beta > 0``
    (:func:`class_balanced_weights`). The batch mean is plain, not PyTorch's weighted mean over
    ``sum w_{y_i}`` (LIFT's ``F.cross_entropy(weight=...)``): so micro-batch losses still add up to
    the full batch's under gradient accumulation. The subclasses change the logits or the per-image term.

    Args:
        scale: multiplier applied to the logits (the softmax temperature's inverse).
        label_smoothing: eps of label smoothing.
        class_counts: training images per class; used when ``cb_beta > 0``.
        cb_beta: beta of the class-balanced weights; 0 = unweighted.
    """

    def __init__(self, scale: float = 20.0, label_smoothing: float = 0.1,
                 class_counts: Sequence[int] | torch.Tensor | None = None, cb_beta: float = 0.0):
        super().__init__()
        self.scale = scale
        self.label_smoothing = label_smoothing
        if class_counts is None and cb_beta > 0:
            raise ValueError("class-balanced weights (cb_beta > 0) need class_counts")
        weights = class_balanced_weights(class_counts, cb_beta) if cb_beta > 0 else None
        self.register_buffer("weights", weights, persistent=False)  # None: unweighted

    def adjusted_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The logits the softmax sees, ``[B, C]``."""
        return self.scale * logits.float()

    def per_image(self, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each image's unweighted loss, ``[B]``."""
        return F.cross_entropy(z, targets, reduction="none", label_smoothing=self.label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = self.per_image(self.adjusted_logits(logits, targets), targets)
        if self.weights is not None:
            losses = self.weights[targets] * losses
        return losses.mean()


class LogitAdjusted(CosineCE):
    """Logit-adjusted loss (Menon et al. 2021): ``CE(scale * s + tau * log prior)``, prior ``n_j / sum n``.

    ``tau = 0`` is plain CE. Label smoothing and class-balanced weights apply as in :class:`CosineCE`.
    LIFT: ``LogitAdjustedLoss`` (tau 1), its default loss.
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, scale: float = 20.0, tau: float = 1.0,
                 label_smoothing: float = 0.0, cb_beta: float = 0.0):
        super().__init__(scale, label_smoothing, class_counts, cb_beta)
        self.tau = tau
        self.register_buffer("offset", tau * log_prior(class_counts), persistent=False)

    def adjusted_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.scale * logits.float() + self.offset


class BalancedSoftmax(LogitAdjusted):
    """Balanced softmax (Ren et al. 2020): ``CE(scale * s + log prior)``, the logit adjustment at tau 1.

    Kept as its own name as in LIFT (``BalancedSoftmaxLoss``); label smoothing applies, no re-weighting.
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, scale: float = 20.0, label_smoothing: float = 0.0):
        super().__init__(class_counts, scale, 1.0, label_smoothing)


class FocalLoss(CosineCE):
    """Focal loss (Lin et al. 2017): each image's CE times ``(1 - p_y)^gamma``, ``p = softmax(scale * s)``.

    ``gamma = 0`` is CE. The focusing factor carries gradient, as in the paper and LIFT's
    ``FocalLoss`` (gamma 2); with label smoothing it multiplies the smoothed CE. LIFT (after
    LDAM-DRW's code) takes ``p_y = exp(-w_y * CE)`` when weighted; here ``p_y`` is the softmax's,
    and the class-balanced weight multiplies the focal term (Cui et al.'s class-balanced focal loss).
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, scale: float = 20.0, gamma: float = 2.0,
                 label_smoothing: float = 0.0, cb_beta: float = 0.0):
        super().__init__(scale, label_smoothing, class_counts, cb_beta)
        self.gamma = gamma

    def per_image(self, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        p_y = F.log_softmax(z, dim=1).gather(1, targets[:, None]).squeeze(1).exp()
        return (1.0 - p_y).clamp(min=0.0).pow(self.gamma) * super().per_image(z, targets)


class LDAM(CosineCE):
    """LDAM (Cao et al. 2019) with deferred re-weighting: ``CE(scale * (s - m_y e_y))``, ``m_j`` ~ ``n_j^(-1/4)``.

    The margins are scaled so that the rarest class's is ``max_margin``; ``scale`` is the paper's ``s``
    (30 there; LIFT passes its cosine scale, 25). DRW: from epoch ``drw_epoch`` of the phase (counted
    from 0; 0 = never) each image's term is weighted by the class-balanced weights with beta 0.9999;
    the method tells the loss the epoch through :meth:`set_epoch`. Label smoothing applies.
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, scale: float = 20.0, max_margin: float = 0.5,
                 drw_epoch: int = 0, label_smoothing: float = 0.0):
        super().__init__(scale, label_smoothing, class_counts, 0.0)
        m = checked_counts(class_counts).pow(-0.25)
        self.register_buffer("margins", (m * max_margin / m.max()).float(), persistent=False)
        self.register_buffer("drw_weights", class_balanced_weights(class_counts, DRW_BETA), persistent=False)
        self.max_margin = max_margin
        self.drw_epoch = drw_epoch

    def set_epoch(self, epoch: int) -> None:
        """Weight by the class-balanced weights from ``drw_epoch`` on (epoch counted from 0), before not at all."""
        deferred = self.drw_epoch > 0 and epoch >= self.drw_epoch
        self.weights = self.drw_weights if deferred else None

    def adjusted_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        margin = F.one_hot(targets, logits.shape[1]).float() * self.margins
        return self.scale * (logits.float() - margin)


class GeneralizedReweight(CosineCE):
    """Generalized re-weighting (Zhang et al., "Distribution Alignment", CVPR 2021), LIFT+'s ``GRW`` loss:
    ``mean_i w_{y_i} * CE(scale * s_i, y_i)`` with :func:`generalized_reweight_weights` (``exp_scale`` 1 in LIFT+,
    shijxcs/LIFT-plus@ea555ea trainer.py:202-203). As for the class-balanced weights, the batch takes the plain mean
    (LIFT+ divides by the batch's sum of weights), so that micro-batches add up under ``grad_accum``.
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, scale: float = 20.0, exp_scale: float = 1.0,
                 label_smoothing: float = 0.0):
        super().__init__(scale, label_smoothing, class_counts, 0.0)
        self.exp_scale = exp_scale
        self.weights = generalized_reweight_weights(class_counts, exp_scale)


class LADE(LogitAdjusted):
    """LADE (Hong et al., "Disentangling Label Distribution for Long-tailed Visual Recognition", CVPR 2021), as
    LIFT+'s ``LADELoss`` (shijxcs/LIFT-plus@ea555ea utils/losses.py:107-148): with ``z = scale * s``,

    ``loss = CE(z + log pi) - weight * sum_c pi_c * (A_c - B_c - lambda * B_c^2)``, where
    ``A_c = sum_{i: y_i = c} z_ic / (n_c + 1e-8)`` (``n_c`` images of class c in the batch) and
    ``B_c = logsumexp_i(z_ic - log(pi_c + 1e-9) + log(1/C + 1e-9)) - log B`` over the batch's B images: the
    regularised MINE lower bound of the balanced label distribution, weighted by the prior. ``lambda`` 0.1 and
    ``weight`` 0.1 are LIFT+'s defaults. The bound is a batch statistic: a step split into micro-batches gives
    another loss, so ``grad_accum`` is refused with it (:func:`lpt.config.validate`).
    """

    def __init__(self, class_counts: Sequence[int] | torch.Tensor, scale: float = 20.0, remine_lambda: float = 0.1,
                 weight: float = 0.1, label_smoothing: float = 0.0):
        super().__init__(class_counts, scale, 1.0, label_smoothing)
        counts = checked_counts(class_counts)
        self.register_buffer("prior", (counts / counts.sum()).float(), persistent=False)
        self.remine_lambda = remine_lambda
        self.weight = weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = self.scale * logits.float()
        member = F.one_hot(targets, z.shape[1]).T.to(z.dtype)  # [C, B]
        first = (z.T * member).sum(1) / (member.sum(1) + 1e-8)
        spread = z.T - (self.prior + 1e-9).log()[:, None] + math.log(1.0 / z.shape[1] + 1e-9)
        second = torch.logsumexp(spread, dim=1) - math.log(z.shape[0])
        bound = first - second - self.remine_lambda * second ** 2
        return super().forward(logits, targets) - self.weight * (bound * self.prior).sum()


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
        counts = checked_counts(class_counts)
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


def build_loss(name: str, class_counts: Sequence[int], *, margin: float, scale: float, noise_mul: float,
               label_smoothing: float, gamma_pos: float = 0.0, gamma_neg: float = 0.0, tau: float = 1.0,
               max_margin: float = 0.5, drw_epoch: int = 0, cb_beta: float = 0.0,
               focal_gamma: float = 2.0, grw_exp_scale: float = 1.0, lade_lambda: float = 0.1,
               lade_weight: float = 0.1) -> nn.Module:
    """Build a loss by name; raises KeyError listing the valid names."""
    ls = label_smoothing
    build = {
        "agcl": lambda: AGCL(class_counts, margin, scale, noise_mul, gamma_pos, gamma_neg, ls),
        "gcl": lambda: GCL(class_counts, margin, scale, noise_mul, ls),
        "ce": lambda: CosineCE(scale, ls, class_counts, cb_beta),
        "la": lambda: LogitAdjusted(class_counts, scale, tau, ls, cb_beta),
        "bs": lambda: BalancedSoftmax(class_counts, scale, ls),
        "ldam": lambda: LDAM(class_counts, scale, max_margin, drw_epoch, ls),
        "focal": lambda: FocalLoss(class_counts, scale, focal_gamma, ls, cb_beta),
        "grw": lambda: GeneralizedReweight(class_counts, scale, grw_exp_scale, ls),
        "lade": lambda: LADE(class_counts, scale, lade_lambda, lade_weight, ls),
    }
    if name not in build:
        raise KeyError(f"unknown loss '{name}'; choose one of {', '.join(build)}")
    return build[name]()
