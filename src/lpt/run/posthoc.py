"""Post-hoc corrections of a trained run's classifier, evaluated on its test split: logit adjustment (Menon et al.,
"Long-tail learning via logit adjustment", ICLR 2021) and τ-normalisation (Kang et al., "Decoupling representation
and classifier for long-tailed recognition", ICLR 2020), with τ given or chosen on the validation split.

Neither trains. Each split goes through the model once (its logits for logit adjustment, its classifier features for
τ-normalisation); every candidate τ is then a matrix operation. ``auto`` takes the τ of :data:`TAU_GRID` with the best
balanced accuracy (mean per-class accuracy, which Kang's ``tau_norm.py`` reports) on ``data.val_list``, the smallest
on ties; the test split never chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lpt.config import Config, ConfigError
from lpt.data import build_val_dataset
from lpt.evaluation import features
from lpt.metrics import metrics_record, per_class_accuracy
from lpt.methods import get_method
from lpt.run import files
from lpt.run.load import Run, evaluate_predictions, evaluate_with, load_for_eval, with_data_overrides

# Kang et al.'s search, facebookresearch/classifier-balancing@f162ade tau_norm.py:110 `for p in np.linspace(0,2,21)`;
# the same grid serves logit adjustment, whose paper's default tau = 1 it holds
TAU_GRID = tuple(float(t) for t in np.round(np.linspace(0.0, 2.0, 21), 2))
POSTHOC = ("logit_adjustment", "tau_norm")


def adjusted_logits(logits: np.ndarray, train_counts: Sequence[int], tau: float) -> np.ndarray:
    """Menon et al. Sec. 4.1, post-hoc logit adjustment: ``f_y(x) - tau * log pi_y``, ``pi`` the training label
    prior ``n_y / sum n``, on the logits the training softmax saw."""
    counts = np.asarray(train_counts, dtype=np.float64)
    return logits - tau * np.log(counts / counts.sum())


def tau_normalised(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """Kang et al. Sec. 4 τ-normalisation: each class's weight row ``w_i / ||w_i||^tau``
    (classifier-balancing@f162ade tau_norm.py:102-107, ``pnorm``; logits without the bias, line 96)."""
    return weight / weight.norm(dim=1, keepdim=True) ** tau


def balanced_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class accuracy (%) of the top-1 predictions, over the classes present in ``labels``."""
    return float(np.nanmean(per_class_accuracy(logits.argmax(1), labels, logits.shape[1])))


def choose_tau(candidate: Callable[[float], np.ndarray], labels: np.ndarray) -> tuple[float, list[list[float]]]:
    """The τ of :data:`TAU_GRID` whose ``candidate(tau)`` logits have the best balanced accuracy on ``labels`` (the
    smallest such τ), and ``[tau, balanced accuracy]`` for every τ tried."""
    tried = [[tau, balanced_accuracy(candidate(tau), labels)] for tau in TAU_GRID]
    best = max(acc for _, acc in tried)
    return next(tau for tau, acc in tried if acc == best), tried


def _candidates(kind: str, run: Run, cfg: Config, dataset) -> tuple[Callable[[float], np.ndarray], np.ndarray]:
    """The logits of ``dataset`` as a function of τ, and its labels; one pass of the model over ``dataset``."""
    device = next(run.model.parameters()).device
    if kind == "logit_adjustment":
        out = evaluate_predictions(cfg, run.model, dataset, device=device, desc="eval logits")
        logits = run.logit_scale * out["logits"].astype(np.float64)
        return lambda tau: adjusted_logits(logits, run.train_counts, tau), out["labels"]
    out = evaluate_with(cfg, run.model, dataset, features, device=device, desc="eval features")
    feats, weight = torch.from_numpy(out["feature"]).double(), run.model.head.weight.detach().cpu().double()
    return lambda tau: (run.logit_scale * feats @ tau_normalised(weight, tau).t()).numpy(), out["labels"]


def _check(kind: str, tau: float | str, cfg: Config, tta: str | None, run_dir: str | Path) -> None:
    """Refuse, from the run's config (with the ``data.*`` overrides) and before anything loads, what cannot be
    corrected so, in one line."""
    if kind not in POSTHOC:
        raise ConfigError(f"post-hoc correction {kind!r}: choose from {', '.join(POSTHOC)}")
    if tau == "auto" and not (cfg.data.val_list or cfg.data.val_dir):
        raise ConfigError(f"{kind} with tau auto chooses tau on a validation split and {run_dir}'s config names none: "
                          "give one with --data val_list=FILE (a folder source: --data val_dir=FOLDER; never the test "
                          "split)")
    if kind != "tau_norm":
        return
    if cfg.model.head != "linear":
        raise ConfigError(f"τ-normalisation rescales the norms of a linear classifier's weights; {run_dir} has "
                          f"model.head={cfg.model.head}, whose weights are normalised already (nothing would change)")
    if (cfg.tta if tta is None else tta) != "none":
        raise ConfigError(f"τ-normalisation evaluates the plain image's classifier features; {run_dir} has "
                          f"tta={cfg.tta}: add --tta none")
    if get_method(cfg.method).class_scales:
        raise ConfigError(f"{run_dir} learnt per-class scales (method {cfg.method}): τ-normalisation is another way "
                          "to re-weight the classes of the run it started from; apply it there")


def evaluate_posthoc(run_dir: str | Path, kind: str, tau: float | str, data_overrides: list[str] | None = None,
                     device: str = "auto", tta: str | None = None) -> dict:
    """The metrics of a run on its test split (as :func:`lpt.run.load.evaluate_run`) after the post-hoc correction
    ``kind`` (logit_adjustment, tau_norm) at ``tau``, or, with ``tau="auto"``, at the τ best on the validation
    split ``data.val_list`` or ``data.val_dir`` (given with the run's config or the ``data.*`` overrides). The
    record's ``posthoc`` says which correction, which τ, and for ``auto`` the validation balanced accuracy of every τ
    tried.

    τ-normalisation uses no bias, as Kang et al.'s ``tau_norm.py`` (logits ``x · (w_i / ||w_i||^tau)``), so at
    τ = 0 it differs from the run's own logits by the classifier's bias.
    """
    _check(kind, tau, with_data_overrides(files.read_config(Path(run_dir)), data_overrides, "eval"), tta, run_dir)
    run, cfg, test = load_for_eval(run_dir, data_overrides, device, tta)
    record = {"method": kind, "tau": tau, "chosen_on": "given"}
    if tau == "auto":
        val = build_val_dataset(cfg.data)
        record["tau"], record["validation_balanced_accuracy"] = choose_tau(*_candidates(kind, run, cfg, val))
        record["chosen_on"] = f"validation ({len(val)} images of {cfg.data.val_dir or cfg.data.val_list})"
    candidate, labels = _candidates(kind, run, cfg, test)
    metrics = metrics_record(labels, run.train_counts, logits=candidate(float(record["tau"])))
    return metrics | {"phase": run.model.phase, "tta": cfg.tta, "posthoc": record}
