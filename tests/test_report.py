"""Run reports, prompt matching statistics, `lpt analyze` and the training logs, on one tiny trained run.

The run is trained once for the module (two LPT phases on tiny Fashion-MNIST-format data, progress
bars on, stderr captured as a non-interactive log would be); every test reads it or a copy.
"""

import contextlib
import copy
import csv
import io
import json
import logging
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

import lpt
from lpt.analysis.matching import matching_stats, normalised_entropy
from lpt.run.files import read_predictions, write_predictions
from lpt.analysis.report import write_report
from lpt.metrics import SCORE_METRICS
from lpt.cli import main
from lpt.utils import setup_logging

CHROMIUM = Path("/usr/bin/chromium")
# Tiny model of tests/conftest.py: D = 32, L = 3 blocks, prompt_len 2, pool 4, K = 1, 10 classes.
SHARED = 3 * 2 * 32  # shared prompt [L, P, D] = 192
POOL = 4 * (3 - 1) * 2 * 32 + 4 * 32  # group prompts [m, L - K, P, D] = 512, keys [m, D] = 128
HEAD = 10 * 32  # cosine classifier [C, D] = 320
TRAIN_COUNTS = [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]  # int(40 * 10 ** (-i / 9))
GROUPS = ["medium"] * 3 + ["few"] * 7  # 20 <= n <= 100 medium, n < 20 few; no class above 100


def fmt(v):
    return "-" if v is None else f"{v:.2f}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_fmnist):
    """(run directory, everything the training wrote to a non-interactive stderr)."""
    from tests.conftest import tiny_run_overrides

    out = tmp_path_factory.mktemp("report") / "run"
    overrides = tiny_run_overrides(tiny_fmnist, progress=True)
    setup_logging(logging.WARNING)  # the log handler keeps the stream it was made with: not our capture
    stderr = io.StringIO()  # not a terminal, as when stderr goes to a file or a pipe
    with contextlib.redirect_stderr(stderr):
        assert main(["--quiet", "train", "--config", "demo", "--out", str(out), *overrides]) == 0
    return out, stderr.getvalue()


@pytest.fixture
def run_dir(trained):
    return trained[0]


def read_json(path):
    return json.loads(Path(path).read_text())


def md_tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown tables of a report keyed by their header's first two cells: rows of cells, header first."""
    tables, current = {}, None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if current is None:
                current = [cells]
            elif not set(line) <= set("|-"):
                current.append(cells)
        elif current is not None:
            tables[" / ".join(current[0][:2])] = current
            current = None
    return tables


class HtmlTables(HTMLParser):
    """Tables by id (rows of cell texts, header row first) and the src of every <img>."""

    def __init__(self, text):
        super().__init__()
        self.tables, self.images, self.table, self.cell = {}, [], None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self.table is not None:
            self.table.append([])
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "img":
            self.images.append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.table[-1].append(self.cell)
            self.cell = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


# --- what training leaves behind ---------------------------------------------------------------------------------


def test_train_writes_report_and_predictions(run_dir):
    for name in ("report.html", "report.md", "report_per_class.png", "report_matching.png", "report_curves.png",
                 "report_reliability.png", "predictions.npz"):
        assert (run_dir / name).is_file(), name
    md = (run_dir / "report.md").read_text()
    for png in ("report_per_class.png", "report_matching.png", "report_curves.png", "report_reliability.png"):
        assert f"]({png})" in md  # the Markdown report shows the images written beside it
    pred = read_predictions(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    assert len(pred["labels"]) == metrics["num_images"] == 80
    assert 100 * np.mean(pred["preds"] == pred["labels"]) == pytest.approx(metrics["overall"])
    assert pred["groups"].shape == (80, 2)


def test_non_interactive_training_log_has_no_progress_bars(trained):
    _, stderr = trained
    assert "\r" not in stderr and "it/s" not in stderr and "s/it" not in stderr, stderr[:500]
    for line in stderr.splitlines():  # only log records (the random-backbone warning), nothing else
        assert not line.strip() or re.match(r"\d\d:\d\d:\d\d lpt [A-Z]+ ", line), line


def test_progress_bar_does_appear_on_a_terminal(run_dir):
    """The control for the test above: the same code does draw a bar when stderr is a terminal."""
    from lpt.data import build_test_dataset
    from lpt.evaluation import evaluate

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    run = lpt.load_run(run_dir)
    term = Terminal()
    with contextlib.redirect_stderr(term):
        evaluate(run.model, build_test_dataset(run.config.data), device=torch.device("cpu"), batch_size=32,
                 progress=True, desc="eval")
    assert "eval" in term.getvalue() and "\r" in term.getvalue()


def test_tensorboard_gets_every_epoch_record(run_dir):
    pytest.importorskip("tensorboard", reason="tensorboard is the optional extra lpt[tensorboard]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 1]
    for r in epochs:
        for key in ("loss", "train_acc", "lr", "images_per_s"):
            scalars = {s.step: s.value for s in events.Scalars(f"{r['phase']}/{key}")}
            assert scalars[r["epoch"]] == pytest.approx(r[key], rel=1e-6)  # stored as float32


def test_tensorboard_hook_is_a_no_op_without_tensorboard(monkeypatch, tmp_path):
    import sys

    from lpt.run.tracking import TensorBoardLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    hook = TensorBoardLog(str(tmp_path / "tb"))
    hook.record({"phase": "phase1", "epoch": 1, "loss": 1.0})
    hook.close("finished")
    assert hook.writer is None and not (tmp_path / "tb").exists()


def test_report_failure_only_warns(run_dir, tmp_path, monkeypatch):
    from lpt import cli

    def broken(_):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("lpt.analysis.report.write_report", broken)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("lpt").addHandler(handler)
    try:
        cli._write_report(tmp_path)  # returns: the run it follows is already saved
    finally:
        logging.getLogger("lpt").removeHandler(handler)
    assert [r.levelname for r in records] == ["WARNING"] and "disk on fire" in records[0].getMessage()


# --- the report's numbers -----------------------------------------------------------------------------------------


def test_markdown_report_numbers_equal_metrics_json(run_dir):
    metrics, info = read_json(run_dir / "metrics.json"), read_json(run_dir / "run.json")
    tables = md_tables((run_dir / "report.md").read_text())
    shot = {row[0].split()[0]: row[1:] for row in tables["shot rule / overall"][1:]}
    assert shot["standard"] == [fmt(metrics[g]) for g in ("overall", "many", "medium", "few")]
    assert shot["official"] == [fmt(metrics["overall"])] + [fmt(metrics["official"][g]) for g in
                                                            ("many", "medium", "few")]
    for cell, value in zip(shot["standard"], [metrics[g] for g in ("overall", "many", "medium", "few")]):
        assert (cell == "-") if value is None else float(cell) == pytest.approx(value, abs=0.005)

    per_class = tables["rank / label"]
    assert per_class[0][:6] == ["rank", "label", "class", "training images", "group", "accuracy"]
    labels = [int(r[1]) for r in per_class[1:]]
    assert labels == list(range(10))  # counts already decrease with the label
    assert [int(r[3]) for r in per_class[1:]] == TRAIN_COUNTS
    assert [r[4] for r in per_class[1:]] == GROUPS
    assert [r[5] for r in per_class[1:]] == [fmt(metrics["per_class"][c]) for c in labels]

    phases = {row[0]: row[1:] for row in tables["phase / overall"][1:]}
    assert list(phases) == ["phase1", "phase2"]
    assert phases["phase2"][:4] == shot["standard"]  # the final phase is metrics.json
    backbone = info["backbone_params"]
    for name, trainable in (("phase1", SHARED + HEAD), ("phase2", POOL + HEAD)):  # 512 and 960
        row, p = phases[name], info["phases"][name]
        assert row[:4] == [fmt(p[g]) for g in ("overall", "many", "medium", "few")]
        assert row[4] == f"{trainable:,}" and row[5] == f"{100 * trainable / backbone:.2f}"
        assert row[7] == f"{p['images_per_s']:.1f}"
    facts = dict(tables[" / "][1:])
    total = SHARED + POOL + HEAD  # 1,152: every tensor that trained in one of the phases
    assert facts["trained parameters (all phases)"] == f"{total:,} ({100 * total / backbone:.2f}% of the backbone)"
    assert facts["backbone parameters"] == f"{backbone:,}"
    assert facts["backbone"] == info["backbone"]["name"] and info["backbone"]["fingerprint"] in facts["weights"]

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = tables["phase / epoch"][1:]
    assert [(r[0], int(r[1]), r[2]) for r in epochs] == [(e["phase"], e["epoch"], f"{e['loss']:.4f}")
                                                         for e in records if "epoch" in e]


def test_html_report_numbers_equal_metrics_json(run_dir):
    metrics = read_json(run_dir / "metrics.json")
    page = HtmlTables((run_dir / "report.html").read_text())
    shot = {row[0].split()[0]: row[1:] for row in page.tables["shot-table"][1:]}
    assert shot["standard"] == [fmt(metrics[g]) for g in ("overall", "many", "medium", "few")]
    assert shot["official"][1:] == [fmt(metrics["official"][g]) for g in ("many", "medium", "few")]
    per_class = {int(r[1]): r[5] for r in page.tables["per-class-table"][1:]}
    assert per_class == {c: fmt(a) for c, a in enumerate(metrics["per_class"])}
    # the Markdown twin holds the same tables
    md = md_tables((run_dir / "report.md").read_text())
    assert md["shot rule / overall"] == page.tables["shot-table"]
    assert md["rank / label"] == page.tables["per-class-table"]
    # the other metrics, each from metrics.json
    assert page.tables["score-table"] == [list(SCORE_METRICS.values()), [fmt(metrics[k]) for k in SCORE_METRICS]]
    assert md["top-5 / balanced"] == page.tables["score-table"]


def test_html_report_is_self_contained(run_dir):
    text = (run_dir / "report.html").read_text()
    page = HtmlTables(text)
    assert len(page.images) == 4 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert not re.search(r"<(script|link|iframe)|(src|href)=\"(?!data:)", text)  # nothing to fetch


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (Debian package: chromium)")
def test_html_report_renders_in_chromium_with_every_image(run_dir, tmp_path):
    # A copy of the report with a script that records each image's state, plus one broken image as a control.
    check = ('<img id="control" src="data:image/png;base64,AAAA"><script>window.addEventListener("load", () => {'
             'const r = [...document.images].map(i => [i.id, i.complete, i.naturalWidth]);'
             'const p = document.createElement("pre"); p.id = "imgcheck"; p.textContent = JSON.stringify(r);'
             'document.body.appendChild(p);});</script></body>')
    page = tmp_path / "check.html"
    page.write_text((run_dir / "report.html").read_text().replace("</body>", check))
    dom = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="imgcheck">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    states = json.loads(found.group(1).replace("&quot;", '"'))
    assert states[-1] == ["control", True, 0]  # a broken image does show up as width 0
    assert len(states) == 5 and all(complete and width > 0 for _, complete, width in states[:-1]), states


# --- prompt matching ---------------------------------------------------------------------------------------------


def test_matching_statistics_by_hand():
    groups = np.array([[0, 1], [0, 2], [1, 0], [2, 1]])  # four images, top-2 of m = 4 groups
    labels = np.array([0, 0, 0, 1])  # class 2 has no image
    stats = matching_stats(groups, labels, num_classes=3, pool_size=4)
    # class 0 best: 0, 0, 1; second: 1, 2, 0. class 1 best: 2; second: 1.
    np.testing.assert_allclose(stats["best"][:2], [[2 / 3, 1 / 3, 0, 0], [0, 0, 1, 0]])
    np.testing.assert_allclose(stats["second"][:2], [[1 / 3, 1 / 3, 1 / 3, 0], [0, 1, 0, 0]])
    assert np.isnan(stats["best"][2]).all()
    assert stats["usage_best"].tolist() == [2, 1, 1, 0] and stats["usage_topk"].tolist() == [3, 3, 2, 0]
    # best usage p = (1/2, 1/4, 1/4, 0): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2; / ln 4 = 0.75
    assert stats["entropy_best"] == pytest.approx(0.75)
    # top-k usage p = (3/8, 3/8, 2/8, 0): H = -(2 * 3/8 ln 3/8 + 1/4 ln 1/4)
    assert stats["entropy_topk"] == pytest.approx(-(0.75 * math.log(3 / 8) + 0.25 * math.log(0.25)) / math.log(4))
    assert stats["unused_best"] == stats["unused_topk"] == 1
    assert normalised_entropy([5, 5, 5]) == pytest.approx(1.0) and normalised_entropy([7, 0, 0]) == 0.0


def test_matching_statistics_agree_with_model_match(run_dir):
    from lpt.data import build_test_dataset

    run = lpt.load_run(run_dir)
    test = build_test_dataset(run.config.data)
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = np.asarray(test.targets)
    groups = run.model.match(images).numpy()
    saved = read_predictions(run_dir)
    assert np.array_equal(saved["groups"], groups) and np.array_equal(saved["labels"], labels)

    stats = matching_stats(groups, labels, num_classes=10, pool_size=4)
    np.testing.assert_allclose(stats["best"].sum(1), 1.0)  # every class has 8 test images
    np.testing.assert_allclose(stats["second"].sum(1), 1.0)
    for c in range(10):
        for j in range(4):
            assert stats["best"][c, j] == pytest.approx(np.mean(groups[labels == c, 0] == j))
            assert stats["second"][c, j] == pytest.approx(np.mean(groups[labels == c, 1] == j))

    tables = md_tables((run_dir / "report.md").read_text())
    usage = tables["group / images with it as best match"][1:]
    assert [[int(x) for x in row] for row in usage] == [
        [j, int((groups[:, 0] == j).sum()), int((groups == j).sum())] for j in range(4)]
    entropy = dict((r[0], r[1:]) for r in tables["selection / normalised entropy of group usage"][1:])
    p = np.bincount(groups[:, 0], minlength=4) / len(groups)
    h = -sum(x * math.log(x) for x in p if x > 0) / math.log(4)
    assert entropy["best match"] == [f"{h:.3f}", str(int((p == 0).sum()))]
    dominant = {int(r[1]): r[6] for r in tables["rank / label"][1:]}
    for c in range(10):
        share = np.bincount(groups[labels == c, 0], minlength=4) / 8
        assert dominant[c] == f"{int(share.argmax())} ({100 * share.max():.1f})"


def test_report_without_groups_says_so(run_dir, tmp_path):
    from lpt.analysis.report import write_report

    other = tmp_path / "vpt"
    shutil.copytree(run_dir, other)
    info, metrics = read_json(other / "run.json"), read_json(other / "metrics.json")
    (other / "run.json").write_text(json.dumps(info | {"method": "vpt"}))
    (other / "metrics.json").write_text(json.dumps(metrics | {"phase": 1}))
    pred = read_predictions(other)
    write_predictions(other, {k: v for k, v in pred.items() if k != "groups"})
    (other / "report_matching.png").unlink()
    write_report(other)
    md = (other / "report.md").read_text()
    assert "selects no group prompts: prompt matching statistics exist for phase-2 LPT only" in md
    assert "report_matching.png" not in md and not (other / "report_matching.png").exists()
    assert len(HtmlTables((other / "report.html").read_text()).images) == 3


def test_report_of_a_metrics_json_without_the_other_metrics_says_so(run_dir, tmp_path):
    other = tmp_path / "older"
    shutil.copytree(run_dir, other)
    metrics = read_json(other / "metrics.json")
    (other / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items()
                                                    if k not in SCORE_METRICS and k != "reliability"}))
    (other / "report_reliability.png").unlink()
    write_report(other)
    md = (other / "report.md").read_text()
    assert "`metrics.json` predates them; `lpt eval --run DIR` prints them, computed from the saved model." in md
    assert "report_reliability.png" not in md and not (other / "report_reliability.png").exists()


def test_lpt_report_recomputes_missing_predictions(run_dir, tmp_path, capsys):
    other = tmp_path / "old"
    shutil.copytree(run_dir, other)
    for name in ("predictions.npz", "report.html", "report.md"):
        (other / name).unlink()
    assert main(["report", str(other), "--device", "cpu"]) == 0
    assert "report.html" in capsys.readouterr().out
    before, after = read_predictions(run_dir), read_predictions(other)
    for key in ("labels", "preds", "groups"):
        assert np.array_equal(before[key], after[key]), key
    assert (other / "report.md").read_text() == (run_dir / "report.md").read_text().replace(
        f"lpt report: {run_dir.name}", f"lpt report: {other.name}")


def test_lpt_report_recomputes_predictions_with_the_runs_tta(run_dir, tmp_path):
    """A run evaluated with ``tta=flip`` gets the flip ensemble's predictions, as training would have written."""
    from lpt.data import build_test_dataset
    from lpt.evaluation import evaluate, tta_outputs
    from lpt.run.load import load_run

    other = tmp_path / "flip"
    shutil.copytree(run_dir, other)
    (other / "predictions.npz").unlink()
    config = other / "config.yaml"
    assert "\ntta: none\n" in config.read_text()
    config.write_text(config.read_text().replace("\ntta: none\n", "\ntta: flip\n"))
    assert main(["report", str(other), "--device", "cpu"]) == 0
    run = load_run(other, torch.device("cpu"))
    flip = evaluate(run.model, build_test_dataset(run.config.data), tta_outputs("flip"), device=torch.device("cpu"),
                    progress=False)
    after = read_predictions(other)
    for key in ("labels", "preds", "top5", "groups"):
        assert np.array_equal(after[key], flip[key]), key
    assert not np.array_equal(after["preds"], read_predictions(run_dir)["preds"])  # the ensemble changes some


def test_the_report_says_how_a_test_time_ensemble_evaluated(run_dir, tmp_path):
    assert "mean logits" not in (run_dir / "report.md").read_text()  # tta: none, the plain image
    other = tmp_path / "crops"
    shutil.copytree(run_dir, other)
    metrics = read_json(other / "metrics.json")
    (other / "metrics.json").write_text(json.dumps(metrics | {"tta": "crops"}))
    md = write_report(other)[1].read_text()
    assert "test images of 10 classes, each predicted from the mean logits of five crops" in md


def test_lpt_report_refuses_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "classes.json").write_text('{"classes": ["a"], "train_counts": [1]}')
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


# --- lpt analyze and lpt compare on the same run -----------------------------------------------------------------


def _reference_features(run, dataset):
    """Features computed here with timm's and the model's own calls, not through lpt.analysis."""
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    vit = run.model.backbone
    with torch.no_grad():
        return {"plain": vit.forward_head(vit.forward_features(x), pre_logits=True).numpy(),
                "phase1": run.model.phase1_feature(x).numpy(),
                "phase2": run.model.forward_features(x)["feature"].numpy()}, np.asarray(dataset.targets)


def test_analyze_matches_an_independent_computation(run_dir, capsys):
    from sklearn.neighbors import KNeighborsClassifier

    from lpt.data import build_datasets, build_transform

    assert main(["analyze", str(run_dir), "--k", "1", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    record = read_json(run_dir / "analysis.json")
    assert list(record["sources"]) == ["plain", "phase1", "phase2"] and record["k"] == 1
    assert (run_dir / "analysis_lda.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    run = lpt.load_run(run_dir)
    splits = build_datasets(run.config.data)
    train = copy.copy(splits.train)
    train.transform = build_transform(run.config.data, train=False)
    train_x, train_y = _reference_features(run, train)
    test_x, test_y = _reference_features(run, splits.test)
    assert record["num_train"] == len(train_y) == sum(TRAIN_COUNTS) and record["num_test"] == len(test_y) == 80
    for source, r in record["sources"].items():
        knn = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute").fit(train_x[source], train_y)
        assert r["knn"]["overall"] == pytest.approx(100 * np.mean(knn.predict(test_x[source]) == test_y))
        for split, (x, y) in (("train", (train_x[source], train_y)), ("test", (test_x[source], test_y))):
            centres = np.stack([x[y == c].mean(0) for c in range(10)])
            radii = [np.linalg.norm(x[y == c] - centres[c], axis=1).mean() for c in range(10)]
            pairs = [np.linalg.norm(centres[a] - centres[b]) for a in range(10) for b in range(a + 1, 10)]
            assert r[split]["intra"] == pytest.approx(radii, rel=1e-4)
            assert r[split]["inter"] == pytest.approx(np.mean(pairs), rel=1e-4)
            assert r[split]["gamma"] == pytest.approx(sum(radii) / (10 * np.mean(pairs)), rel=1e-4)
        assert f"{r['knn']['overall']:.2f}" in printed and f"{r['test']['gamma']:.3f}" in printed


def test_compare_reads_the_run(run_dir, tmp_path, capsys):
    assert main(["compare", str(run_dir), "--out", str(tmp_path / "cmp")]) == 0
    metrics, info = read_json(run_dir / "metrics.json"), read_json(run_dir / "run.json")
    (row,) = list(csv.DictReader((tmp_path / "cmp.csv").open()))
    assert row["method"] == "LPT phase 2" and row["backbone"] == info["backbone"]["name"]
    for g in ("overall", "medium", "few"):
        assert float(row[g]) == metrics[g]  # full precision in the CSV
    assert row["many"] == "" and metrics["many"] is None  # no class has more than 100 training images
    assert int(row["trainable_params"]) == SHARED + POOL + HEAD
    assert float(row["images_per_s"]) == info["phases"]["phase2"]["images_per_s"]
    assert row["tta"] == metrics["tta"] == "none"
    printed = capsys.readouterr().out
    assert f"| LPT phase 2 | {info['backbone']['name']} | none | {fmt(metrics['overall'])} | - |" in printed
