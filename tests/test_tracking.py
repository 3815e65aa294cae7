"""Experiment tracking (log.wandb, log.mlflow): what W&B wrote in offline mode, read back from its own files, and
what MLflow stored in a SQLite database, read back through MlflowClient, against the run's metrics.jsonl; a
resumed run continuing the same tracked runs; concurrent runs of a group sharing one MLflow parent; and the
one-line error of a missing extra. Nothing of either library is mocked."""

import json
import logging
import multiprocessing
import os
import signal
import struct
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import lpt
from lpt.cli import main
from lpt.config import describe, from_dict, load_config, to_dict
from lpt.engine.trainer import Interrupted
from lpt.metrics import flat_metrics
from lpt.run import files
from lpt.run.tracking import MlflowLog, Trackers, WandbLog
from lpt.utils import log
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")
GROUP = "study 'a'"  # quotes that MLflow's filter language cannot hold in every form


def overrides(data, store, *extra):
    """Two LPT phases on the list data, validated every epoch, tracked by W&B (offline) and MLflow (SQLite)."""
    return ["data.source=list", "data.imbalance_ratio=1", "data.max_per_class=0", f"data.root={data}",
            f"data.train_list={data / 'train.txt'}", f"data.test_list={data / 'test.txt'}",
            f"data.val_list={data / 'val.txt'}", *TINY_MODEL, "phase1.epochs=2", "phase1.batch_size=16",
            "phase1.lr=0.5", "phase2.epochs=1", "phase2.batch_size=16", "phase2.lr=0.5", "eval_batch_size=40",
            "data.num_workers=0", "progress=false", "log.wandb.project=lpt-tests", "log.wandb.mode=offline",
            f"log.mlflow.tracking_uri=sqlite:///{store}/mlruns.db", f"log.group={GROUP}", *extra]


def client(store):
    return MlflowClient(f"sqlite:///{store}/mlruns.db")


def expected(run_dir):
    """What metrics.jsonl, metrics.json and the checkpoint say, named by hand: ({name: {epoch: value}} of the
    training and validation records, {name: value} of the phase evaluations and the final results)."""
    series, summary = {}, {}
    for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        phase = r["phase"]
        if "val" in r:
            for key in ("overall", "many", "medium", "few", "num_images"):
                if r["val"][key] is not None:
                    series.setdefault(f"{phase}/val/{key}", {})[r["epoch"]] = r["val"][key]
        elif "eval" in r:
            e = r["eval"]
            summary |= {f"{phase}/eval/{k}": e[k] for k in ("overall", "many", "medium", "few", "trainable_params",
                                                            "train_seconds", "images_per_s") if e[k] is not None}
            summary |= {f"{phase}/eval/trainable_by_part/{part}": n for part, n in e["trainable_by_part"].items()}
        else:
            for key in ("loss", "train_acc", "lr", "seconds", "images_per_s"):
                series.setdefault(f"{phase}/{key}", {})[r["epoch"]] = r[key]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary |= {f"final/{k}": v for k, v in flat_metrics(metrics).items() if v is not None}  # top-5, NLL, ECE too
    summary["final/trainable_params"] = files.read_run(run_dir).trained_params
    return series, summary


# ----------------------------------------------------------------------------- W&B's offline files


def wandb_records(path):
    """The protobuf records of a W&B transaction log (``run-ID.wandb``): a 7-byte header, then 32 KiB blocks of
    chunks (crc32 uint32, length uint16, type uint8: 1 whole, 2 first, 3 middle, 4 last), as LevelDB's log."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_run(offline_dir):
    """(run record, history rows, summary, exit code) of one offline run folder."""
    import wandb

    wandb.teardown()  # W&B's service process may still hold the end of the file: stop it (the next run starts one)
    (log_file,) = Path(offline_dir).glob("run-*.wandb")
    run, rows, summary, exit_code = None, [], {}, None
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
        elif kind == "summary":
            summary |= {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                        for item in record.summary.update}
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return run, rows, summary, exit_code


def wandb_series(rows):
    """{name: {epoch: value}} of history rows: each phase's values against that phase's epoch."""
    series = {}
    for row in rows:
        for name, value in row.items():
            phase = name.split("/")[0]
            if not name.startswith("_") and name != f"{phase}/epoch":
                series.setdefault(name, {})[row[f"{phase}/epoch"]] = value
    return series


def offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


# ----------------------------------------------------------------------------- one tracked run


@pytest.fixture(scope="module")
def tracked(list_data, tmp_path_factory):
    store = tmp_path_factory.mktemp("tracked")
    lpt.train(load_config("demo", overrides(list_data, store)), store / "run")
    return store / "run", store


def test_mlflow_run_holds_config_records_results_and_trainable_params(tracked):
    run_dir, store = tracked
    mlflow = client(store)
    run = mlflow.get_run(json.loads((run_dir / "tracking.json").read_text())["mlflow"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params == {key: str(value) for key, value, _ in describe(files.read_config(run_dir))}
    series, summary = expected(run_dir)
    assert set(run.data.metrics) == set(series) | set(summary)
    for name, points in series.items():
        assert {m.step: m.value for m in mlflow.get_metric_history(run.info.run_id, name)} == points, name
    assert {name: run.data.metrics[name] for name in summary} == summary
    assert summary["final/trainable_params"] == 3 * 2 * 32 + 4 * 2 * 2 * 32 + 4 * 32 + 10 * 32  # prompts, keys, head
    parent = mlflow.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == GROUP and parent.data.tags["lpt.group"] == GROUP


def test_wandb_offline_files_hold_config_records_results_and_group(tracked):
    run_dir, _ = tracked
    (offline,) = offline_runs(run_dir)
    run, rows, summary, exit_code = wandb_run(offline)
    assert run.run_id == json.loads((run_dir / "tracking.json").read_text())["wandb"]
    assert run.project == "lpt-tests" and run.run_group == GROUP and run.display_name == "run" and exit_code == 0
    config = {item.key: json.loads(item.value_json) for item in run.config.update if item.key != "_wandb"}
    assert config == to_dict(files.read_config(run_dir))
    series, final = expected(run_dir)
    assert wandb_series(rows) == series
    assert {name: summary[name] for name in final} == final


def test_tensorboard_plots_the_same_series(tracked):
    """TensorBoard gets the epochs' and the validations' scalars under the same names (stored as float32)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = tracked
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    series, _ = expected(run_dir)
    assert set(events.Tags()["scalars"]) == set(series)
    for name, points in series.items():
        assert {e.step: e.value for e in events.Scalars(name)} == pytest.approx(points, rel=1e-6), name


def test_wandb_group_of_its_own_wins_over_log_group(tmp_path):
    cfg = from_dict({"log": {"group": "study", "wandb": {"project": "p", "mode": "offline", "group": "mine"}}})
    WandbLog(cfg, tmp_path, None).close("finished")
    assert wandb_run(offline_runs(tmp_path)[0])[0].run_group == "mine"


# ----------------------------------------------------------------------------- resuming


def test_a_resumed_run_continues_the_same_tracked_runs(list_data, tmp_path, monkeypatch):
    out, append = tmp_path / "run", files.append_record

    def sigterm_after_epoch_1(run_dir, record):  # as if SIGTERM came during phase 1's first epoch record
        append(run_dir, record)
        if record.get("epoch") == 1 and "loss" in record and record["phase"] == "phase1":
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(files, "append_record", sigterm_after_epoch_1)
    folder = tmp_path / "tracking"  # a folder as log.mlflow.tracking_uri: lpt keeps mlflow.db in it
    with pytest.raises(Interrupted):
        lpt.train(load_config("demo", overrides(list_data, tmp_path, f"log.mlflow.tracking_uri={folder}")), out)
    monkeypatch.undo()
    ids = json.loads((out / "tracking.json").read_text())
    mlflow = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    assert mlflow.get_run(ids["mlflow"]).info.status == "KILLED"
    lpt.train(files.read_config(out), out, resume=True)

    assert json.loads((out / "tracking.json").read_text()) == ids
    run = mlflow.get_run(ids["mlflow"])
    assert run.info.status == "FINISHED"
    assert [r.info.run_id for r in mlflow.search_runs([run.info.experiment_id]) if "lpt.parent" not in r.data.tags] \
        == [ids["mlflow"]]
    series, _ = expected(out)
    assert {m.step: m.value for m in mlflow.get_metric_history(ids["mlflow"], "phase1/loss")} \
        == series["phase1/loss"] and len(series["phase1/loss"]) == 2  # epoch 1 before the stop, 2 after
    first, second = (wandb_run(d) for d in offline_runs(out))
    assert first[0].run_id == second[0].run_id == ids["wandb"] and (first[3], second[3]) == (1, 0)
    assert wandb_series(first[1] + second[1]) == series


# ----------------------------------------------------------------------------- a study's runs at once


def _group_config(store, group):
    return from_dict({"log": {"group": group, "mlflow": {"tracking_uri": f"sqlite:///{store}/mlruns.db"}}})


def _open_group_run(store, group, run_name, barrier):
    cfg = _group_config(store, group)
    barrier.wait()
    tracker = MlflowLog(cfg, Path(store) / run_name, None)
    tracker.close("finished")
    return tracker.id


def test_concurrent_runs_of_a_group_nest_under_one_mlflow_parent(tmp_path):
    """Three processes start runs of one group at once: on a new database (which MLflow creates on first use),
    then of another group on the database made (all look for the group's parent at once, none finds it). Where
    a group has two parents (runs that raced on a tracking server), a new run takes the first made."""
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager, context.Pool(3) as pool:
        barrier = manager.Barrier(3)
        ids = {group: pool.starmap(_open_group_run, [(tmp_path, group, f"run{i}", barrier) for i in range(3)])
               for group in ("first", "second")}
    mlflow = client(tmp_path)
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("lpt").experiment_id])
    for group, started in ids.items():
        (parent,) = [r for r in runs if "lpt.parent" in r.data.tags and r.data.tags["lpt.group"] == group]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.run_id for r in children) == sorted(started), group
    experiment = runs[0].info.experiment_id
    later, first = (mlflow.create_run(experiment, start_time=t, tags={"lpt.parent": "true", "lpt.group": "raced"})
                    for t in (2_000, 1_000))  # the first made stored second
    tracker = MlflowLog(_group_config(tmp_path, "raced"), tmp_path / "late", None)
    assert mlflow.get_run(tracker.id).data.tags["mlflow.parentRunId"] == first.info.run_id != later.info.run_id


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("module, key, extra", [
    ("wandb", "log.wandb.project", "wandb"),
    ("mlflow", "log.mlflow.tracking_uri", "mlflow"),
    ("sqlalchemy", "log.mlflow.tracking_uri", "mlflow"),
])
def test_a_missing_extra_is_one_line_saying_what_to_install(module, key, extra, tiny_overrides, tmp_path,
                                                            monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    out = tmp_path / "run"
    assert main(["train", "--config", "demo", "--out", str(out), *tiny_overrides, f"{key}={tmp_path / 'x'}"]) == 2
    assert capsys.readouterr().err == (f"lpt train: error: config key '{key}' is set but {module} is not installed; "
                                       f"pip install 'lpt[{extra}]'\n")
    assert not out.exists()


def test_a_tracker_that_fails_is_dropped_and_the_others_go_on():
    class Broken:
        def record(self, record):
            raise RuntimeError("tracking server unreachable\ntraceback follows")

    class Kept:
        records = []

        def record(self, record):
            self.records.append(record)

    broken, kept = Broken(), Kept()
    trackers = Trackers([broken, kept])
    warnings: list[logging.LogRecord] = []  # a handler of our own: lpt's logger may not propagate to caplog
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append
    log.addHandler(handler)
    try:
        trackers.record({"phase": "phase1", "epoch": 1, "loss": 1.0})
        trackers.record({"phase": "phase1", "epoch": 2, "loss": 0.5})
    finally:
        log.removeHandler(handler)
    assert trackers.trackers == [kept] and [r["epoch"] for r in kept.records] == [1, 2]
    assert [w.getMessage() for w in warnings] == ["Broken stopped tracking this run: tracking server unreachable"]
