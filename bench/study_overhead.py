"""What a study costs beyond its runs, on this machine (CPU): python bench/study_overhead.py OUT_DIR [--skip-jobs].

1. ``--jobs 1`` against ``--jobs 2``: the same small study run with each, total wall time; and the study's own
   overhead: its wall time less its runs' processes (:func:`run_seconds`), per run. The study is the tests' tiny
   one (tests/conftest.py: 10 classes of 28-pixel images written here, a 3-block random ViT), LPT and VPT, 2 seeds,
   so that it takes minutes on a busy 2-core machine.
2. Expansion and the check of every run's state: ``lpt study run`` on the finished study (nothing to run), and
   ``lpt study run --dry-run`` of the shipped demo study (30 runs), as command lines (Python start-up included).
3. ``lpt study report`` over 200 run directories: one finished run copied 200 times (20 variants x 10 seeds, its
   metrics.json perturbed), as a command line.

Prints one JSON object and writes it to OUT_DIR/results.json; the studies stay in OUT_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the tests' tiny settings
from tests.conftest import tiny_run_overrides, write_tiny_fmnist  # noqa: E402

LPT = [sys.executable, "-m", "lpt", "--quiet"]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def small_study(path: Path, data: Path) -> Path:
    """The tests' tiny study (tests/test_study.py) on the tests' tiny images, written into ``data``."""
    data.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump({
        "name": "bench", "base": {"config": "demo", "overrides": tiny_run_overrides(write_tiny_fmnist(data))},
        "variants": {"lpt": [], "vpt": ["method=vpt", "phases=[phase1]"]}, "seeds": [0, 1]}, sort_keys=False))
    return path


def run_seconds(study_dir: Path) -> float:
    """The runs' processes of a ``--jobs 1`` study, one after another: from study.json (written just before the
    first starts) to the last exit file. What lies between two runs (a Popen and a log file) counts as run time;
    the logs' birth times (``stat -c %W``) put it under a second."""
    exits = [p.stat().st_mtime for p in (study_dir / "logs").glob("*.exit")]
    return max(exits) - (study_dir / "study.json").stat().st_mtime


def synthetic_study(src: Path, out: Path, variants: int = 20, seeds: int = 10) -> None:
    """``out`` as a study of variants x seeds whose every run is a copy of the finished run ``src``."""
    names = [f"v{v:02d}" for v in range(variants)]
    study = out / "study.yaml"
    out.mkdir(parents=True)
    study.write_text(yaml.safe_dump({"name": "synthetic", "base": {"config": "demo"},
                                     "variants": {n: [] for n in names}, "seeds": list(range(seeds))}))
    rng = random.Random(0)
    runs = []
    for n in names:
        for s in range(seeds):
            name = f"{n}__seed{s}"
            shutil.copytree(src, out / "runs" / name)
            metrics = json.loads((src / "metrics.json").read_text())
            metrics |= {k: metrics[k] + rng.uniform(-1, 1) for k in ("overall", "many", "medium", "few")
                        if metrics[k] is not None}  # the tiny data has no many-shot class
            (out / "runs" / name / "metrics.json").write_text(json.dumps(metrics))
            runs.append({"name": name, "variant": n, "seed": s, "setting": "", "overrides": []})
    (out / "study.json").write_text(json.dumps({
        "name": "synthetic", "source": str(study), "fingerprint": "-", "config": "demo", "overrides": [],
        "variants": {n: [] for n in names}, "seeds": list(range(seeds)), "grid": {}, "select": "all", "runs": runs}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--skip-jobs", action="store_true", help="reuse OUT/jobs1 and OUT/jobs2 if they exist")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    study = small_study(args.out / "small.yaml", args.out / "data")
    results: dict = {"cores": len(os.sched_getaffinity(0)), "load_before": os.getloadavg()}

    def keep(key: str, value) -> None:  # results.json after each measurement: a later failure loses nothing
        results[key] = value
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    for jobs in (1, 2):
        out = args.out / f"jobs{jobs}"
        if not (args.skip_jobs and out.exists()):
            shutil.rmtree(out, ignore_errors=True)
            keep(f"jobs{jobs}_s", timed([*LPT, "study", "run", str(study), "--out", str(out), "--jobs", str(jobs)]))
            if jobs == 1:
                keep("jobs1_runs_s", run_seconds(out))
                keep("jobs1_overhead_per_run_s", (results["jobs1_s"] - results["jobs1_runs_s"]) / 4)
    keep("rerun_finished_study_s", timed([*LPT, "study", "run", str(study), "--out", str(args.out / "jobs1")]))
    keep("report_small_s", timed([*LPT, "study", "report", str(args.out / "jobs1")]))
    keep("dry_run_demo_methods_30_runs_s", timed([*LPT, "study", "run", "demo_methods", "--out",
                                                  str(args.out / "demo"), "--dry-run"]))
    synthetic = args.out / "synthetic200"
    shutil.rmtree(synthetic, ignore_errors=True)
    synthetic_study(args.out / "jobs1" / "runs" / "vpt__seed0", synthetic)
    keep("report_200_runs_s", timed([*LPT, "study", "report", str(synthetic)]))
    keep("load_after", os.getloadavg())
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
