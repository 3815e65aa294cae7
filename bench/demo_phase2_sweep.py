"""Sweep the demo's phase 2 from one fixed phase-1 run; one JSON line per run.

Each run is ``lpt train --config demo phases=[phase2] init=P1 <overrides>`` in a subprocess (so each
has its own threads and memory), its results read back from the run directory: ``metrics.json``
(overall / many / medium / few, phase 2), ``run.json`` (phase-2 training seconds) and the per-epoch
training records of ``metrics.jsonl``. The line also carries the subprocess's wall and CPU seconds and
the 1-minute load average before and after (other jobs on the machine slow the wall clock).

    PYTHONPATH=src python bench/demo_phase2_sweep.py --init /tmp/sweep/p1 --out-dir /tmp/sweep \\
        --jsonl bench/results/.../sweep.jsonl --threads 2 \\
        --run base= --run e8=phase2.epochs=8 --run m5k1=model.pool_size=5,model.top_k=1

``--run NAME=OVERRIDES`` (comma-separated key=value, empty for the demo's own settings) may repeat;
without any, the default one-at-a-time sweep around the demo runs. Runs whose NAME already has a line
in ``--jsonl`` are skipped (the sweep can be resumed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# One change at a time around the demo (phase2.epochs=4, lr=0.04, m=20, k=2).
DEFAULT_SWEEP = {
    "base": [],
    "e8": ["phase2.epochs=8"],
    "e12": ["phase2.epochs=12"],
    "e16": ["phase2.epochs=16"],
    "lr0.01": ["phase2.lr=0.01"],
    "lr0.02": ["phase2.lr=0.02"],
    "lr0.08": ["phase2.lr=0.08"],
    "m2k1": ["model.pool_size=2", "model.top_k=1"],
    "m2k2": ["model.pool_size=2", "model.top_k=2"],
    "m5k1": ["model.pool_size=5", "model.top_k=1"],
    "m5k2": ["model.pool_size=5", "model.top_k=2"],
    "m10k1": ["model.pool_size=10", "model.top_k=1"],
    "m10k2": ["model.pool_size=10", "model.top_k=2"],
    "m20k1": ["model.pool_size=20", "model.top_k=1"],
}


def parse_run(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--run needs NAME=OVERRIDES, got {text!r}")
    return name, [o for o in overrides.split(",") if o]


def done_names(jsonl: Path) -> set[str]:
    if not jsonl.exists():
        return set()
    return {json.loads(line)["name"] for line in jsonl.read_text().splitlines() if line.strip()}


def run_one(name: str, overrides: list[str], args: argparse.Namespace) -> dict:
    out = Path(args.out_dir) / name
    cmd = [sys.executable, "-m", "lpt.cli", "train", "--config", "demo", "phases=[phase2]", f"init={args.init}",
           "--out", str(out), "--overwrite", "--threads", str(args.threads), "--quiet", *overrides]
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = {"name": name, "overrides": overrides, "command": " ".join(cmd), "rc": proc.returncode,
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 1),
            "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    if proc.returncode != 0:
        line["stderr_tail"] = proc.stderr[-2000:]
        return line
    metrics = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    line["metrics"] = metrics
    line["phase2_train_seconds"] = run.get("phases", {}).get("phase2", {}).get("train_seconds")
    records = out / "metrics.jsonl"
    if records.exists():
        line["epochs"] = [json.loads(r) for r in records.read_text().splitlines() if r.strip()]
    line["stdout"] = proc.stdout
    return line


def print_table(jsonl: Path) -> None:
    """Markdown table: settings, overall / many / medium / few, phase-2 training seconds, train acc per epoch."""
    print("| run | overrides | overall | many | medium | few | phase-2 train s | train acc per epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for text in jsonl.read_text().splitlines():
        line = json.loads(text)
        m = line.get("metrics")
        if not m:
            print(f"| {line['name']} | {' '.join(line['overrides'])} | failed (rc {line['rc']}) | | | | | |")
            continue
        accs = " ".join(f"{r['train_acc']:.1f}" for r in line.get("epochs", []) if "train_acc" in r)
        print(f"| {line['name']} | {' '.join(line['overrides']) or '(demo)'} | {m['overall']:.2f} | {m['many']:.2f} | "
              f"{m['medium']:.2f} | {m['few']:.2f} | {line['phase2_train_seconds']:.1f} | {accs} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="only print a markdown table of --jsonl's runs")
    parser.add_argument("--init", default="", help="phase-1 run directory (lpt train ... phases=[phase1])")
    parser.add_argument("--out-dir", default="", help="folder of the phase-2 run directories (one per NAME)")
    parser.add_argument("--jsonl", required=True, help="appended: one JSON line per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", action="append", type=parse_run, default=[], metavar="NAME=K=V,K=V",
                        help="a run (repeatable); default: the one-at-a-time sweep around the demo")
    args = parser.parse_args(argv)
    if args.table:
        print_table(Path(args.jsonl))
        return 0
    if not args.init or not args.out_dir:
        parser.error("--init and --out-dir are needed to run a sweep")
    runs = args.run or list(DEFAULT_SWEEP.items())
    jsonl = Path(args.jsonl)
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    done = done_names(jsonl)
    for name, overrides in runs:
        if name in done:
            print(f"{name}: already in {jsonl}, skipped", flush=True)
            continue
        line = run_one(name, overrides, args)
        with jsonl.open("a") as f:
            f.write(json.dumps(line) + "\n")
        m = line.get("metrics", {})
        print(f"{name} {' '.join(overrides)}: rc {line['rc']}, {m}, phase 2 {line.get('phase2_train_seconds')} s, "
              f"wall {line['wall_s']} s, load {line['loadavg_1min']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
