"""Studies on a real one-node Slurm cluster (Debian's slurm-wlm and munge, started here as root), through submitit."""

import json
import subprocess
import time

import pytest

from lpt.cli import main
from lpt.study import directory, slurm
from tests.conftest import tiny_run_overrides
from tests.slurm_cluster import slurm_cluster, why_not
from tests.test_resume import comparable
from tests.test_study import check_report_against_runs, study_error, write_study

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(why_not()), reason=why_not() or "-")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as conf:
        yield conf


def test_a_study_runs_to_completion_through_submitit(cluster, tmp_path, tiny_fmnist, capsys):
    path = write_study(tmp_path / "s.yaml", base={"config": "demo", "overrides": tiny_run_overrides(tiny_fmnist)},
                       slurm={"cpus": 1, "time_min": 10})
    out = tmp_path / "out"
    assert main(["--quiet", "study", "run", str(path), "--out", str(out), "--launcher", "slurm", "--wait"]) == 0
    assert "submitted array job" in capsys.readouterr().out
    jobs = slurm.read_jobs(out)
    assert len({j.split("_")[0] for j in jobs.values()}) == 1 and len(jobs) == 4  # one array job, a task per run
    check_report_against_runs(out, {"lpt": ["lpt__seed0", "lpt__seed1"], "vpt": ["vpt__seed0", "vpt__seed1"]})


def _wait_for(what: str, ok, seconds: float = 240) -> None:
    end = time.time() + seconds
    while not ok():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_cancelled_job_resubmitted_finishes_with_the_uninterrupted_metrics(cluster, tmp_path, tiny_fmnist):
    overrides = [*tiny_run_overrides(tiny_fmnist), "deterministic=true", "phase1.epochs=4", "phase1.batch_size=8"]
    path = write_study(tmp_path / "s.yaml", base={"config": "demo", "overrides": overrides},
                       variants={"vpt": ["method=vpt", "phases=[phase1]"]}, seeds=[0], slurm={"cpus": 2})
    reference = tmp_path / "reference"  # the same run, uninterrupted, with the same 2 threads
    assert main(["--quiet", "study", "run", str(path), "--out", str(reference), "--jobs", "1"]) == 0

    out = tmp_path / "out"
    assert main(["--quiet", "study", "run", str(path), "--out", str(out), "--launcher", "slurm"]) == 0
    run_dir = out / "runs" / "vpt__seed0"
    _wait_for("a saved epoch", lambda: (run_dir / "metrics.jsonl").is_file()
              and '"epoch": 1' in (run_dir / "metrics.jsonl").read_text())
    (job,) = slurm.read_jobs(out).values()
    subprocess.run(["scancel", job], check=True)
    _wait_for("the cancelled job to end", lambda: job not in slurm.active_jobs())
    assert directory.run_status(out, "vpt__seed0").state == "interrupted"

    assert main(["--quiet", "study", "run", str(path), "--out", str(out), "--launcher", "slurm", "--wait"]) == 0
    assert "--resume" in directory.log_path(out, "vpt__seed0").read_text()
    assert comparable(run_dir) == comparable(reference / "runs" / "vpt__seed0")
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(
        (reference / "runs" / "vpt__seed0" / "metrics.json").read_text())


def test_slurm_not_reachable_is_one_line(tmp_path, capsys, monkeypatch):
    conf = tmp_path / "slurm.conf"  # a controller nobody runs
    conf.write_text("ClusterName=dead\nSlurmctldHost=localhost\nSlurmctldPort=1\nAuthType=auth/none\n"
                    "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=ALL Default=YES State=UP\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    path = write_study(tmp_path / "s.yaml", variants={"vpt": ["method=vpt"]}, seeds=[0])
    err = study_error(["study", "run", str(path), "--out", str(tmp_path / "out"), "--launcher", "slurm"], capsys)
    assert err == ("lpt study: error: Slurm is not reachable (sbatch: error: Batch job submission failed: Unable to "
                   "contact slurm controller (connect failure))")
