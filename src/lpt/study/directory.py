"""The study directory: what it was made from, its runs, each run's console log and exit code, and their states.

================== =========================================================================
``study.json``     the study as expanded (:meth:`lpt.study.spec.Study.record`): settings, runs, fingerprint
``study.yaml``     the study file as it was read
``runs/NAME/``     each run: an ordinary lpt run directory (its own resume, metrics.json and run.json)
``logs/NAME.log``  each run's console output, every attempt appended
``logs/NAME.exit`` the exit code of the run's last attempt
``slurm/``         submitit's job files and the job ids of the last submission (``jobs.json``)
``report.*``       ``lpt study report``: Markdown, CSV, HTML and the plots
================== =========================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lpt.config import ConfigError
from lpt.run import files
from lpt.study.spec import Study, check_selectable
from lpt.utils import STOP_SIGNALS, atomic_write_json, atomic_write_text

STUDY_JSON, STUDY_YAML, RUNS, LOGS = "study.json", "study.yaml", "runs", "logs"
INTERRUPTED = tuple(128 + s for s in STOP_SIGNALS)  # lpt train's exit codes (cli: 128 + the signal) when SIGINT /
# SIGTERM stopped it with its state saved: 130, 143
STATES = ("pending", "running", "interrupted", "finished", "failed")


def prepare(study: Study, out: Path) -> dict:
    """Resolve every run (refusing bad input before anything is written) and record the study in ``out``, or check
    that ``out`` already holds this very study; returns the record."""
    configs = [study.resolve(r) for r in study.runs()]
    check_selectable(study, configs)
    record = study.record(configs)
    path = out / STUDY_JSON
    if path.is_file():
        held = read_record(out)
        if held["fingerprint"] != record["fingerprint"]:
            raise ConfigError(f"{out} holds the study '{held['name']}' made from {held['source']}, whose runs differ "
                              f"from those of {study.source}; choose another --out (nothing was written)")
        return held
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} is not empty and holds no study; choose a new or empty directory "
                          "(nothing was written)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / STUDY_YAML, study.source.read_text())
    atomic_write_json(path, record)
    return record


def read_record(study_dir: Path) -> dict:
    path = Path(study_dir) / STUDY_JSON
    if not path.is_file():
        raise ConfigError(f"{study_dir} is not a study directory (no {STUDY_JSON}; make one with `lpt study run`)")
    return json.loads(path.read_text())


def run_dir(study_dir: Path, name: str) -> Path:
    return Path(study_dir) / RUNS / name


def log_path(study_dir: Path, name: str) -> Path:
    return Path(study_dir) / LOGS / f"{name}.log"


def write_exit(study_dir: Path, name: str, code: int) -> None:
    atomic_write_text(Path(study_dir) / LOGS / f"{name}.exit", f"{code}\n")


def _exit_code(study_dir: Path, name: str) -> int | None:
    path = Path(study_dir) / LOGS / f"{name}.exit"
    return int(path.read_text()) if path.is_file() else None


def last_error(study_dir: Path, name: str) -> str:
    """The run's one-line error (``lpt train: error: ...``) from its log, else the log's last line (a traceback's
    exception)."""
    path = log_path(study_dir, name)
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()] if path.is_file() else []
    errors = [line for line in lines if line.startswith("lpt train: error:")]
    return (errors or [line for line in lines if line] or ["no output"])[-1]


@dataclass
class RunStatus:
    name: str
    state: str  # one of STATES
    error: str = ""  # a failed run's last error line


def run_status(study_dir: Path, name: str) -> RunStatus:
    """finished (metrics.json and run.json), running (its lock is held), failed (its last attempt exited with an
    error), interrupted (a resumable state, stopped by a signal) or pending (not started)."""
    path = run_dir(study_dir, name)
    state = files.run_state(path)
    if state == "finished":
        return RunStatus(name, "finished")
    if files.in_use(path):
        return RunStatus(name, "running")
    code = _exit_code(study_dir, name)
    if code not in (None, 0, *INTERRUPTED) or state == "other":
        return RunStatus(name, "failed", last_error(study_dir, name))
    return RunStatus(name, "interrupted" if state == "interrupted" else "pending")


def statuses(study_dir: Path) -> list[RunStatus]:
    return [run_status(study_dir, r["name"]) for r in read_record(study_dir)["runs"]]
