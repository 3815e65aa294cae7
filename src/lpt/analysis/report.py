"""Run report: ``report.html`` (self-contained, images embedded) and ``report.md`` (images beside it).

Sections: test accuracy by shot group under both rules, the other test metrics (top-5, balanced, worst-class and
harmonic-mean accuracy, macro-F1, NLL, ECE) with a reliability diagram, per-phase summary, model and run facts
(backbone identity, trained parameters, time, images/s), per-class accuracy against training
frequency, prompt matching statistics (LPT phase 2; the paper's Fig. 4), learning curves, and
the resolved configuration. Every accuracy is formatted with 2 decimals from the very values of
``metrics.json`` / ``run.json``; the report computes none of them again.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lpt.analysis import plots
from lpt.analysis.matching import matching_stats
from lpt.metrics import ACCURACIES, GROUPS, SCORE_METRICS, SHOT_RULES, shot_groups
from lpt.run.files import PREDICTIONS, RunFiles, read_run, write_predictions
from lpt.data import build_test_dataset
from lpt.run.load import evaluate_predictions, load_run
from lpt.utils import atomic_write_bytes, atomic_write_text, resolve_device

REPORT_HTML, REPORT_MD = "report.html", "report.md"
TTA_TEXT = {  # how a run's metrics were evaluated (config key tta), where not on the plain image
    "flip": ", each predicted from the mean logits of the image and its mirror (`tta: flip`)",
    "crops": ", each predicted from the mean logits of five crops, the centre and the corners, of the image resized "
             "by `tta_expand` (`tta: crops`, LIFT's test-time ensemble)",
}
MAX_CLASS_ROWS = 1000  # per-class table up to this many classes; beyond, metrics.json holds them
RULE_TEXT = {
    "standard": "standard (many > 100, medium 20-100, few < 20 training images)",
    "official": "official script (many > 100, medium 21-100, few <= 20)",
}


def fmt(value: float | None) -> str:
    """Accuracy as in every lpt table: 2 decimals, ``-`` for a missing value."""
    return "-" if value is None else f"{value:.2f}"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


# A report is a list of blocks, rendered twice (Markdown and HTML).
@dataclass
class Heading:
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    id: str


@dataclass
class Image:
    name: str  # file name beside report.md
    png: bytes
    caption: str


@dataclass
class Code:
    text: str


Block = Heading | Para | Table | Image | Code


def _accuracy_section(run: RunFiles) -> list[Block]:
    m = run.metrics
    rows = []
    for rule in SHOT_RULES:
        accs = m if rule == "standard" else m.get("official", {})
        rows.append([RULE_TEXT[rule], fmt(m.get("overall"))] + [fmt(accs.get(g)) for g in GROUPS])
    sizes = []
    for rule in SHOT_RULES:
        groups = shot_groups(run.train_counts, rule)
        sizes.append([rule] + [str(groups.count(g)) for g in GROUPS])
    return [
        Heading("Test accuracy (%)"),
        Para(f"{run.method_label} on {_int(m.get('num_images'))} test images of {len(run.classes)} classes"
             f"{TTA_TEXT.get(m.get('tta', 'none'), '')}. Overall is over images; each group is the mean of its "
             "classes' accuracies. Both shot rules are those of `metrics.json`."),
        Table(["shot rule", "overall", "many", "medium", "few"], rows, "shot-table"),
        Para("Classes per group:"),
        Table(["shot rule", "many", "medium", "few"], sizes, "group-sizes"),
    ]


def _scores_section(run: RunFiles) -> list[Block]:
    m = run.metrics
    blocks: list[Block] = [Heading("Other test metrics")]
    if "nll" not in m:
        return blocks + [Para("`metrics.json` predates them; `lpt eval --run DIR` prints them, computed from the "
                              "saved model.")]
    blocks += [
        Para("From the probabilities `softmax(loss.scale * logits)` (zero-shot CLIP: its own logit scale): "
             "top-5 accuracy; the mean (balanced), minimum (worst class) and harmonic mean of the per-class "
             "accuracies, over the classes in the test split; macro-F1; negative log-likelihood in nats per image; "
             f"expected calibration error over {m['reliability']['bins']} equal-width bins of the top-1 confidence "
             "(Guo et al. 2017). All in percent but the NLL."),
        Table(list(SCORE_METRICS.values()), [[fmt(m.get(k)) for k in SCORE_METRICS]], "score-table"),
    ]
    if sum(m["reliability"]["count"]):
        blocks.append(Image("report_reliability.png", plots.reliability_plot(m["reliability"]),
                            "Reliability diagram: accuracy of the test images in each bin of top-1 confidence"))
    return blocks


def _phase_section(run: RunFiles) -> list[Block]:
    phases = run.info.get("phases") or {}
    if not phases:
        return [Heading("Phases"), Para("`run.json` records no training phases (an imported run).")]
    backbone = run.info.get("backbone_params")
    rows = []
    for name, p in phases.items():
        n = p.get("trainable_params")
        share = f"{100.0 * n / backbone:.2f}" if n is not None and backbone else "-"
        rows.append([name, *(fmt(p.get(k)) for k in ACCURACIES), _int(n), share,
                     f"{p['train_seconds']:.1f}" if p.get("train_seconds") is not None else "-",
                     f"{p['images_per_s']:.1f}" if p.get("images_per_s") is not None else "-"])
    return [
        Heading("Phases"),
        Para("Test accuracy after each phase (standard rule), the parameters that trained in it, its training "
             "time and the training throughput of its last epoch."),
        Table(["phase", "overall", "many", "medium", "few", "trainable params", "% of backbone",
               "train seconds", "images/s"], rows, "phase-table"),
    ]


def _by_part(info: dict, backbone: int | None) -> str:
    """``shared_prompt 13,440 (0.50%), head 1,930 (0.07%)``: a phase's trainable parameters per part (run.json)."""
    phases = info.get("phases") or {}
    parts = phases[list(phases)[-1]].get("trainable_by_part") if phases else None
    if not parts:
        return "-"
    share = (lambda n: f" ({100.0 * n / backbone:.2f}%)") if backbone else (lambda n: "")
    return ", ".join(f"{part} {n:,}{share(n)}" for part, n in parts.items())


def _run_section(run: RunFiles) -> list[Block]:
    info, bb = run.info, run.info.get("backbone") or {}
    backbone = info.get("backbone_params")
    total = run.trained_params
    facts = [
        ("method", run.method_label),
        ("backbone", f"{bb.get('name', run.config.get('model', {}).get('backbone', '-'))}"),
        ("weights", f"{bb.get('source', '-')}, fingerprint {bb.get('fingerprint', '-')}"),
        ("backbone parameters", _int(backbone)),
        ("trained parameters (all phases)", _int(total) + (f" ({100.0 * total / backbone:.2f}% of the backbone)"
                                                           if total is not None and backbone else "")),
        ("trained in the last phase, by part", _by_part(info, backbone)),
        ("device", f"{info.get('device', '-')} x {info.get('world_size', 1)}"),
        ("wall time", f"{info['wall_seconds']:.1f} s" if "wall_seconds" in info else "-"),
        ("lpt version", str(info.get("lpt_version", "-"))),
    ]
    blocks: list[Block] = [Heading("Model and run"), Table(["", ""], [[k, v] for k, v in facts], "run-table")]
    if bb.get("source") == "random":
        blocks.append(Para(f"Note: backbone {bb.get('name')} was randomly initialised (no pretrained weights): "
                           "the numbers show the machinery, not what LPT does with a pretrained ViT."))
    return blocks


def _per_class_section(run: RunFiles, stats: dict | None) -> list[Block]:
    per_class = run.metrics.get("per_class") or []
    blocks: list[Block] = [Heading("Per-class accuracy")]
    if len(per_class) != len(run.classes):
        return blocks + [Para("`metrics.json` has no per-class accuracies.")]
    blocks.append(Image("report_per_class.png", plots.per_class_plot(per_class, run.train_counts, run.classes),
                        "Per-class test accuracy against training images, classes sorted by count"))
    if len(run.classes) > MAX_CLASS_ROWS:
        return blocks + [Para(f"{len(run.classes):,} classes: the per-class accuracies are in `metrics.json`.")]
    groups = shot_groups(run.train_counts)
    header = ["rank", "label", "class", "training images", "group", "accuracy"]
    if stats is not None:
        header.append("most frequent best group (share %)")
    rows = []
    for rank, c in enumerate(plots.frequency_order(run.train_counts), 1):
        row = [str(rank), str(c), run.classes[c], str(run.train_counts[c]), groups[c], fmt(per_class[c])]
        if stats is not None:
            share = stats["best"][c]
            row.append("-" if np.isnan(share).all() else f"{int(np.nanargmax(share))} ({100 * np.nanmax(share):.1f})")
        rows.append(row)
    return blocks + [Table(header, rows, "per-class-table")]


def _matching_section(run: RunFiles, stats: dict | None, why_not: str) -> list[Block]:
    blocks: list[Block] = [Heading("Prompt matching")]
    if stats is None:
        return blocks + [Para(why_not)]
    m = stats["pool_size"]
    summary = [
        ["best match", f"{stats['entropy_best']:.3f}" if stats["entropy_best"] is not None else "-",
         str(stats["unused_best"])],
        [f"any of the top {stats['top_k']}", f"{stats['entropy_topk']:.3f}" if stats["entropy_topk"] is not None
         else "-", str(stats["unused_topk"])],
    ]
    usage = [[str(j), str(int(stats["usage_best"][j])), str(int(stats["usage_topk"][j]))] for j in range(m)]
    return blocks + [
        Para(f"Each test image selects the top {stats['top_k']} of {m} group prompts by the cosine of its "
             "phase-1 query with the keys. The heat maps give, for each class (rows, sorted by training count), "
             "the share of its test images whose best and second-best match is each group (each row sums to 1). "
             "Normalised entropy of group usage is 1 when all groups are used equally and 0 when one group "
             "takes every image."),
        Table(["selection", "normalised entropy of group usage", f"unused groups (of {m})"], summary,
              "matching-table"),
        Image("report_matching.png", plots.matching_plot(stats["best"], stats["second"], stats["usage_best"],
                                                         stats["usage_topk"], run.train_counts, run.classes),
              "Share of each class's test images matched to each group, and group usage"),
        Table(["group", "images with it as best match", "images with it in the top-k"], usage, "usage-table"),
    ]


def _curves_section(run: RunFiles) -> list[Block]:
    blocks: list[Block] = [Heading("Learning curves")]
    if not run.epochs:
        return blocks + [Para("`metrics.jsonl` holds no training epochs.")]
    val = {(v["phase"], v["epoch"]): v["val"].get("overall") for v in run.vals}
    rows = [[r["phase"], str(r["epoch"]), f"{r['loss']:.4f}", fmt(r.get("train_acc")), f"{r.get('lr', 0):.3g}",
             f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-"]
            + ([fmt(val.get((r["phase"], r["epoch"])))] if val else []) for r in run.epochs]
    caption = "Training loss and accuracy per epoch; " + ("squares: validation accuracy; " if val else "")
    return blocks + [
        Image("report_curves.png", plots.curves_plot(run.epochs, run.evals, run.vals),
              caption + "stars: test accuracy of the epoch each phase kept (its last, or its best on validation)"),
        Table(["phase", "epoch", "loss", "train accuracy", "lr", "images/s"] + (["validation accuracy"] if val else []),
              rows, "epoch-table"),
        *[Para(_kept(e["phase"], e["eval"]["selected"], run.epochs)) for e in run.evals if "selected" in e["eval"]],
    ]


def _kept(phase: str, selected: dict, epochs: list[dict]) -> str:
    """What ``select: best_val`` kept of a phase, in words."""
    last = max((r["epoch"] for r in epochs if r["phase"] == phase), default=None)
    which = "its last too" if selected["epoch"] == last else "not its last"
    return (f"{phase} kept its best validation epoch, {selected['epoch']} (validation accuracy "
            f"{fmt(selected['overall'])}), {which} (`select: best_val`); the test accuracy is that epoch's.")


def _matching(run: RunFiles) -> tuple[dict | None, str]:
    """Matching statistics of the final evaluation, or None and the sentence that says why not."""
    groups = None if run.predictions is None else run.predictions.get("groups")
    if groups is not None and len(groups):
        pool = int(run.config.get("model", {}).get("pool_size", int(groups.max()) + 1))
        return matching_stats(groups, run.predictions["labels"], len(run.classes), pool), ""
    if run.metrics.get("phase") == 2:  # a phase-2 model selects groups, whichever method trained it
        return None, (f"`{PREDICTIONS}` is missing, so the groups each image selected are unknown; "
                      "`lpt report` computes it where the test data is available.")
    return None, (f"This run's final model ({run.method_label}) selects no group prompts: prompt matching "
                  "statistics exist for phase-2 LPT only.")


def build_report(run: RunFiles) -> list[Block]:
    """The blocks of a run's report."""
    stats, why_not = _matching(run)
    config_text = (run.path / "config.yaml").read_text()
    return [
        *_accuracy_section(run), *_scores_section(run), *_phase_section(run), *_run_section(run),
        *_per_class_section(run, stats),
        *_matching_section(run, stats, why_not), *_curves_section(run),
        Heading("Configuration"), Para("The resolved `config.yaml`: the run is fully described by it."),
        Code(config_text),
    ]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: list[Block]) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += [f"## {b.text}", ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Image):
            out += [f"![{b.caption}]({b.name})", ""]
        elif isinstance(b, Code):
            out += ["```yaml", b.text.rstrip("\n"), "```", ""]
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then render `code` spans (the only markup the paragraphs use)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block}
figcaption{color:#555;font-size:0.9em;margin-bottom:1.5em}pre{background:#f6f6f6;padding:1em;overflow:auto}"""


def to_html(title: str, blocks: list[Block]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h2>{html.escape(b.text)}</h2>")
        elif isinstance(b, Para):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            table = [f'<table id="{b.id}"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
                     + "</tr></thead><tbody>"]
            table += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in b.rows]
            out.append("".join(table) + "</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.caption)}">'
                       f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
        elif isinstance(b, Code):
            out.append(f"<pre>{html.escape(b.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (with its PNGs) into a finished run directory.

    Returns:
        the paths of report.html and report.md.
    """
    run = read_run(run_dir)
    blocks = build_report(run)
    title = f"lpt report: {run.path.resolve().name}"
    for b in blocks:
        if isinstance(b, Image):
            atomic_write_bytes(run.path / b.name, b.png)
    atomic_write_text(run.path / REPORT_MD, to_markdown(title, blocks))
    atomic_write_text(run.path / REPORT_HTML, to_html(title, blocks))
    return run.path / REPORT_HTML, run.path / REPORT_MD


def compute_predictions(run_dir: str | Path, device: str = "auto") -> Path:
    """Evaluate a run on its test split and save ``predictions.npz`` (for runs written before reports
    existed, or imported ones); needs the test data."""
    run = load_run(run_dir, resolve_device(device))
    out = evaluate_predictions(run.config, run.model, build_test_dataset(run.config.data),
                               device=next(run.model.parameters()).device)
    return write_predictions(run_dir, out)


def lacks_predictions(run_dir: str | Path) -> bool:
    """True for a finished phase-2 LPT run without ``predictions.npz`` (its report would miss prompt matching)."""
    run = read_run(run_dir)
    return run.predictions is None and run.metrics.get("phase") == 2
