"""``lpt analyze``: the paper's feature analyses of a trained run (Tab. 2, Fig. 2) on its data.

For each feature source (plain ViT, phase-1 model, phase-2 model; ``lpt.evaluation.FEATURE_SOURCES``)
on the training split (evaluation transform) and the test split: mean intra-class distance
``R_i``, inter-class distance ``D`` and ``gamma`` (:mod:`lpt.analysis.geometry`); k-NN accuracy
with cosine similarity, training features as memory and test features as queries (overall and
per shot group); a 2-D LDA of the test features fitted on the training features, sources side by
side. Writes ``analysis.json`` and ``analysis_lda.png`` into the run directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lpt.analysis import plots
from lpt.analysis.geometry import class_distances, knn_predict, lda_2d
from lpt.metrics import ACCURACIES, shot_accuracy
from lpt.config import ConfigError
from lpt.data import build_datasets, with_eval_transform
from lpt.evaluation import feature_sources, source_features
from lpt.run.load import evaluate_with, load_run, with_data_overrides
from lpt.utils import atomic_write_bytes, atomic_write_json, log, resolve_device

ANALYSIS_JSON, LDA_PNG = "analysis.json", "analysis_lda.png"
DEFAULT_K = 10
SOURCE_TITLES = {"plain": "plain ViT", "phase1": "phase 1 (shared prompt)", "phase2": "phase 2 (group prompts)"}


def lda_classes(train_counts: list[int], max_classes: int) -> list[int]:
    """Classes shown in the LDA plot: all when few enough, else ``max_classes`` spread evenly over the
    frequency order (head to tail)."""
    order = plots.frequency_order(train_counts)
    if len(order) <= max_classes:
        return sorted(order.tolist())
    return sorted(set(order[np.linspace(0, len(order) - 1, max_classes).round().astype(int)].tolist()))


def analyze_features(train: dict[str, np.ndarray], train_labels: np.ndarray, test: dict[str, np.ndarray],
                     test_labels: np.ndarray, train_counts: list[int], k: int = DEFAULT_K,
                     device: str | torch.device = "cpu") -> dict:
    """Geometry of each source on both splits and its k-NN accuracy (overall and by shot group)."""
    results = {}
    for source in train:
        preds = knn_predict(train[source], train_labels, test[source], k, device=device)
        knn = shot_accuracy(preds, test_labels, train_counts)
        results[source] = {
            "train": class_distances(train[source], train_labels),
            "test": class_distances(test[source], test_labels),
            "knn": {key: knn[key] for key in ACCURACIES},
        }
    return results


def analyze_run(run_dir: str | Path, data_overrides: list[str] | None = None, k: int = DEFAULT_K,
                device: str = "auto", max_lda_classes: int = 20) -> dict:
    """Extract features of a run's training and test splits, analyse them, write analysis.json and the LDA plot.

    Args:
        run_dir: a finished run directory.
        data_overrides: ``data.*`` overrides (another split, another root).
        k: neighbours of the k-NN classifier.
        device: where the model runs.
        max_lda_classes: classes drawn in the LDA plot.

    Returns:
        the content of analysis.json.
    """
    run = load_run(run_dir, resolve_device(device))
    cfg = with_data_overrides(run.config, data_overrides, "analyze")
    splits = build_datasets(cfg.data)
    if splits.num_classes != run.model.num_classes:
        raise ConfigError(f"the data has {splits.num_classes} classes, the run was trained on {run.model.num_classes}")
    sources = feature_sources(run.model)
    dev = next(run.model.parameters()).device
    train = evaluate_with(cfg, run.model, with_eval_transform(splits.train, cfg.data),
                          source_features(run.model, sources), device=dev, desc="features train")
    test = evaluate_with(cfg, run.model, splits.test, source_features(run.model, sources), device=dev,
                         desc="features test")
    train_labels, test_labels = train.pop("labels"), test.pop("labels")
    log.info("analyze %s: %d training and %d test images, sources %s", run_dir, len(train_labels),
             len(test_labels), ", ".join(sources))
    results = analyze_features(train, train_labels, test, test_labels, run.train_counts, k, device=dev)

    shown = lda_classes(run.train_counts, max_lda_classes)
    panels = {}
    tr, te = np.isin(train_labels, shown), np.isin(test_labels, shown)
    if len(shown) >= 2 and te.any():
        for source in sources:
            z = lda_2d(train[source][tr], train_labels[tr], test[source][te])
            panels[SOURCE_TITLES[source]] = (z, test_labels[te])
    out = Path(run_dir)
    record = {
        "k": k, "num_train": int(len(train_labels)), "num_test": int(len(test_labels)),
        "data_overrides": list(data_overrides or []), "sources": results,
        "lda": {"classes": shown, "plot": LDA_PNG if panels else None},
    }
    if panels:
        atomic_write_bytes(out / LDA_PNG, plots.lda_plot(panels, run.train_counts))
    atomic_write_json(out / ANALYSIS_JSON, record)
    return record


def format_analysis(record: dict) -> str:
    """Markdown table of an analysis: one row per feature source."""
    def num(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [f"| features | mean R (test) | D (test) | gamma (test) | gamma (train) | {record['k']}-NN overall | "
             "many | medium | few |", "|---|---|---|---|---|---|---|---|---|"]
    for source, r in record["sources"].items():
        knn = r["knn"]
        lines.append(f"| {SOURCE_TITLES.get(source, source)} | {num(r['test']['mean_intra'])} | "
                     f"{num(r['test']['inter'])} | {num(r['test']['gamma'])} | {num(r['train']['gamma'])} | "
                     + " | ".join(num(knn[g], 2) for g in ACCURACIES) + " |")
    return "\n".join(lines)
