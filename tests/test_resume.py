"""Interrupted runs lose nothing: SIGKILL at a random step or SIGTERM, then --resume, gives the
metrics of the uninterrupted run exactly."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from lpt.cli import main
from lpt.model.state import read_tensors
from lpt.run.files import RESUME as RESUME_FILE
from tests.conftest import TINY_MODEL


def command(tiny_fmnist, out):
    return [sys.executable, "-m", "lpt.cli", "--quiet", "train", "--config", "demo", "--out", str(out),
            "--deterministic", f"data.root={tiny_fmnist}", "data.imbalance_ratio=10", "data.max_per_class=40",
            *TINY_MODEL, "phase1.epochs=2", "phase1.batch_size=8", "phase2.epochs=2", "phase2.batch_size=8",
            "eval_batch_size=32", "progress=false", "checkpoint_every=1"]


def progress(out):
    """(phase index, epoch, step) of the saved resumable state, or None before the first save."""
    try:
        position = read_tensors(out / RESUME_FILE)[1]["position"]
    except Exception:
        return None
    phase = position["phase"] or {"epoch": 0, "step": 0}
    return position["phase_index"], phase["epoch"], phase["step"]


def wait_for(proc, out, target):
    while proc.poll() is None:
        p = progress(out)
        if p is not None and p >= target:
            return p
        time.sleep(0.005)
    pytest.fail(f"training finished before reaching {target}: {proc.stderr.read()}")


def comparable(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        for key in ("seconds", "images_per_s"):
            r.pop(key, None)
        for key in ("train_seconds", "images_per_s"):
            r.get("eval", {}).pop(key, None)
    return json.loads((run_dir / "metrics.json").read_text()), records


@pytest.fixture(scope="module")
def uninterrupted_run(tiny_fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "full"
    subprocess.run(command(tiny_fmnist, out), check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run):
    return comparable(uninterrupted_run)


def kill_at_a_random_step_and_resume(argv, out):
    """Start ``argv`` (a run into ``out``), SIGKILL it at a random step, resume it; returns where it stopped."""
    rng = random.Random(time.time_ns())
    target = (rng.randint(0, 1), rng.randint(0, 1), rng.randint(1, 15))  # phase, epoch, step of 20 per epoch
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reached = wait_for(proc, out, target)
    proc.kill()
    proc.wait()
    assert not (out / "metrics.json").exists(), f"killed at {reached} too late"
    assert main(["--quiet", "train", "--resume", str(out)]) == 0
    return reached


def test_sigkill_at_random_step_then_resume_gives_identical_metrics(tiny_fmnist, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    reached = kill_at_a_random_step_and_resume(command(tiny_fmnist, out), out)
    assert comparable(out) == uninterrupted, f"killed at {reached}"


def test_sigterm_saves_and_names_the_resume_command(tiny_fmnist, tmp_path, uninterrupted):
    out = tmp_path / "terminated"
    proc = subprocess.Popen(command(tiny_fmnist, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(proc, out, (0, 0, 3))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert f"Resume with: lpt train --resume {out}" in err
    assert progress(out) is not None and not (out / "metrics.json").exists()
    assert main(["--quiet", "train", "--resume", str(out)]) == 0
    assert comparable(out) == uninterrupted


def trained(run_dir):
    return read_tensors(run_dir / "model.safetensors")[0]


def test_sigterm_to_the_process_group_with_loader_workers_saves_in_one_line_and_resumes_exactly(
        tiny_fmnist, tmp_path, uninterrupted_run):
    """As ``timeout``, ``docker stop`` and Slurm's pre-emption send it: to the loader workers too, which must leave
    the stop to the main process (they died of it, failing the run with a DataLoader traceback). Loader processes
    change no result: the resumed run equals the uninterrupted one without them."""
    out = tmp_path / "terminated"
    proc = subprocess.Popen(command(tiny_fmnist, out) + ["data.num_workers=2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(proc, out, (0, 0, 3))
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    said = [line for line in err.splitlines() if " lpt WARNING " not in line]  # --quiet: warnings only
    assert proc.returncode == 143 and len(said) == 1, err
    assert said[0].startswith("lpt: interrupted by SIGTERM") and f"lpt train --resume {out}" in said[0]
    assert main(["--quiet", "train", "--resume", str(out)]) == 0
    assert comparable(out) == comparable(uninterrupted_run)
    full = trained(uninterrupted_run)
    assert trained(out).keys() == full.keys() and all(torch.equal(v, full[k]) for k, v in trained(out).items())


def test_resume_refuses_a_finished_run_and_a_missing_state(tiny_overrides, tmp_path, capsys):
    out = tmp_path / "done"
    assert main(["--quiet", "train", "--config", "demo", "--out", str(out), *tiny_overrides]) == 0
    assert main(["train", "--resume", str(out)]) == 2
    assert "already finished" in capsys.readouterr().err
    (out / RESUME_FILE).unlink()
    assert main(["train", "--resume", str(out)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_run_directory_in_use_is_refused(tmp_path):
    from lpt.run.files import run_lock

    with run_lock(tmp_path):
        child = subprocess.run([sys.executable, "-c", (
            "import sys; from pathlib import Path; from lpt.run.files import run_lock\n"
            f"with run_lock(Path({str(tmp_path)!r})): pass")], capture_output=True, text=True)
        assert (tmp_path / ".lock").is_file()  # the refused process leaves the holder's lock alone
    assert child.returncode != 0 and "in use by another lpt process" in child.stderr
    with run_lock(tmp_path):  # released: usable again
        pass
