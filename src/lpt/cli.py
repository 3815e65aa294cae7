"""``lpt`` command line: parses arguments, calls the library, prints results. Nothing more."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

from lpt.config import ConfigError, load_config, preset_names


def _default_out(name: str) -> Path:
    return Path("runs") / f"{Path(name).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def shot_table(rows: dict[str, dict]) -> str:
    """Markdown table of overall / many / medium / few accuracy, one row per model."""
    lines = ["| model | overall | many | medium | few |", "|---|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in ("overall", "many", "medium", "few")) + " |")
    return "\n".join(lines)


def print_summary(out: Path, title: str) -> None:
    """The per-phase shot table of a finished run, and a warning if its backbone was random (rank 0 only)."""
    if os.environ.get("RANK", "0") != "0":
        return
    run = json.loads((out / "run.json").read_text())
    print(f"\n{title}")
    method = {"lpt": "LPT", "lpt_joint": "LPT joint", "vpt": "VPT", "linear": "linear probe", "full": "full FT"}
    label = method.get(run.get("method", "lpt"), run.get("method"))
    print(shot_table({f"{label} {name.replace('phase', 'phase ')}": m for name, m in run["phases"].items()}))
    if run["backbone"]["source"] == "random":
        print(f"note: backbone {run['backbone']['name']} was randomly initialised (no pretrained weights)")
    print(f"run directory: {out}")


def cmd_train(args: argparse.Namespace) -> int:
    from lpt.config import from_dict, read_yaml
    from lpt.engine.runner import train

    if args.resume:
        if args.config or args.overrides or args.out:
            raise ConfigError("--resume RUN_DIR continues a run with its own config; drop --config, --out and overrides")
        out = Path(args.resume)
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"{out} is not an lpt run directory (no config.yaml)")
        cfg = from_dict(read_yaml(out / "config.yaml"))
    elif not args.config:
        raise ConfigError("lpt train needs --config PRESET_OR_YAML (or --resume RUN_DIR)")
    else:
        cfg = load_config(args.config, args.overrides + (["deterministic=true"] if args.deterministic else []))
        out = Path(args.out) if args.out else _default_out(args.config)
    return _run_interruptible(lambda: train(cfg, out, resume=bool(args.resume)), out, "test accuracy %:")


def _run_interruptible(run, out: Path, title: str) -> int:
    """Run training; on SIGINT / SIGTERM say how to resume and exit 130."""
    from lpt.engine.trainer import Interrupted

    try:
        run()
    except Interrupted as exc:
        print(f"lpt: interrupted ({exc}); the run is saved. Resume with: lpt train --resume {out}", file=sys.stderr)
        return 130
    print_summary(out, title)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lpt.engine.runner import train

    overrides = list(args.overrides) + (["data.download=true"] if args.download else [])
    cfg = load_config("demo", overrides)
    out = Path(args.out) if args.out else _default_out("demo")
    return _run_interruptible(lambda: train(cfg, out), out, "Fashion-MNIST-LT (imbalance 100), test accuracy %:")


def cmd_eval(args: argparse.Namespace) -> int:
    from lpt.engine.runner import evaluate_run

    metrics = evaluate_run(args.run, [f"data.{o}" if not o.startswith("data.") else o for o in args.data or []],
                           device=args.device)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(shot_table({f"{args.run} (phase {metrics['phase']})": metrics}))
        print(f"official shot rule: " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics["official"].items()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lpt.engine.runner import load_run
    from lpt.predict import expand_images, predict_topk

    run = load_run(args.run)
    rows = predict_topk(run, expand_images(args.images), k=args.topk)
    if args.out:
        with open(args.out, "w", newline="") as fh:
            writer = csv.writer(fh)
            k = len(rows[0]["classes"])
            writer.writerow(["path"] + [f"{w}{i + 1}" for i in range(k) for w in ("class", "score")])
            for r in rows:
                writer.writerow([r["path"]] + [x for c, s in zip(r["classes"], r["scores"]) for x in (c, f"{s:.4f}")])
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        for r in rows:
            print(r["path"] + ": " + ", ".join(f"{c} ({s:.3f})" for c, s in zip(r["classes"], r["scores"])))
    return 0


def cmd_import_official(args: argparse.Namespace) -> int:
    from lpt.official import import_official, parse_backbone_args

    out = import_official(args.checkpoint, args.out, backbone=args.backbone,
                          backbone_args=parse_backbone_args(args.backbone_arg), top_k=args.top_k,
                          classes_file=args.classes, train_list=args.train_list,
                          train_counts_file=args.train_counts, config=args.config,
                          overrides=[o if o.startswith("data.") else f"data.{o}" for o in args.data or []])
    print(f"imported {args.checkpoint} into {out}; evaluate with: lpt eval --run {out}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from lpt.analysis.data_stats import default_plot_path, format_stats, plot_counts, split_stats

    stats = split_stats(args.target, args.overrides)
    print(format_stats(stats))
    plot = plot_counts(stats, default_plot_path(args.target, args.out), title=f"{Path(args.target).stem}: "
                       f"{stats['num_classes']:,} classes, {stats['num_images']:,} images")
    print(f"plot: {plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpt", description="Long-tailed prompt tuning of frozen ViTs (LPT).")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train phase 1, phase 2 or both into a run directory")
    p.add_argument("--config", help=f"preset ({', '.join(preset_names())}) or YAML file")
    p.add_argument("--out", help="run directory (default runs/<config>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run where it stopped")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (repeatable CPU runs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. phase1.epochs=5")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="offline demo: LPT on Fashion-MNIST-LT")
    p.add_argument("--out", help="run directory (default runs/demo-<time>)")
    p.add_argument("--download", action="store_true", help="fetch Fashion-MNIST through torchvision if missing")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="reload a run and evaluate it")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--data", nargs="+", metavar="key=value", help="data overrides, e.g. test_list=val.txt root=/data")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of images with a trained run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--out", help="write a CSV file instead of printing")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("import-official", help="turn the published LPT checkpoint (DongSky/LPT) into a run directory")
    p.add_argument("checkpoint", help="official .pth file ({'state_dict': ...}); read with weights_only=True")
    p.add_argument("--backbone", default="vit_base_patch16_224.augreg_in21k",
                   help="timm name of its ViT's architecture (default: ViT-B/16 at 224, the published one); "
                        "its weights come from the checkpoint")
    p.add_argument("--backbone-arg", action="append", metavar="NAME=VALUE",
                   help="timm.create_model argument, repeatable (e.g. img_size=384)")
    p.add_argument("--top-k", type=int, default=2, help="groups selected per image (default 2)")
    p.add_argument("--out", required=True, help="run directory to write")
    counts = p.add_mutually_exclusive_group(required=True)
    counts.add_argument("--train-list", help="'relative/path label' training list whose labels give the class counts")
    counts.add_argument("--train-counts", help="JSON list of training images per class (or a run's classes.json)")
    p.add_argument("--classes", help="class names, one per line (default: 0..C-1)")
    p.add_argument("--config", help="preset or YAML whose data settings the run keeps (e.g. places_lt)")
    p.add_argument("--data", nargs="+", metavar="key=value", help="data settings, e.g. root=/data test_list=val.txt")
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("data-stats", help="class counts, shot groups and a count plot of a training split")
    p.add_argument("target", metavar="SPLIT_LIST_OR_PRESET",
                   help="split list file (images not needed), iNaturalist .json, preset or YAML config")
    p.add_argument("--out", metavar="DIR", help="folder of the plot <name>_counts.png (default: current folder)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.train_list=...")
    p.set_defaults(func=cmd_data_stats)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    from lpt.engine.checkpoint import CheckpointError
    from lpt.engine.trainer import TrainingError
    from lpt.model import BackboneError

    return ConfigError, BackboneError, CheckpointError, TrainingError, OSError


def main(argv: list[str] | None = None) -> int:
    import logging

    from lpt.utils import setup_logging

    args = build_parser().parse_args(argv)
    USER_ERRORS = _user_errors()
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"lpt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
