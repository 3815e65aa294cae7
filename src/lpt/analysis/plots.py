"""Plots of reports and analyses, as PNG bytes (matplotlib without pyplot: no global state, no display).

Classes are always shown sorted by training count, largest first, as in the paper's figures.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from lpt.metrics import GROUPS, shot_groups

MAX_CLASS_TICKS = 40  # name classes on an axis up to this many; beyond, show ranks only


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def frequency_order(train_counts: Sequence[int]) -> np.ndarray:
    """Labels sorted by training count, largest first (ties by label)."""
    return np.argsort(-np.asarray(train_counts), kind="stable")


def _group_spans(sorted_counts: np.ndarray) -> list[tuple[str, int, int]]:
    """(group, first, last+1) positions of each standard shot group along classes sorted by count."""
    groups = shot_groups(sorted_counts.tolist())
    spans = []
    for g in GROUPS:
        where = [i for i, x in enumerate(groups) if x == g]
        if where:
            spans.append((g, where[0], where[-1] + 1))
    return spans


def _class_axis(ax, names: Sequence[str], axis: str = "x") -> None:
    n = len(names)
    if n <= MAX_CLASS_TICKS:
        if axis == "x":
            ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        else:
            ax.set_yticks(range(n), names, fontsize=7)
    label = "classes sorted by training count" + ("" if n <= MAX_CLASS_TICKS else " (rank)")
    (ax.set_xlabel if axis == "x" else ax.set_ylabel)(label)


def _group_axis(ax, pool_size: int) -> None:
    if pool_size <= MAX_CLASS_TICKS:
        ax.set_xticks(range(pool_size))
    ax.set_xlabel("group")


def per_class_plot(per_class: Sequence[float | None], train_counts: Sequence[int], classes: Sequence[str]) -> bytes:
    """Per-class test accuracy (bars) and training count (line, log scale) over classes sorted by count,
    with the many / medium / few boundaries (standard rule) drawn."""
    order = frequency_order(train_counts)
    counts = np.asarray(train_counts)[order]
    acc = np.array([np.nan if per_class[c] is None else per_class[c] for c in order], dtype=float)
    fig = _figure(max(6.0, min(16.0, 0.25 * len(order))), 4.0)
    ax = fig.subplots()
    if len(order) <= 200:
        ax.bar(range(len(order)), np.nan_to_num(acc), color="tab:blue", width=0.9, label="test accuracy")
    else:  # one filled step line: thousands of bar patches take tens of seconds to draw
        ax.stairs(np.nan_to_num(acc), np.arange(len(order) + 1) - 0.5, fill=True, color="tab:blue",
                  label="test accuracy")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.5, len(order) - 0.5)
    twin = ax.twinx()
    twin.plot(range(len(order)), counts, color="tab:orange", marker="." if len(order) <= 100 else None,
              label="training images")
    twin.set_yscale("log")
    twin.set_ylabel("training images (log scale)")
    for g, start, stop in _group_spans(counts):
        if start > 0:
            ax.axvline(start - 0.5, color="black", linestyle="--", linewidth=1)
        ax.text((start + stop - 1) / 2, 97, g, ha="center", va="top", fontsize=9)
    _class_axis(ax, [classes[c] for c in order])
    ax.set_title("per-class accuracy and training count (dashed: shot-group boundaries)", fontsize=10)
    return _png(fig)


def matching_plot(best: np.ndarray, second: np.ndarray | None, usage_best: np.ndarray, usage_topk: np.ndarray,
                  train_counts: Sequence[int], classes: Sequence[str]) -> bytes:
    """Class x group heat maps of the best (and second-best) match shares, classes sorted by frequency,
    and a bar chart of group usage."""
    import matplotlib

    order = frequency_order(train_counts)
    maps = [("best match", best)] + ([("second-best match", second)] if second is not None else [])
    height = max(4.0, min(14.0, 0.18 * len(order) + 1.5))
    fig = _figure(5.0 * len(maps) + 4.5, height)
    axes = fig.subplots(1, len(maps) + 1, width_ratios=[1.0] * len(maps) + [0.8])
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    for ax, (title, shares) in zip(axes, maps):
        image = ax.imshow(shares[order], aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=1)
        ax.set_title(f"share of each class's images: {title}", fontsize=10)
        _group_axis(ax, shares.shape[1])
        _class_axis(ax, [classes[c] for c in order], axis="y")
        fig.colorbar(image, ax=ax, shrink=0.8)
    ax = axes[-1]
    groups = np.arange(len(usage_best))
    ax.bar(groups - 0.2, usage_best / max(usage_best.sum(), 1), width=0.4, label="as best match")
    ax.bar(groups + 0.2, usage_topk / max(usage_topk.sum(), 1), width=0.4, label="in the top-k")
    ax.axhline(1 / len(groups), color="black", linestyle="--", linewidth=1, label="uniform")
    _group_axis(ax, len(groups))
    ax.set_ylabel("share of selections")
    ax.set_title("group usage")
    ax.legend(fontsize=8)
    return _png(fig)


def reliability_plot(bins: dict) -> bytes:
    """The reliability diagram of metrics.json's ``reliability`` bins: each bin's accuracy against its range of
    top-1 confidence (bars), the diagonal of perfect calibration, and how many images each bin holds."""
    fig = _figure(5.0, 4.2)
    ax = fig.subplots()
    m = bins["bins"]
    edges = np.linspace(0.0, 100.0, m + 1)
    acc = [0.0 if a is None else a for a in bins["accuracy"]]
    ax.bar(edges[:-1], acc, width=100.0 / m, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    gap = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"]) if c is not None]
    ax.plot([c for c, _ in gap], [c for c, _ in gap], "o", color="tab:red", markersize=4,
            label="mean confidence of the bin")
    ax.plot([0, 100], [0, 100], "--", color="grey", label="perfect calibration")
    twin = ax.twinx()
    twin.plot((edges[:-1] + edges[1:]) / 2, bins["count"], color="tab:green", marker=".", linewidth=1)
    twin.set_ylabel("images in the bin (green)")
    ax.set_xlabel("top-1 confidence (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def curves_plot(epochs: Sequence[dict], evals: Sequence[dict], vals: Sequence[dict] = ()) -> bytes:
    """Training loss and accuracy per epoch over all phases in order, with the validation accuracy of the epochs
    that were validated (``data.val_list``) and each phase's test accuracy."""
    fig = _figure(11.0, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    from matplotlib.ticker import MaxNLocator

    x = np.arange(1, len(epochs) + 1)
    phases = [r["phase"] for r in epochs]
    for i, phase in enumerate(dict.fromkeys(phases)):  # one line per phase: a new phase is a new optimisation
        idx = [j for j, q in enumerate(phases) if q == phase]
        loss_ax.plot(x[idx], [epochs[j]["loss"] for j in idx], marker="o", color="tab:blue")
        acc_ax.plot(x[idx], [epochs[j]["train_acc"] for j in idx], marker="o", color="tab:blue",
                    label="training accuracy" if i == 0 else None)
    position = {(r["phase"], r["epoch"]): i for i, r in enumerate(epochs, 1)}
    validated = [v for v in vals if (v["phase"], v["epoch"]) in position and v["val"].get("overall") is not None]
    if validated:
        acc_ax.plot([position[v["phase"], v["epoch"]] for v in validated], [v["val"]["overall"] for v in validated],
                    marker="s", linestyle="none", color="tab:green", label="validation accuracy")
    ends = {p: max(i for i, q in enumerate(phases, 1) if q == p) for p in phases}
    shown = [e for e in evals if e["phase"] in ends and e["eval"].get("overall") is not None]
    kept = [position.get((e["phase"], e["eval"].get("selected", {}).get("epoch")), ends[e["phase"]]) for e in shown]
    acc_ax.plot(kept, [e["eval"]["overall"] for e in shown], marker="*", markersize=12, linestyle="none",
                color="tab:red", label="test accuracy of the epoch each phase kept")
    for ax in (loss_ax, acc_ax):
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(i + 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch (all phases in order; dashed: next phase)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title("loss")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title("accuracy")
    acc_ax.legend(fontsize=8)
    return _png(fig)


def lda_plot(panels: dict[str, tuple[np.ndarray, np.ndarray]], train_counts: Sequence[int]) -> bytes:
    """Side-by-side 2-D LDA scatter plots, one per feature source: ``{title: (points [N, 2], labels [N])}``.
    Colours follow frequency rank (the same class has the same colour in every panel)."""
    import matplotlib

    rank = np.empty(len(train_counts), dtype=int)
    rank[frequency_order(train_counts)] = np.arange(len(train_counts))
    fig = _figure(4.2 * len(panels), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    cmap = matplotlib.colormaps["turbo"]
    for ax, (title, (z, labels)) in zip(axes, panels.items()):
        ax.scatter(z[:, 0], z[:, 1], c=rank[labels], cmap=cmap, vmin=0, vmax=max(len(train_counts) - 1, 1), s=6,
                   alpha=0.7)
        ax.set_title(title)
        ax.set_xlabel("LD 1")
        ax.set_ylabel("LD 2")
    fig.suptitle("LDA of test features, fitted on training features; colour: training-count rank "
                 "(head blue, tail red)", fontsize=10)
    return _png(fig)


def errorbar_scatter(labels: Sequence[str], x: Sequence[float], y: Sequence[float], yerr: Sequence[float],
                     xlabel: str, log_x: bool = False) -> bytes:
    """One labelled point per model, with a vertical error bar (a study's accuracy against its cost)."""
    fig = _figure(7.0, 4.5)
    ax = fig.subplots()
    ax.errorbar(x, y, yerr=yerr, fmt="o", capsize=4)
    for xi, yi, label in zip(x, y, labels):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if log_x and all(v > 0 for v in x):
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("overall accuracy (%)")
    ax.grid(alpha=0.3)
    return _png(fig)


def error_bars(labels: Sequence[str], values: Sequence[float], errors: Sequence[float], ylabel: str) -> bytes:
    """One bar per model with its error bar."""
    fig = _figure(max(5.0, 0.7 * len(labels) + 2), 4.5)
    ax = fig.subplots()
    ax.bar(range(len(labels)), values, yerr=errors, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(min(values) - 5 - max(errors, default=0), max(values) + 2 + max(errors, default=0))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
