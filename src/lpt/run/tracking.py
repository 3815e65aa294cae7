"""The experiment trackers of a run: TensorBoard, and with ``log.wandb`` / ``log.mlflow`` Weights & Biases and MLflow.

Each tracker gets the same scalars. A record of metrics.jsonl (an epoch's training, a validation, a phase's
evaluation) gives its numbers under ``<phase>/``, nested ones joined by ``/`` (``phase1/loss``,
``phase1/val/overall``, ``phase1/eval/trainable_params``), at step ``epoch`` where it has one; the end of a
run gives ``final/overall``, ``final/many``, ``final/medium``, ``final/few`` (metrics.json) and
``final/trainable_params`` (what ``lpt compare`` counts). W&B and MLflow also get the resolved config, and
``log.group`` gathers the runs of a study: a W&B group, an MLflow parent run they nest under. The tracked run
ids are kept in the run directory (``tracking.json``), so a resumed run continues the same tracked runs.
Only the main process tracks (``lpt.run.train`` opens trackers on rank 0).
"""

from __future__ import annotations

import fcntl
import importlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lpt.config import Config, ConfigError, describe, to_dict
from lpt.metrics import flat_metrics
from lpt.run import files
from lpt.utils import first_line, log

PARENT_TAG, GROUP_TAG = "lpt.parent", "lpt.group"  # MLflow tags: a group's parent run; the group of a run
MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


def scalars(record: dict[str, Any]) -> tuple[int | None, dict[str, float]]:
    """A metrics.jsonl record as (step, {name: value}): its numbers (not None, not text) named ``<phase>/<key>``,
    nested keys joined by ``/``, at the record's epoch, or at no step for a phase's evaluation."""
    return record.get("epoch"), _flatten({k: v for k, v in record.items() if k not in ("phase", "epoch")},
                                         record["phase"])


def _flatten(tree: dict[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}/{key}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = value
    return out


def final_scalars(metrics: dict[str, Any], trainable_params: int | None) -> dict[str, float]:
    """The results of a finished run: metrics.json's metrics (accuracies, top-5, macro-F1, NLL, ECE, ...: those it
    holds) and the parameters it trained."""
    return _flatten(flat_metrics(metrics) | {"trainable_params": trainable_params}, "final")


# ----------------------------------------------------------------------------- the trackers


class TensorBoardLog:
    """Scalars with a step to TensorBoard under ``log_dir``, when ``tensorboard`` is installed (the optional extra
    lpt[tensorboard]); otherwise it does nothing."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self.writer = None
        else:
            self.writer = SummaryWriter(str(log_dir))

    def record(self, record: dict[str, Any]) -> None:
        step, values = scalars(record)
        if self.writer is None or step is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def finish(self, values: dict[str, float]) -> None:
        """TensorBoard plots series over steps: the final values are in metrics.json and the other trackers."""

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbLog:
    """A W&B run (``log.wandb``) in the run directory's ``wandb/``: the config, each phase's scalars against that
    phase's epoch, a phase's evaluation and the final values in the run summary. ``run_id`` continues that run."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None):
        import wandb

        w = cfg.log.wandb
        self.run = wandb.init(project=w.project, entity=w.entity or None, group=w.group or cfg.log.group or None,
                              name=run_dir.name, id=run_id, resume="allow", mode=w.mode, dir=str(run_dir),
                              config=to_dict(cfg), reinit="create_new")  # several runs in one process (a study)
        self.id = self.run.id
        for phase in cfg.phases:
            self.run.define_metric(f"{phase}/epoch")
            self.run.define_metric(f"{phase}/*", step_metric=f"{phase}/epoch")

    def record(self, record: dict[str, Any]) -> None:
        step, values = scalars(record)
        if step is None:
            self.run.summary.update(values)
        else:
            self.run.log(values | {f"{record['phase']}/epoch": step})

    def finish(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def close(self, status: str) -> None:
        if status == "interrupted":  # marked preempting, not crashed: `lpt train --resume` continues it
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status == "finished" else 1)


class MlflowLog:
    """An MLflow run (``log.mlflow``) in experiment ``log.mlflow.experiment``: the config as parameters, each
    record's scalars as metrics (at their epoch, else step 0), nested under the ``log.group`` parent run.
    ``run_id`` continues that run."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        with _sqlite_lock(store_uri(cfg.log.mlflow.tracking_uri)) as uri:
            self.client = MlflowClient(uri)
            if run_id is None:
                experiment = _experiment_id(self.client, cfg.log.mlflow.experiment)
                tags = {"lpt.method": cfg.method}
                if cfg.log.group:
                    tags |= {GROUP_TAG: cfg.log.group,
                             "mlflow.parentRunId": _parent_run(self.client, experiment, cfg.log.group)}
                run_id = self.client.create_run(experiment, run_name=run_dir.name, tags=tags).info.run_id
                self.client.log_batch(run_id, params=[Param(key, str(value)) for key, value, _ in describe(cfg)])
            else:
                self.client.update_run(run_id, status="RUNNING")
        self.id = run_id

    def record(self, record: dict[str, Any]) -> None:
        step, values = scalars(record)
        self._log(values, step or 0)

    def finish(self, values: dict[str, float]) -> None:
        self._log(values, 0)

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.id, MLFLOW_STATUS[status])


def _is_folder(tracking_uri: str) -> bool:
    return not ("://" in tracking_uri or tracking_uri.startswith(("databricks", "file:")))


def store_uri(tracking_uri: str) -> str:
    """The MLflow store of ``log.mlflow.tracking_uri``: a URI as it is, a folder as the SQLite database
    ``mlflow.db`` in it (MLflow 3's folder store refuses new use)."""
    if not _is_folder(tracking_uri):
        return tracking_uri
    folder = Path(tracking_uri).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


@contextmanager
def _sqlite_lock(uri: str) -> Iterator[str]:
    """For a SQLite file, an exclusive lock beside it while a run starts: processes that open a new database at
    once race in MLflow's table creation and fail, and runs of a group that start at once would each make the
    group's parent. A tracking server (any other URI) takes no lock: there :func:`_parent_run` settles it."""
    database = None
    if uri.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
    if not database or database == ":memory:":
        yield uri
        return
    with open(f"{Path(database).resolve()}.lock", "a") as fh:  # closing the file releases the lock
        fcntl.lockf(fh, fcntl.LOCK_EX)
        yield uri


def _experiment_id(client, name: str) -> str:
    """The experiment called ``name``, made when missing (by another process meanwhile, too)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    return found.experiment_id


def _parent_run(client, experiment: str, group: str) -> str:
    """The id of ``group``'s parent run: found, or made. Runs that start at once against a tracking server may each
    make one; each then takes the first made that it sees (start time, then id) and deletes its own if that is
    not it. (Two parents remain only if one made earlier is stored after another run has looked.)"""
    made = None
    parents = _group_parents(client, experiment, group)
    if not parents:
        made = client.create_run(experiment, run_name=group, tags={PARENT_TAG: "true", GROUP_TAG: group})
        client.set_terminated(made.info.run_id)  # a folder for the group's runs, with nothing of its own
        parents = _group_parents(client, experiment, group)
    kept = parents[0].info.run_id
    if made is not None and made.info.run_id != kept:
        client.delete_run(made.info.run_id)
    return kept


def _group_parents(client, experiment: str, group: str) -> list:
    """The live parent runs of ``group``, first made first (matched here, not in MLflow's filter language,
    which cannot quote every name)."""
    found, token = [], None
    while True:
        page = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = 'true'", max_results=1000, page_token=token)
        found += [run for run in page if run.data.tags.get(GROUP_TAG) == group]
        token = page.token
        if not token:
            return sorted(found, key=lambda run: (run.info.start_time, run.info.run_id))


# ----------------------------------------------------------------------------- all of a run's trackers


def _needed_modules(cfg: Config) -> dict[str, tuple[str, list[str]]]:
    """Extra -> (the config key that turns it on, the modules it needs) for each tracker ``cfg`` turns on."""
    needed = {}
    if cfg.log.wandb.project:
        needed["wandb"] = ("log.wandb.project", ["wandb"])
    uri = cfg.log.mlflow.tracking_uri
    if uri:  # MLflow opens a SQLite store (a folder is one) through SQLAlchemy and Alembic
        sql = uri.startswith("sqlite:") or _is_folder(uri)
        needed["mlflow"] = ("log.mlflow.tracking_uri", ["mlflow"] + (["sqlalchemy", "alembic"] if sql else []))
    return needed


def check_trackers(cfg: Config) -> None:
    """ConfigError, one line saying what to pip install, for a tracker ``cfg`` turns on whose package is missing
    (before any data loads)."""
    for extra, (key, modules) in _needed_modules(cfg).items():
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError:
                raise ConfigError(f"config key '{key}' is set but {module} is not installed; "
                                  f"pip install 'lpt[{extra}]'") from None


class Trackers:
    """A run's trackers behind one call each. A tracker that fails while training (a tracking server gone) is
    warned about once and dropped: the training goes on, and metrics.jsonl keeps every record."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def record(self, record: dict[str, Any]) -> None:
        self._each(lambda tracker: tracker.record(record))

    def finish(self, metrics: dict[str, Any], trainable_params: int | None) -> None:
        values = final_scalars(metrics, trainable_params)
        self._each(lambda tracker: tracker.finish(values))

    def close(self, status: str) -> None:
        """End every tracked run as ``status``: finished, interrupted (resumable) or failed."""
        self._each(lambda tracker: tracker.close(status))

    def _each(self, call: Callable[[Any], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # whatever the tracker's library raises: warn, stop tracking there, train on
                log.warning("%s stopped tracking this run: %s", type(tracker).__name__, first_line(exc))
                self.trackers.remove(tracker)


def open_trackers(cfg: Config, run_dir: Path) -> Trackers:
    """TensorBoard, and the W&B and MLflow runs ``cfg.log`` turns on: new ones, or for a resumed run those named in
    its tracking.json. A tracker that cannot start is a one-line ConfigError; those already started end failed."""
    ids = files.read_tracking(run_dir)
    started: list = [TensorBoardLog(run_dir / files.TENSORBOARD)]
    wanted = [(name, tracker) for name, tracker, on in (("wandb", WandbLog, cfg.log.wandb.project),
                                                       ("mlflow", MlflowLog, cfg.log.mlflow.tracking_uri)) if on]
    for name, tracker in wanted:
        try:
            started.append(tracker(cfg, run_dir, ids.get(name)))
        except Exception as exc:
            Trackers(started).close("failed")
            raise ConfigError(f"log.{name}: could not start the {name} run ({first_line(exc)})") from None
        ids[name] = started[-1].id
        files.write_tracking(run_dir, ids)  # at once: a run stopped from here on is resumed into the same one
    return Trackers(started)
