"""Running a study's runs: each is an ordinary ``python -m lpt train`` process, so lpt's own resume, run.json and
metrics.json are the record; this module only decides the command and keeps the console log and exit code.

The local launcher runs ``jobs`` of them at once and gives each ``usable cores // jobs`` threads (torch's and
OpenMP's), so that the runs together never ask for more cores than the machine lets this process use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lpt.run import files
from lpt.study import directory
from lpt.utils import log, usable_cores


def train_command(study_dir: Path, run: dict, threads: int, gpus: int = 0) -> list[str]:
    """The command that brings a run one step nearer its end: a fresh ``lpt train`` (``--overwrite`` of a start
    that saved nothing), or ``--resume`` of an interrupted run. Several GPUs: torchrun, one process per GPU."""
    out = directory.run_dir(study_dir, run["name"])
    state = files.run_state(out)
    lpt = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m", "lpt"]
           if gpus > 1 else [sys.executable, "-m", "lpt"])
    lpt += ["--threads", str(threads), "train"]
    if state == "interrupted":
        return [*lpt, "--resume", str(out)]
    record = directory.read_record(study_dir)
    return [*lpt, "--config", record["config"], "--out", str(out), *(["--overwrite"] if state == "started" else []),
            *run["overrides"]]


def attempt(study_dir: Path, run: dict, threads: int, gpus: int = 0, started=None) -> int:
    """Run (or resume) one run to its end, its console output appended to its log; returns and records the exit
    code. ``started(process)`` is told the process once it runs (Slurm's requeue signals it)."""
    command = train_command(study_dir, run, threads, gpus)
    path = directory.log_path(study_dir, run["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with path.open("a") as fh:
        fh.write("$ " + " ".join(command) + "\n")
        fh.flush()
        process = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env)
        if started is not None:
            started(process)
        code = process.wait()
    directory.write_exit(study_dir, run["name"], code)
    return code


def split_cores(jobs: int, runs: int) -> tuple[int, int]:
    """(runs at once, threads each): at most ``jobs`` runs, never more than the runs left or the usable cores,
    the cores shared equally among them."""
    cores = usable_cores()
    at_once = max(1, min(jobs, runs, cores))
    if jobs > cores:
        log.warning("--jobs %d: this process may use %d cores; running %d at once", jobs, cores, at_once)
    return at_once, max(1, cores // at_once)


def run_local(study_dir: Path, runs: list[dict], jobs: int = 1) -> dict[str, int]:
    """Run each of ``runs`` to its end, ``jobs`` at once; a failed run does not stop the others. Returns each
    run's exit code."""
    at_once, threads = split_cores(jobs, len(runs))
    log.info("study: %d runs, %d at once with %d threads each", len(runs), at_once, threads)

    def one(run: dict) -> int:
        code = attempt(study_dir, run, threads)
        status = "finished" if code == 0 else f"exit {code}: {directory.last_error(study_dir, run['name'])}"
        log.info("study: %s %s", run["name"], status)
        return code

    pool = ThreadPoolExecutor(at_once)
    try:
        return dict(zip((r["name"] for r in runs), pool.map(one, runs)))
    except KeyboardInterrupt:  # Ctrl-C reached the runs too: they save and stop; start no other
        pool.shutdown(cancel_futures=True)
        raise
    finally:
        pool.shutdown()


def estimate(study_dir: Path, runs: list[dict], configs: list[dict]) -> str:
    """The study's cost before it runs: epochs in all, and, where runs of the same variant already finished in
    ``study_dir``, their mean wall time times the runs of that variant still to do."""
    epochs = sum(c[p]["epochs"] for c in configs for p in c["phases"])
    text = f"{len(runs)} runs, {epochs} epochs in all"
    seconds: dict[str, list[float]] = {}
    for run in runs:
        info = files.read_info(directory.run_dir(study_dir, run["name"]))
        if "wall_seconds" in info:
            seconds.setdefault(run["variant"], []).append(info["wall_seconds"] * info.get("world_size", 1))
    if seconds:
        left = [r for r in runs if not files.read_info(directory.run_dir(study_dir, r["name"]))]
        known = [r for r in left if r["variant"] in seconds]
        hours = sum(sum(seconds[r["variant"]]) / len(seconds[r["variant"]]) for r in known) / 3600
        text += (f"; {len(runs) - len(left)} finished; the {len(known)} left of variants with a finished run need "
                 f"about {hours:.2f} device-hours (their finished runs' mean)")
        if len(known) < len(left):
            text += f", {len(left) - len(known)} more of variants not yet timed"
    return text
