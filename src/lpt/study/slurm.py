"""The Slurm launcher, through submitit (an optional extra, ``pip install 'lpt[slurm]'``): one array job, a task per
run, each task an ordinary ``lpt train`` process (:func:`lpt.study.launch.attempt`).

A task preempted or out of time is requeued by submitit (its ``checkpoint``): the run is first stopped with
SIGTERM, on which lpt saves its resumable state, and the requeued task resumes it (``lpt train --resume``). A task
cancelled with ``scancel`` stops the same way; the next ``lpt study run`` resumes it.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

from lpt.config import ConfigError
from lpt.study import launch
from lpt.utils import atomic_write_json

SLURM, JOBS = "slurm", "jobs.json"
DEFAULTS = {"partition": "", "account": "", "time_min": 60, "gpus": 0, "cpus": 1, "mem_gb": 0}


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("the slurm launcher needs submitit: pip install 'lpt[slurm]'") from None
    return submitit


def _unreachable(exc: Exception) -> ConfigError:
    """submitit's or squeue's error as one line: the first line that says error (sbatch's complaint)."""
    text = f"{getattr(exc, 'stderr', None) or ''}\n{exc}"  # submitit's FailedJobError: sbatch's stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return ConfigError(f"Slurm is not reachable ({(errors or lines or ['no message'])[0][:300]})")


class SlurmRun:
    """One array task: runs (or resumes) one run; submitit calls ``checkpoint`` when the task is preempted or
    about to time out, and requeues what it returns."""

    def __init__(self, study_dir: str, run: dict, threads: int, gpus: int):
        self.study_dir, self.run, self.threads, self.gpus = study_dir, run, threads, gpus
        self._process: subprocess.Popen | None = None

    def __call__(self) -> int:
        return launch.attempt(Path(self.study_dir), self.run, self.threads, self.gpus, started=self._started)

    def _started(self, process: subprocess.Popen) -> None:
        self._process = process

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_process"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _process=None)

    def checkpoint(self, *args: Any, **kwargs: Any):
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)  # lpt saves its resumable state and exits
            self._process.wait()
        return _submitit().helpers.DelayedSubmission(SlurmRun(self.study_dir, self.run, self.threads, self.gpus))


def resources(study_slurm: dict, given: dict) -> dict:
    """The resources of each task: the command line's, else the study file's, else :data:`DEFAULTS`."""
    return {k: given[k] if given.get(k) is not None else study_slurm.get(k, DEFAULTS[k]) for k in DEFAULTS}


def active_jobs() -> set[str]:
    """Ids (``123_4`` for an array task) of the jobs Slurm holds, pending or running."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise _unreachable(exc) from None
    return set(out.split())


def read_jobs(study_dir: Path) -> dict[str, str]:
    path = Path(study_dir) / SLURM / JOBS
    return json.loads(path.read_text()) if path.is_file() else {}


def queued(study_dir: Path) -> set[str]:
    """The runs whose task of an earlier submission Slurm still holds."""
    jobs = read_jobs(study_dir)
    active = active_jobs() if jobs else set()
    return {name for name, job in jobs.items() if job in active}


def submit(study_dir: Path, runs: list[dict], res: dict, name: str) -> list[str]:
    """Submit ``runs`` as one array job; returns the task ids (also kept in ``slurm/jobs.json``)."""
    submitit = _submitit()
    executor = submitit.AutoExecutor(folder=Path(study_dir) / SLURM / "%j", cluster="slurm")
    params = {"timeout_min": int(res["time_min"]), "cpus_per_task": int(res["cpus"]), "tasks_per_node": 1,
              "name": name, "slurm_array_parallelism": len(runs)}
    params |= {"gpus_per_node": int(res["gpus"])} if res["gpus"] else {}
    params |= {"mem_gb": res["mem_gb"]} if res["mem_gb"] else {}
    params |= {f"slurm_{k}": res[k] for k in ("partition", "account") if res[k]}
    executor.update_parameters(**params)
    threads = max(1, int(res["cpus"]) // max(1, int(res["gpus"])))
    kept = io.StringIO()  # sbatch's complaint, which submitit also prints: one line is enough (_unreachable)
    try:
        with redirect_stderr(kept), executor.batch():
            jobs = [executor.submit(SlurmRun(str(study_dir), run, threads, int(res["gpus"]))) for run in runs]
    except (OSError, subprocess.SubprocessError, submitit.core.utils.FailedJobError) as exc:
        raise _unreachable(exc) from None
    sys.stderr.write(kept.getvalue())
    ids = [job.job_id for job in jobs]
    atomic_write_json(Path(study_dir) / SLURM / JOBS, read_jobs(study_dir) | {r["name"]: i for r, i in zip(runs, ids)})
    return ids


def wait(ids: list[str], poll_s: float = 2.0) -> None:
    """Until Slurm holds none of the tasks ``ids``."""
    while set(ids) & active_jobs():
        time.sleep(poll_s)
