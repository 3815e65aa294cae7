"""``lpt study report``: a study's runs aggregated over seeds, as Markdown, CSV and one self-contained HTML page.

Per variant (and grid setting): overall / many / medium / few accuracy as mean ± sample standard deviation over the
seeds that finished, with a 95% confidence interval of the mean (Student's t with n - 1 degrees of freedom), the
trainable parameters, wall time, device-hours of training and of evaluation (seconds x processes, from run.json)
and images/s; plots of accuracy against parameters and device-hours and of few-shot accuracy with error bars.
With ``select: best_val`` each variant's grid setting is the one with the best mean validation accuracy, and the
report shows the validation numbers it chose on. Runs that did not finish are listed, never dropped; variants
whose evaluation protocol (test-time ensemble, evaluation transform) differs from the others' are marked.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from lpt.analysis import plots
from lpt.analysis.report import Code, Heading, Image, Para, Table, fmt, to_html, to_markdown
from lpt.metrics import ACCURACIES
from lpt.run import files
from lpt.study import directory
from lpt.utils import atomic_write_bytes, atomic_write_text

REPORT = "report"  # report.md, report.csv, report.html and report_*.png in the study directory


@dataclass
class RunNumbers:
    """What the report takes from one finished run."""

    accuracy: dict[str, float]  # overall, many, medium, few (metrics.json)
    val: float | None  # validation overall accuracy (data.val_list / val_dir; data.holdout: the held-out evaluation)
    params: int | None
    wall_s: float
    train_device_h: float
    eval_device_h: float
    images_per_s: float | None
    protocol: str  # test-time ensemble and evaluation transform


def _validation(run: files.RunFiles) -> float | None:
    """The validation accuracy of the model the run kept: its last phase's best (``select: best_val``) or last
    validation; a run evaluated on held-out training images (data.holdout) has its evaluation as validation."""
    if not run.config["phases"]:  # zero-shot: nothing trained, nothing validated
        return run.metrics["overall"] if run.config["data"].get("holdout") else None
    last = run.config["phases"][-1]
    vals = [v["val"]["overall"] for v in run.vals if v["phase"] == last]
    if vals:
        return max(vals) if run.config.get("select") == "best_val" else vals[-1]
    return run.metrics["overall"] if run.config["data"].get("holdout") else None


def _one_line(text: str) -> str:
    """A transform's repr on one line (torchvision's Compose spans several), for a table cell or a footnote."""
    return " ".join(str(text).split()).replace("( ", "(").replace(" )", ")")


def read_numbers(run_dir: Path) -> RunNumbers:
    run = files.read_run(run_dir)
    phases = run.info.get("phases") or {}
    processes = run.info.get("world_size", 1)
    wall = float(run.info.get("wall_seconds", 0.0))
    train = sum(p.get("train_seconds", 0.0) for p in phases.values())
    last = phases[list(phases)[-1]] if phases else {}
    return RunNumbers(accuracy={g: run.metrics[g] for g in ACCURACIES}, val=_validation(run),
                      params=run.trained_params, wall_s=wall, train_device_h=train * processes / 3600,
                      eval_device_h=max(wall - train, 0.0) * processes / 3600, images_per_s=last.get("images_per_s"),
                      protocol=f"tta {run.metrics.get('tta', 'none')}; "
                               f"{_one_line(run.info.get('eval_transform', '?'))}")


@dataclass
class Group:
    """The runs of one variant and grid setting, one per seed."""

    variant: str
    setting: str
    runs: list[str] = field(default_factory=list)
    numbers: list[RunNumbers] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return len(self.runs)

    def mean_std_ci(self, values: list[float]) -> tuple[float | None, float | None, float | None]:
        """Mean, sample standard deviation and the 95% confidence interval's half-width (Student's t); a shot
        group without classes (None) has none."""
        if not values:
            return None, None, None
        mean = float(np.mean(values))
        if len(values) < 2:
            return mean, None, None
        std = float(np.std(values, ddof=1))
        return mean, std, float(stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values)))

    def stat(self, key: str) -> tuple[float | None, float | None, float | None]:
        return self.mean_std_ci([n.accuracy[key] for n in self.numbers if n.accuracy[key] is not None])

    def mean(self, attr: str) -> float | None:
        values = [getattr(n, attr) for n in self.numbers if getattr(n, attr) is not None]
        return float(np.mean(values)) if values else None

    @property
    def val(self) -> float | None:
        return self.mean("val")

    @property
    def protocol(self) -> str:
        return Counter(n.protocol for n in self.numbers).most_common(1)[0][0] if self.numbers else ""


def collect(study_dir: Path) -> tuple[dict, list[Group], list[directory.RunStatus]]:
    """The study's record, its groups in file order (finished runs read), and the runs that did not finish."""
    record = directory.read_record(study_dir)
    groups: dict[tuple[str, str], Group] = {}
    missing = []
    for run in record["runs"]:
        group = groups.setdefault((run["variant"], run["setting"]), Group(run["variant"], run["setting"]))
        group.runs.append(run["name"])
        status = directory.run_status(study_dir, run["name"])
        if status.state == "finished":
            group.numbers.append(read_numbers(directory.run_dir(study_dir, run["name"])))
        else:
            missing.append(status)
    return record, list(groups.values()), missing


def select(record: dict, groups: list[Group]) -> list[Group]:
    """The groups the report's main table shows: with ``select: best_val``, per variant the grid setting of best
    mean validation accuracy (the first of equals; every setting, unfinished, where none has a validation number
    yet); else every group."""
    if record["select"] != "best_val":
        return groups
    chosen = []
    for variant in record["variants"]:
        candidates = [g for g in groups if g.variant == variant and g.val is not None]
        chosen += [max(candidates, key=lambda g: g.val)] if candidates else [g for g in groups if g.variant == variant]
    return chosen


def _pm(mean: float | None, std: float | None) -> str:
    return fmt(mean) + ("" if std is None else f" ± {std:.2f}")


def _ci(mean: float | None, half: float | None) -> str:
    return "-" if half is None else f"[{mean - half:.2f}, {mean + half:.2f}]"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _label(g: Group) -> str:
    return g.variant + (f" ({g.setting})" if g.setting else "")


def main_table(groups: list[Group]) -> Table:
    common = Counter(g.protocol for g in groups if g.numbers).most_common(1)
    mark = lambda g: " †" if common and g.numbers and g.protocol != common[0][0] else ""  # noqa: E731
    rows = []
    for g in groups:
        cells = [_label(g) + mark(g), f"{len(g.numbers)}/{g.expected}"]
        cells += [_pm(*g.stat(k)[:2]) for k in ACCURACIES]
        overall = g.stat("overall")
        cells += [_ci(overall[0], overall[2]), _num(g.mean("params"), 0), _num(g.mean("wall_s"), 0),
                  _num(g.mean("train_device_h"), 4), _num(g.mean("eval_device_h"), 4), _num(g.mean("images_per_s"), 1)]
        rows.append(cells)
    return Table(["variant", "seeds", "overall", "many", "medium", "few", "overall 95% CI", "trainable params",
                  "wall s", "device-h train", "device-h eval", "images/s"], rows, id="study")


def selection_table(record: dict, groups: list[Group], chosen: list[Group]) -> Table:
    rows = [[g.variant, g.setting, f"{sum(n.val is not None for n in g.numbers)}/{g.expected}", fmt(g.val),
             fmt(g.stat("overall")[0]), "chosen" if g in chosen and g.val is not None else ""] for g in groups]
    return Table(["variant", "setting", "seeds with validation", "validation overall (mean)", "test overall (mean)",
                  "selected"], rows, id="selection")


def to_csv(groups: list[Group], chosen: list[Group]) -> str:
    """One row per variant and grid setting, full precision, empty where unknown."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    stat_cols = [f"{k}_{s}" for k in ACCURACIES for s in ("mean", "std", "ci95")]
    writer.writerow(["variant", "setting", "selected", "finished", "expected", *stat_cols, "val_overall_mean",
                     "trainable_params", "wall_seconds", "train_device_hours", "eval_device_hours", "images_per_s",
                     "protocol"])
    for g in groups:
        values = [v for k in ACCURACIES for v in g.stat(k)]
        row = [g.variant, g.setting, g in chosen, len(g.numbers), g.expected, *values, g.val, g.mean("params"),
               g.mean("wall_s"), g.mean("train_device_h"), g.mean("eval_device_h"), g.mean("images_per_s"),
               g.protocol]
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def _plots(groups: list[Group]) -> list[Image]:
    shown = [g for g in groups if g.numbers]
    if not shown:
        return []
    labels = [_label(g) for g in shown]
    means, stds = [g.stat("overall")[0] for g in shown], [g.stat("overall")[1] or 0 for g in shown]
    images = [Image(name=f"{REPORT}_overall_vs_{name}.png",
                    caption=f"Overall accuracy (mean ± std over seeds) against {label}",
                    png=plots.errorbar_scatter(labels, [g.mean(attr) or 0 for g in shown], means, stds, label,
                                               log_x=attr == "params"))
              for attr, label, name in (("params", "trainable parameters", "params"),
                                        ("train_device_h", "device-hours of training per run", "cost"))]
    few = [g.stat("few") for g in groups if g.numbers]
    if all(f[0] is not None for f in few):
        images.append(Image(name=f"{REPORT}_few.png", caption="Few-shot accuracy per variant (mean ± std over seeds)",
                            png=plots.error_bars(labels, [f[0] for f in few], [f[1] or 0 for f in few],
                                                 "few-shot accuracy (%)")))
    return images


def build(study_dir: Path) -> tuple[str, list, list[Group], list[Group]]:
    record, groups, missing = collect(study_dir)
    chosen = select(record, groups)
    n_done = sum(len(g.numbers) for g in groups)
    blocks: list = [Para(f"Study `{record['name']}` from `{record['source']}`: {len(record['runs'])} runs "
                         f"({len(record['variants'])} variants, seeds {', '.join(map(str, record['seeds']))}"
                         + (f", grid {', '.join(record['grid'])}" if record["grid"] else "") + f"); {n_done} finished. "
                         "Accuracy in %: mean ± sample standard deviation over the seeds that finished; the 95% "
                         "confidence interval of the mean is Student's t with n - 1 degrees of freedom. Device-hours "
                         "are seconds times processes (run.json), per run; evaluation is the run's wall time less "
                         "its training.")]
    blocks += [Heading("Results"), main_table(chosen)]
    common = Counter(g.protocol for g in chosen if g.numbers).most_common(1)
    odd = [g for g in chosen if g.numbers and common and g.protocol != common[0][0]]
    if odd:
        blocks.append(Para("† evaluated differently from the others (" + common[0][0] + "): " + "; ".join(
            f"{_label(g)}: {g.protocol}" for g in odd) + ". Their accuracies differ in protocol, not only in method."))
    if record["select"] == "best_val":
        blocks += [Heading("Selection (select: best_val)"),
                   Para("Per variant, the grid setting with the best mean validation accuracy (data.val_list or "
                        "data.val_dir, or data.holdout's held-out images); the test numbers played no part."),
                   selection_table(record, groups, chosen)]
    if missing:
        blocks += [Heading("Runs not finished"), Table(["run", "state", "last error"],
                                                         [[s.name, s.state, s.error or "-"] for s in missing],
                                                         id="missing")]
    blocks += [Heading("Plots"), *_plots(chosen)]
    blocks += [Heading("Study file"), Code((Path(study_dir) / directory.STUDY_YAML).read_text())]
    return f"lpt study: {record['name']}", blocks, groups, chosen


def write_study_report(study_dir: str | Path) -> list[Path]:
    """Write report.md (with its PNGs), report.csv and report.html into the study directory; returns their paths."""
    study_dir = Path(study_dir)
    title, blocks, groups, chosen = build(study_dir)
    for b in blocks:
        if isinstance(b, Image):
            atomic_write_bytes(study_dir / b.name, b.png)
    paths = [study_dir / f"{REPORT}.{ext}" for ext in ("md", "csv", "html")]
    atomic_write_text(paths[0], to_markdown(title, blocks))
    atomic_write_text(paths[1], to_csv(groups, chosen))
    atomic_write_text(paths[2], to_html(title, blocks))
    return paths
