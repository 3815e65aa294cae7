"""``lpt compare``: runs side by side in the shape of the paper's ablation tables.

One row per run: method, backbone, the test-time ensemble its evaluation used (``tta``: none, flip or crops; a
difference of protocol, not of method), overall / many / medium / few accuracy (standard shot rule,
from ``metrics.json``), the other metrics of :data:`lpt.metrics.SCORE_METRICS` (``-`` for a run evaluated before
lpt computed them), trained parameters (all phases, from ``model.safetensors``; see
:func:`lpt.run.files.trained_params`) and the training throughput of the last phase, in
the column of what was timed: images/s through the model, or features/s for a linear probe, which
trains on features computed once (tens of thousands a second, not comparable with images).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from lpt.analysis.report import fmt
from lpt.config import ConfigError
from lpt.metrics import ACCURACIES, SCORE_METRICS
from lpt.run.files import method_label, read_info, read_run, trains_on_features
from lpt.utils import atomic_write_text, log

COLUMNS = ("run", "method", "backbone", "tta", *ACCURACIES, *SCORE_METRICS, "trainable_params", "images_per_s",
           "features_per_s")


def _method(run) -> str:
    """The method's label, with the modules put into the blocks (``model.peft``) and the loss where there are such
    modules: AdaptFormer, LoRA and LIFT runs are all the PEFT method, told apart by these."""
    model, loss = run.config.get("model", {}), run.config.get("loss", {})
    modules = "+".join(model.get("peft") or [])
    return f"{run.method_label} ({modules}, loss {loss.get('name', '-')})" if modules else run.method_label


def _evaluated_on(config: dict) -> str:
    """Which images a run's accuracy is on: held-out training images (``data.holdout``) or its evaluation split."""
    data = config.get("data", {})
    return f"held-out {data['holdout']:g} of the training images" if data.get("holdout") else "its evaluation split"


def compare_row(run_dir: str | Path) -> dict:
    """The comparison record of one run (numbers unformatted; None where the run does not say)."""
    run = read_run(run_dir)
    phases = run.info.get("phases") or {}
    last = phases[list(phases)[-1]] if phases else {}
    backbone = (run.info.get("backbone") or {}).get("name") or run.config.get("model", {}).get("backbone")
    timed = "features_per_s" if trains_on_features(run.method) else "images_per_s"
    return {
        "run": str(run_dir), "method": _method(run), "backbone": backbone, "tta": run.metrics.get("tta", "none"),
        **{g: run.metrics.get(g) for g in (*ACCURACIES, *SCORE_METRICS)},
        "trainable_params": run.trained_params,
        "images_per_s": None, "features_per_s": None,
        timed: last.get("images_per_s"),  # the trainer counts samples, whatever they are
        "evaluated_on": _evaluated_on(run.config),
    }


def compare_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    """The rows of ``run_dirs``, in order. Files among them (``lpt compare runs/*`` meets ``runs/notes.txt``) are
    skipped with a warning; a folder that is not a run is an error."""
    runs = [Path(d) for d in run_dirs if Path(d).is_dir()]
    for stray in (d for d in run_dirs if not Path(d).is_dir()):
        log.warning("skipping %s: not a run directory", stray)
    if not runs:
        raise ConfigError(f"none of {', '.join(map(str, run_dirs))} is a run directory")
    return [compare_row(d) for d in runs]


def split_notes(rows: list[dict]) -> list[str]:
    """A note when the runs are not all evaluated on the same kind of images (held-out training images beside
    evaluation splits): their accuracies do not measure the same thing."""
    runs: dict[str, list[str]] = {}
    for r in rows:
        runs.setdefault(r["evaluated_on"], []).append(r["run"])
    if len(runs) < 2:
        return []
    return ["note: these runs are evaluated on different images: " + "; ".join(
        f"{', '.join(names)} on {kind}" for kind, names in runs.items())]


def _cells(row: dict) -> list[str]:
    n = row["trainable_params"]
    return [row["run"], row["method"], str(row["backbone"] or "-"), row["tta"],
            *(fmt(row[g]) for g in (*ACCURACIES, *SCORE_METRICS)), "-" if n is None else f"{n:,}",
            *("-" if row[k] is None else f"{row[k]:.1f}" for k in ("images_per_s", "features_per_s"))]


def to_markdown(rows: list[dict]) -> str:
    header = ["run", "method", "backbone", "tta", *ACCURACIES, *SCORE_METRICS.values(), "trainable params", "images/s",
              "features/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    """CSV with full-precision numbers (empty where unknown), one row per run."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(["" if r[c] is None else r[c] for c in COLUMNS])
    return buf.getvalue()


def write_comparison(rows: list[dict], prefix: str | Path) -> tuple[Path, Path]:
    """Write ``PREFIX.md`` and ``PREFIX.csv``; returns their paths."""
    md, cs = Path(f"{prefix}.md"), Path(f"{prefix}.csv")
    atomic_write_text(md, to_markdown(rows) + "\n")
    atomic_write_text(cs, to_csv(rows))
    return md, cs


def shot_table(rows: dict[str, dict]) -> str:
    """Markdown table of overall / many / medium / few accuracy, one row per model."""
    lines = ["| model | overall | many | medium | few |", "|---|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(m.get(k)) for k in ACCURACIES) + " |")
    return "\n".join(lines)


def phase_rows(run_dirs: Sequence[str | Path]) -> tuple[dict[str, dict], list[str]]:
    """Shot accuracy after every phase of every run, keyed by a readable label (``LPT phase 1``), and the names
    of the backbones that were randomly initialised (worth a note under the table); reads ``run.json`` only."""
    rows, random = {}, []
    for run_dir in run_dirs:
        info = read_info(run_dir)
        phases = info["phases"]
        for name, metrics in phases.items():
            label = method_label(info.get("method", "lpt"), int(name[-1]) if len(phases) > 1 else None)
            rows[label] = metrics
        if info["backbone"]["source"] == "random" and info["backbone"]["name"] not in random:
            random.append(info["backbone"]["name"])
    return rows, random
