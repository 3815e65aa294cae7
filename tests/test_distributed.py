"""Two processes under torchrun (gloo, CPU): training runs, samplers shard without overlap, and the
sharded evaluation gathered from both ranks equals a single-process evaluation exactly."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from lpt.config import from_dict, read_yaml
from lpt.data import build_datasets
from lpt.data.samplers import ClassBalancedSampler, InstanceSampler, sample_key
from lpt.run.load import evaluate_run

SRC = Path(__file__).resolve().parents[1] / "src"

# Runs `python -m lpt.cli ...` unchanged (runpy), after wrapping the samplers' __iter__ so that each rank
# writes down the indices it drew: (sampler class, epoch, world size, indices) per epoch and stream, and
# the report writer so that it writes down the run directories it wrote reports of.
RECORDER = """
import atexit, json, os, runpy
from lpt.analysis import report
from lpt.data import samplers

drawn = []
plain_iter = samplers._ShardedSampler.__iter__

def recording_iter(self):
    indices = list(plain_iter(self))
    drawn.append({"sampler": type(self).__name__, "epoch": self.epoch, "skip": self.skip,
                  "world_size": self.world_size, "indices": indices})
    return iter(indices)

samplers._ShardedSampler.__iter__ = recording_iter
reported = []
plain_report = report.write_report

def recording_report(run_dir, *args, **kwargs):
    reported.append(str(run_dir))
    return plain_report(run_dir, *args, **kwargs)

report.write_report = recording_report
log = os.path.join(os.environ["LPT_SHARD_LOG"], f"rank{os.environ['RANK']}.json")
atexit.register(lambda: open(log, "w").write(json.dumps({"drawn": drawn, "reported": reported})))
runpy.run_module("lpt.cli", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_fmnist):
    """A demo-preset run on the tiny data by two gloo processes: (run directory, per-rank sampler logs, per-rank
    run directories reported, the finished process)."""
    import subprocess

    from tests.conftest import TINY_MODEL

    base = tmp_path_factory.mktemp("dist")
    run_dir, logs = base / "run", base / "shards"
    logs.mkdir()
    recorder = base / "record_shards.py"
    recorder.write_text(RECORDER)
    overrides = [f"data.root={tiny_fmnist}", "data.imbalance_ratio=10", "data.max_per_class=40", *TINY_MODEL,
                 "phase1.epochs=2", "phase1.batch_size=16", "phase1.lr=0.5", "phase2.epochs=1",
                 "phase2.batch_size=16", "phase2.lr=0.5", "eval_batch_size=32", "progress=false", "device=cpu",
                 f"log.mlflow.tracking_uri={base / 'tracking'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", LPT_SHARD_LOG=str(logs),
               PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(recorder), "--quiet", "train", "--config", "demo", "--out", str(run_dir), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((logs / f"rank{r}.json").read_text()) for r in range(2)]
    return run_dir, [r["drawn"] for r in ranks], [r["reported"] for r in ranks], proc


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran (OMP_NUM_THREADS=1)
    yield
    torch.set_num_threads(threads)


def test_two_process_run_finishes(two_process_run):
    run_dir, _, _, _ = two_process_run
    run = json.loads((run_dir / "run.json").read_text())
    assert run["world_size"] == 2 and set(run["phases"]) == {"phase1", "phase2"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "epoch" in r] == [1, 2, 1]  # rank 0 alone writes


def test_rank_0_alone_reports(two_process_run):
    """Rank 0 alone writes the run's results, so it alone writes the report and prints the table: another rank
    reading the run directory while rank 0 writes it would race it or warn that the report could not be written."""
    run_dir, _, reported, proc = two_process_run
    assert reported == [[str(run_dir)], []]
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    assert "could not be written" not in proc.stderr
    assert proc.stdout.count("test accuracy %:") == 1


def test_rank_0_alone_tracks(two_process_run):
    """One MLflow run (log.mlflow), by rank 0: another rank tracking would start a second one."""
    from mlflow.tracking import MlflowClient

    run_dir, _, _, _ = two_process_run
    mlflow = MlflowClient(f"sqlite:///{run_dir.parent / 'tracking' / 'mlflow.db'}")
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("lpt").experiment_id])
    assert run.info.run_id == json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    assert run.info.status == "FINISHED"
    assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "phase1/loss")] == [1, 2]


def test_sharded_eval_equals_single_process_eval(two_process_run, one_thread):
    run_dir, _, _, _ = two_process_run
    gathered = json.loads((run_dir / "metrics.json").read_text())  # from both ranks' halves of the test set
    assert gathered["num_images"] == 80 and gathered["phase"] == 2
    assert evaluate_run(run_dir, device="cpu") == gathered


def test_samplers_shard_without_overlap(two_process_run):
    """Every epoch and stream: the two ranks' draws interleave into the single-process sequence, so
    they split its positions between them with none shared and none missing."""
    run_dir, shards, _, _ = two_process_run
    assert len(shards[0]) == len(shards[1]) == 6  # 3 epochs (2 + 1) x 2 streams (dual sampling)
    cfg = from_dict(read_yaml(run_dir / "config.yaml"))
    targets = build_datasets(cfg.data).train.targets
    total = 160  # ceil(159 images / (16 x 2 ranks)) = 5 steps of 32
    for a, b in zip(*shards):
        assert (a["sampler"], a["epoch"], a["world_size"], a["skip"]) == (b["sampler"], b["epoch"], 2, 0)
        assert len(a["indices"]) == len(b["indices"]) == total // 2
        # each draw is (index, augmentation key, the phase's progress); the keys of both ranks interleave into the
        # single process's, and both ranks' transforms follow the same progress
        stream = 0 if a["sampler"] == "ClassBalancedSampler" else 1
        keys = [k for pair in zip(a["indices"], b["indices"]) for k in (pair[0][1], pair[1][1])]
        assert keys == [sample_key(cfg.seed, a["epoch"], stream, p) for p in range(total)]
        assert len({t for _, _, t in a["indices"] + b["indices"]}) == 1
        a["indices"], b["indices"] = [i for i, _, _ in a["indices"]], [i for i, _, _ in b["indices"]]
        if a["sampler"] == "InstanceSampler":
            single = InstanceSampler(len(targets), cfg.seed, 0, 1, num_samples=total)
            assert set(a["indices"]) | set(b["indices"]) == set(range(len(targets)))
        else:
            single = ClassBalancedSampler(targets, cfg.data.samples_per_class, total, cfg.seed, 0, 1)
        single.set_epoch(a["epoch"])
        interleaved = [i for pair in zip(a["indices"], b["indices"]) for i in pair]
        assert interleaved == single.global_order()
