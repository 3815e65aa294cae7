"""Class-count statistics of a training split: size, extremes, imbalance ratio, shot groups, a plot.

Works on a split list file (``relative/path label`` lines; the images need not be present), on an
iNaturalist annotation JSON, or on a preset / YAML config, whose training labels are built the
way training builds them (long-tail profile included) without opening an image.

Shot groups follow :mod:`lpt.analysis.metrics`: ``standard`` (many > 100, medium 20..100,
few < 20) and ``official`` (the published LPT evaluation: few <= 20, medium 21..100).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lpt.metrics import GROUPS, SHOT_RULES, shot_groups
from lpt.config import ConfigError, load_config, preset_names
from lpt.data.build import build_train_labels
from lpt.data.longtail import class_counts
from lpt.data.sources import read_class_names, read_inat_json, read_list_file

YAML_SUFFIXES = (".yaml", ".yml")


def count_stats(counts: Sequence[int], classes: Sequence[str] | None = None) -> dict:
    """Statistics of per-class training counts.

    Args:
        counts: images per class, indexed by label.
        classes: class names indexed by label; default the labels as strings.

    Returns:
        ``num_classes``, ``num_images``, ``largest`` and ``smallest`` (each ``{"label", "name",
        "count"}``, the first such class), ``imbalance_ratio`` (largest / smallest count; None
        when a class is empty), ``empty_classes``, ``shots`` (``{rule: {group: classes}}`` for
        both rules) and ``counts``.
    """
    counts = [int(n) for n in counts]
    if not counts:
        raise ValueError("count_stats needs at least one class")
    names = list(classes) if classes is not None else [str(c) for c in range(len(counts))]
    if len(names) != len(counts):
        raise ValueError(f"got {len(names)} class names for {len(counts)} counts")
    big = max(range(len(counts)), key=lambda c: (counts[c], -c))
    small = min(range(len(counts)), key=lambda c: (counts[c], c))
    shots = {}
    for rule in SHOT_RULES:
        groups = shot_groups(counts, rule)
        shots[rule] = {g: groups.count(g) for g in GROUPS}
    return {
        "num_classes": len(counts),
        "num_images": sum(counts),
        "largest": {"label": big, "name": names[big], "count": counts[big]},
        "smallest": {"label": small, "name": names[small], "count": counts[small]},
        "imbalance_ratio": counts[big] / counts[small] if counts[small] > 0 else None,
        "empty_classes": sum(1 for n in counts if n == 0),
        "shots": shots,
        "counts": counts,
    }


def _is_config(target: str) -> bool:
    path = Path(target)
    return path.suffix in YAML_SUFFIXES or (not path.is_file() and target in preset_names())


def split_labels(target: str, overrides: Sequence[str] = ()) -> tuple[list[int], list[str], str]:
    """Training labels and class names of a list file, an iNaturalist JSON, or a preset / YAML config.

    Args:
        target: a split list file, a ``.json`` annotation file, a preset name or a YAML path.
        overrides: ``dotted.key=value`` strings; only for a preset or config.

    Returns:
        labels, class names (indexed by label) and a short description of what was read.
    """
    if _is_config(target):
        cfg = load_config(target, list(overrides))
        labels, classes = build_train_labels(cfg.data)
        return labels, classes, f"training split of config '{target}' (data.source={cfg.data.source})"
    path = Path(target)
    if not path.is_file():
        raise ConfigError(f"'{target}' is neither a split list file, an annotation JSON, a YAML config nor a "
                          f"preset; presets: {', '.join(preset_names())}")
    if overrides:
        raise ConfigError(f"overrides ({overrides[0]}, ...) apply to a preset or YAML config, not to the file {path}")
    if path.suffix == ".json":
        _, labels, classes = read_inat_json(path, check_files=False)
        return labels, classes, f"annotation file {path}"
    _, labels = read_list_file(path, check_files=False)
    return labels, read_class_names(path, max(labels) + 1), f"list file {path}"


def split_stats(target: str, overrides: Sequence[str] = ()) -> dict:
    """:func:`count_stats` of the training labels :func:`split_labels` reads, plus ``source``."""
    labels, classes, source = split_labels(target, overrides)
    return count_stats(class_counts(labels, len(classes)), classes) | {"source": source}


def default_plot_path(target: str, out_dir: str | Path | None = None) -> Path:
    """``<stem>_counts.png`` in ``out_dir`` (default the current directory); stem of the file or preset name."""
    return Path(out_dir or ".") / f"{Path(target).stem}_counts.png"


def count_figure(stats: dict, title: str = ""):
    """A matplotlib Figure (Agg canvas, no pyplot state) of the classes' counts, largest first, on a log
    scale, with the shot boundaries drawn.

    Horizontal dashed lines mark 100 (many > 100) and 20 (few < 20 in the standard rule) where the
    counts reach them; vertical dotted lines mark where the sorted classes change group under the
    standard rule.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = sorted(stats["counts"], reverse=True)
    groups = shot_groups(counts, "standard")
    fig = Figure(figsize=(8, 4.5), dpi=120, layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # one step artist for all classes (a bar per class costs seconds at iNaturalist's 8,142); bar i spans
    # [i - 0.5, i + 0.5]; empty classes are drawn at 0.5 so that the log scale can show them
    heights = [max(n, 0.5) for n in counts]
    bottom = min(heights) / 2
    ax.stairs(heights, [i - 0.5 for i in range(len(counts) + 1)], baseline=bottom, fill=True, color="#4c72b0",
              linewidth=0)
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(counts) - 0.5)
    ax.set_ylim(bottom=bottom)
    for y, label in ((100, "many > 100"), (20, "few < 20")):
        if bottom < y <= max(heights):  # a boundary no class reaches would stretch the axis for nothing
            ax.axhline(y, color="#c44e52", linestyle="--", linewidth=1)
            ax.text(len(counts) - 0.5, y, f" {label}", color="#c44e52", va="center", ha="left", fontsize=8)
    for i in range(1, len(groups)):
        if groups[i] != groups[i - 1]:
            ax.axvline(i - 0.5, color="0.4", linestyle=":", linewidth=1)
    shots = stats["shots"]["standard"]
    ax.set_xlabel(f"classes sorted by count (many {shots['many']}, medium {shots['medium']}, few {shots['few']})")
    ax.set_ylabel("training images (log scale)")
    ax.set_title(title or f"{stats['num_classes']:,} classes, {stats['num_images']:,} images")
    return fig


def plot_counts(stats: dict, path: str | Path, title: str = "") -> Path:
    """Write :func:`count_figure` as a PNG at ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count_figure(stats, title).savefig(path, format="png")
    return path


def format_stats(stats: dict) -> str:
    """The report ``lpt data-stats`` prints."""
    big, small, ratio = stats["largest"], stats["smallest"], stats["imbalance_ratio"]
    lines = [
        f"{stats['source']}",
        f"classes: {stats['num_classes']:,}",
        f"images: {stats['num_images']:,}",
        f"largest class: {big['count']:,} images (label {big['label']}, {big['name']})",
        f"smallest class: {small['count']:,} images (label {small['label']}, {small['name']})",
        "imbalance ratio: " + (f"{ratio:.2f}" if ratio is not None else "undefined (empty classes)"),
    ]
    if stats["empty_classes"]:
        lines.append(f"empty classes: {stats['empty_classes']:,} (labels below the largest with no image)")
    rules = {"standard": "many > 100, medium 20..100, few < 20", "official": "many > 100, medium 21..100, few <= 20"}
    lines.append("shot groups (classes):  many  medium   few")
    for rule, text in rules.items():
        s = stats["shots"][rule]
        lines.append(f"  {rule:<9} {s['many']:>12,} {s['medium']:>7,} {s['few']:>5,}   ({text})")
    return "\n".join(lines)
