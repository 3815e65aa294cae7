"""``lpt`` command line: parses arguments, calls the library, prints results. Nothing more."""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import signal
import sys
import time
from pathlib import Path

from lpt.config import CHOICES, ConfigError, load_config, preset_names
from lpt.version import __version__


def _default_out(name: str) -> Path:
    return Path("runs") / f"{Path(name).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


# The demo's linear probe: a linear head on the frozen backbone's class-token feature (computed once),
# cross-entropy on class-balanced batches; 30 epochs of cached features take seconds.
DEMO_LINEAR_PROBE = ["method=linear", "phases=[phase1]", "model.prompt_len=0", "model.head=linear", "loss.name=ce",
                     "loss.scale=1", "phase1.sampling=balanced", "phase1.epochs=30"]


def print_summary(outs: list[Path], title: str) -> None:
    """One shot table over finished runs (a row per run and phase), and a note if a backbone was random."""
    from lpt.analysis.compare import phase_rows, shot_table

    rows, random = phase_rows(outs)
    print(f"\n{title}")
    print(shot_table(rows))
    for name in random:
        print(f"note: backbone {name} was randomly initialised (no pretrained weights)")
    print(f"run directory: {outs[-1]}" if len(outs) == 1 else "run directories: " + ", ".join(map(str, outs)))


def cmd_train(args: argparse.Namespace) -> int:
    from lpt.run.files import read_config

    if args.resume:
        if args.config or args.overrides or args.out or args.skip_bad_images or args.overwrite:
            raise ConfigError("--resume RUN_DIR continues a run with its own config; "
                              "drop --config, --out, --overwrite, --skip-bad-images and overrides")
        out = Path(args.resume)
        cfg = read_config(out)
    elif not args.config:
        raise ConfigError("lpt train needs --config PRESET_OR_YAML (or --resume RUN_DIR)")
    else:
        cfg = load_config(args.config, args.overrides + (["deterministic=true"] if args.deterministic else [])
                          + (["data.skip_bad_images=true"] if args.skip_bad_images else [])
                          + ([f"threads={args.threads}"] if args.threads else []))
        out = Path(args.out) if args.out else _default_out(args.config)
    return _run_interruptible([(cfg, out)], "test accuracy %:", resume=bool(args.resume), overwrite=args.overwrite)


def _run_interruptible(stages: list, title: str, resume: bool = False, overwrite: bool = False,
                       shown: list[Path] | None = None) -> int:
    """Train each (config, run directory) in turn, write its report, then print one table (of ``shown`` runs,
    default all); on SIGINT / SIGTERM say in one line how to resume the interrupted run and exit as the signal
    would have (130 / 143). ``train`` checks each
    config before anything is written. Under torchrun only rank 0 writes a run's results, so it alone reports."""
    from lpt.engine.trainer import Interrupted
    from lpt.run.train import train

    main = os.environ.get("RANK", "0") == "0"
    for cfg, out in stages:
        try:
            train(cfg, out, resume=resume, overwrite=overwrite)
        except Interrupted as exc:
            print(f"lpt: interrupted by {signal.Signals(exc.signum).name} ({exc}); the run is saved. Resume with: "
                  f"lpt train --resume {out}", file=sys.stderr)
            return 128 + exc.signum
        if main:
            _write_report(out)
    if main:
        print_summary(shown or [out for _, out in stages], title)
    return 0


def _write_report(out: Path) -> None:
    """report.html / report.md of a finished run; a failure only warns: the run is saved."""
    from lpt.analysis.report import write_report
    from lpt.utils import log

    try:
        write_report(out)
    except Exception as exc:  # noqa: BLE001 - the report is a convenience; never lose a finished run over it
        log.warning("run %s is saved, but its report could not be written: %s: %s", out, type(exc).__name__, exc)


def cmd_demo(args: argparse.Namespace) -> int:
    from lpt.run.files import DEMO_PROBE

    overrides = list(args.overrides) + (["data.download=true"] if args.download else [])
    cfg = load_config("demo", overrides)
    out = Path(args.out) if args.out else _default_out("demo")
    stages = [(cfg, out)]
    if not args.no_linear_probe:  # the probe's run lives inside the demo's run directory, trained after LPT's
        stages.append((load_config("demo", overrides + DEMO_LINEAR_PROBE), out / DEMO_PROBE))
    title = f"Fashion-MNIST-LT (imbalance 100), backbone {cfg.model.backbone}, test accuracy %:"
    return _run_interruptible(stages, title, shown=[o for _, o in reversed(stages)])


def cmd_eval(args: argparse.Namespace) -> int:
    from lpt.analysis.compare import shot_table
    from lpt.analysis.report import fmt
    from lpt.metrics import SCORE_METRICS
    from lpt.run.load import evaluate_run

    if args.zero_shot:
        return _zero_shot(args)
    if not args.run:
        raise ConfigError("lpt eval needs --run RUN_DIR, or --zero-shot --config PRESET for zero-shot CLIP")
    if args.config or args.out or args.overrides:
        raise ConfigError("--config, --out and key=value overrides go with --zero-shot; a run is evaluated with "
                          "--run RUN_DIR and --data key=value")

    data = [f"data.{o}" if not o.startswith("data.") else o for o in args.data or []]
    if args.posthoc_tau is not None and args.tau_norm is not None:
        raise ConfigError("--posthoc-tau and --tau-norm are two corrections of the same classifier: give one")
    if args.posthoc_tau is None and args.tau_norm is None:
        metrics = evaluate_run(args.run, data, device=args.device, tta=args.tta)
    else:
        from lpt.run.posthoc import evaluate_posthoc

        kind, tau = ("logit_adjustment", args.posthoc_tau) if args.tau_norm is None else ("tau_norm", args.tau_norm)
        metrics = evaluate_posthoc(args.run, kind, tau, data, device=args.device, tta=args.tta)
    if args.json:
        print(json.dumps(metrics))
    else:
        tta = f", tta {metrics['tta']}" if metrics["tta"] != "none" else ""
        posthoc = f", {metrics['posthoc']['method']} tau {metrics['posthoc']['tau']}" if "posthoc" in metrics else ""
        print(shot_table({f"{args.run} (phase {metrics['phase']}{tta}{posthoc})": metrics}))
        print("official shot rule: " + ", ".join(f"{k} {fmt(v)}" for k, v in metrics["official"].items()))
        print(", ".join(f"{name} {fmt(metrics[k])}" for k, name in SCORE_METRICS.items()))
        if "posthoc" in metrics:
            print(f"tau {metrics['posthoc']['tau']} chosen on: {metrics['posthoc']['chosen_on']}")
    return 0


def _zero_shot(args: argparse.Namespace) -> int:
    """``lpt eval --zero-shot``: CLIP's own classifier on a config's data, written as a run (method zeroshot)."""
    from lpt.methods.zeroshot import zero_shot_config

    if not args.config or args.run:
        raise ConfigError("lpt eval --zero-shot needs --config PRESET_OR_YAML (a CLIP preset, e.g. "
                          "lift_clip_places_lt) and no --run")
    cfg = zero_shot_config(args.config, args.overrides)
    out = Path(args.out) if args.out else _default_out(f"{Path(args.config).stem}-zeroshot")
    return _run_interruptible([(cfg, out)], "zero-shot test accuracy %:")


def cmd_predict(args: argparse.Namespace) -> int:
    from lpt.run.load import load_run
    from lpt.run.predict import expand_images, predict_topk, readable_images

    if args.topk < 1:
        raise ConfigError(f"--topk is {args.topk}; expected 1 or more classes per image")
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise ConfigError(f"--out {args.out} already exists; choose another file, or add --overwrite to replace it")
    run = load_run(args.run)
    paths = expand_images(args.images)
    if args.skip_bad_images:
        paths = readable_images(paths, run.config.data.num_workers)
    rows = predict_topk(run, paths, k=args.topk, tta=args.tta)
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
    from lpt.config import parse_kwargs
    from lpt.run.official import import_official

    out = import_official(args.checkpoint, args.out, backbone=args.backbone,
                          backbone_args=parse_kwargs(args.backbone_arg), top_k=args.top_k,
                          classes_file=args.classes, train_list=args.train_list,
                          train_counts_file=args.train_counts, config=args.config,
                          overrides=[o if o.startswith("data.") else f"data.{o}" for o in args.data or []])
    print(f"imported {args.checkpoint} into {out}; evaluate with: lpt eval --run {out}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from lpt.data.check import check_config, check_list_file

    if bool(args.config) == bool(args.list):
        raise ConfigError("lpt data-check needs either --config PRESET_OR_YAML or --list FILE (with --root DIR)")
    if args.list:
        if args.overrides:
            raise ConfigError("lpt data-check --list takes no key=value overrides; use --config for those")
        report = check_list_file(args.list, args.root, args.skip_bad_images)
    else:
        cfg = load_config(args.config, args.overrides + (["data.skip_bad_images=true"] if args.skip_bad_images else []))
        report = check_config(cfg.data)
    for bad in report.bad:
        print(bad.line())
    print(report.summary())
    return 0 if report.passed else 1


def cmd_data_stats(args: argparse.Namespace) -> int:
    from lpt.analysis.data_stats import default_plot_path, format_stats, plot_counts, split_stats

    stats = split_stats(args.target, args.overrides)
    print(format_stats(stats))
    plot = plot_counts(stats, default_plot_path(args.target, args.out), title=f"{Path(args.target).stem}: "
                       f"{stats['num_classes']:,} classes, {stats['num_images']:,} images")
    print(f"plot: {plot}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lpt.analysis.report import compute_predictions, lacks_predictions, write_report

    if lacks_predictions(args.run_dir):
        try:
            print(f"computing {compute_predictions(args.run_dir, args.device)} for the prompt matching statistics")
        except _user_errors() as exc:
            print(f"lpt report: warning: cannot compute the predictions ({exc}); the report omits prompt matching",
                  file=sys.stderr)
    html_path, md_path = write_report(args.run_dir)
    print(f"wrote {html_path} and {md_path}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from lpt.analysis.analyze import ANALYSIS_JSON, analyze_run, format_analysis

    record = analyze_run(args.run_dir, [f"data.{o}" if not o.startswith("data.") else o for o in args.data or []],
                         k=args.k, device=args.device, max_lda_classes=args.lda_classes)
    print(format_analysis(record))
    print(f"wrote {Path(args.run_dir) / ANALYSIS_JSON}" + (f" and {Path(args.run_dir) / record['lda']['plot']}"
                                                          if record["lda"]["plot"] else ""))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lpt.analysis.compare import compare_runs, split_notes, to_markdown, write_comparison

    rows = compare_runs(args.runs)
    print(to_markdown(rows))
    for note in split_notes(rows):
        print(note)
    if args.out:
        md_path, csv_path = write_comparison(rows, args.out)
        print(f"wrote {md_path} and {csv_path}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print every key of the resolved config with its value (as an override would write it) and its meaning."""
    import yaml

    from lpt.config import describe

    def as_yaml(value) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).removesuffix("...\n").strip()

    rows = [(f"{key}: {as_yaml(value)}", comment) for key, value, comment in
            describe(load_config(args.show, args.overrides))]
    width = max(len(text) for text, _ in rows)
    for text, comment in rows:
        print(f"{text:<{width}}  # {comment}" if comment else text)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from lpt.config import parse_kwargs
    from lpt.pretrain import PretrainConfig, pretrain

    steps = args.steps if args.steps is not None else (0 if args.epochs else 1000)
    cfg = PretrainConfig(recipe=args.recipe, backbone=args.backbone,
                         backbone_args=parse_kwargs(args.backbone_arg), img_size=args.img, steps=steps,
                         epochs=args.epochs or 0, batch_size=args.batch, lr=args.lr, weight_decay=args.weight_decay,
                         device=args.device, seed=args.seed, log_every=args.log_every,
                         workers=args.workers, data_root=args.data_root, mask_ratio=args.mask_ratio,
                         num_classes=args.num_classes, font_dirs=tuple(args.font_dir or ()))
    card = pretrain(cfg, args.out).card
    metric = card["final_metric"]
    print(f"final {metric['name']}: {metric['value']:.4f} ({metric['on']})")
    print(f"wrote {Path(args.out) / card['weights']['file']} (fingerprint {card['weights']['fingerprint']}), "
          f"card.json and card.md; use it with: lpt demo {card['load']['config']}")
    return 0


def cmd_study_run(args: argparse.Namespace) -> int:
    """Expand a study file and run what is not finished: new runs start, interrupted ones resume, failed ones are
    tried again; a run that fails does not stop the others."""
    from lpt.study import directory, launch, slurm
    from lpt.study.spec import load_study

    study, out = load_study(args.study), Path(args.out)
    if args.dry_run:
        configs = [study.resolve(r) for r in study.runs()]
        runs = study.record(configs)["runs"]
        for run in runs:
            print(f"{directory.run_dir(out, run['name'])}: {' '.join(run['overrides'])}")
        print(f"estimated cost: {launch.estimate(out, runs, configs)}")
        return 0
    record = directory.prepare(study, out)
    held = slurm.queued(out) if args.launcher == "slurm" else set()
    todo = [r for r in record["runs"] if r["name"] not in held
            and directory.run_status(out, r["name"]).state not in ("finished", "running")]
    print(f"study {record['name']}: {len(record['runs'])} runs, {len(record['runs']) - len(todo)} finished, running "
          f"or queued; {len(todo)} to run")
    if todo and args.launcher == "local":
        try:
            launch.run_local(out, todo, args.jobs)
        except KeyboardInterrupt:
            print(f"lpt: interrupted; the runs are saved. Go on with: lpt study run {args.study} --out {out}",
                  file=sys.stderr)
            return 130
    elif todo:
        given = {"partition": args.partition, "account": args.account, "time_min": args.time_min,
                 "gpus": args.gpus, "cpus": args.cpus, "mem_gb": args.mem_gb}
        ids = slurm.submit(out, todo, slurm.resources(study.slurm, given), record["name"])
        print(f"submitted array job {ids[0].split('_')[0]} ({len(ids)} tasks); follow it with: lpt study status {out}")
        if args.wait:
            slurm.wait(ids)
    return _print_status(out)


def _print_status(out: Path) -> int:
    """Every run's state, failures with their last error line; 1 when a run failed."""
    from lpt.study import directory

    states = directory.statuses(out)
    for s in states:
        print(f"{s.state:<12} {s.name}" + (f": {s.error}" if s.error else ""))
    counts = {state: sum(s.state == state for s in states) for state in directory.STATES}
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    return 1 if counts["failed"] else 0


def cmd_study_status(args: argparse.Namespace) -> int:
    return _print_status(Path(args.study_dir))


def cmd_study_report(args: argparse.Namespace) -> int:
    from lpt.study.report import write_study_report

    paths = write_study_report(args.study_dir)
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def _study_parser(sub) -> None:
    study = sub.add_parser("study", help="a study: variants x seeds x grid as lpt runs, here or on Slurm, "
                           "reported together")
    steps = study.add_subparsers(dest="study_command", required=True)
    p = steps.add_parser("run", help="run a study file's runs into a study directory (finished runs are skipped, "
                         "interrupted ones resumed)")
    p.add_argument("study", metavar="STUDY", help="study file (YAML; see docs/studies.md)")
    p.add_argument("--out", required=True, metavar="DIR", help="study directory")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--jobs", type=int, default=1, help="local: runs at once, the usable cores split between them")
    p.add_argument("--dry-run", action="store_true", help="print the runs, their count and the estimated cost")
    p.add_argument("--wait", action="store_true", help="slurm: wait until the array job has ended")
    for name, kind, what in (("partition", str, "partition"), ("account", str, "account"),
                             ("time-min", int, "time limit of each run, minutes"), ("gpus", int, "GPUs per run "
                             "(more than 1: torchrun)"), ("cpus", int, "CPUs per run"), ("mem-gb", int, "memory per "
                             "run, GB")):
        p.add_argument(f"--{name}", type=kind, help=f"slurm: {what} (default: the study file's slurm section)")
    p.set_defaults(func=cmd_study_run)
    p = steps.add_parser("status", help="pending, running, interrupted, finished and failed runs of a study")
    p.add_argument("study_dir", metavar="DIR", help="study directory")
    p.set_defaults(func=cmd_study_status)
    p = steps.add_parser("report", help="report.md, report.csv and report.html of a study (mean ± std over seeds)")
    p.add_argument("study_dir", metavar="DIR", help="study directory")
    p.set_defaults(func=cmd_study_report)


def _threads(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of threads (0: the usable cores)")
    return int(text)


def _common_options(parser: argparse.ArgumentParser, default: object) -> None:
    """Options every subcommand takes, before or after its name; after it, ``default=SUPPRESS`` leaves the
    value given before it in place when not repeated."""
    parser.add_argument("--quiet", action="store_true", default=default, help="log warnings only")
    parser.add_argument("--threads", type=_threads, metavar="N", default=default,
                        help="CPU threads of torch's operators (0: the cores this process may use)")


def _tau(text: str) -> float | str:
    """``auto`` or a number, for --posthoc-tau and --tau-norm."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor auto") from None


def _tta_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", choices=CHOICES["tta"],
                   help="test-time ensembling instead of the run's (config key tta; crops: LIFT's five crops)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpt", description="Long-tailed prompt tuning of frozen ViTs (LPT).")
    parser.add_argument("--version", action="version", version=f"lpt {__version__}")
    _common_options(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])  # every subcommand takes them

    p = sub.add_parser("train", help="train phase 1, phase 2 or both into a run directory")
    p.add_argument("--config", help=f"preset ({', '.join(preset_names())}) or YAML file")
    p.add_argument("--out", help="run directory (default runs/<config>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run where it stopped")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier lpt run in --out first (without it, such a directory is refused)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (repeatable CPU runs)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="decode every image first; drop unreadable ones, listed in RUN_DIR/bad_images.txt")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. phase1.epochs=5")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="offline demo: LPT on Fashion-MNIST-LT")
    p.add_argument("--out", help="run directory (default runs/demo-<time>)")
    p.add_argument("--download", action="store_true", help="fetch Fashion-MNIST through torchvision if missing")
    p.add_argument("--no-linear-probe", action="store_true",
                   help="train LPT only (by default a linear probe on the same frozen backbone runs first)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="reload a run and evaluate it, or evaluate zero-shot CLIP (--zero-shot)")
    p.add_argument("--run", help="run directory")
    p.add_argument("--data", nargs="+", metavar="key=value", help="data overrides, e.g. test_list=val.txt root=/data")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    _tta_option(p)
    p.add_argument("--posthoc-tau", type=_tau, metavar="T|auto",
                   help="post-hoc logit adjustment (Menon et al. 2021): subtract T * log(training prior) from the "
                        "logits; auto: the T of 0, 0.1, .., 2 best on the validation split (data.val_list)")
    p.add_argument("--tau-norm", type=_tau, metavar="T|auto",
                   help="tau-normalisation of a linear classifier (Kang et al. 2020): weights w_i / ||w_i||^T, no "
                        "bias; auto: the T of 0, 0.1, .., 2 best on the validation split (data.val_list)")
    p.add_argument("--zero-shot", action="store_true",
                   help="CLIP's own classifier (the class names' text embeddings, model.text) on --config's data, "
                        "written as a run directory (--out) with the shot table")
    p.add_argument("--config", help="with --zero-shot: preset or YAML file (a CLIP one: model.text)")
    p.add_argument("--out", help="with --zero-shot: run directory (default runs/<config>-zeroshot-<time>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="with --zero-shot: dotted config overrides")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="top-k classes of images with a trained run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--out", help="write a CSV file instead of printing (an existing file only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable images out, naming each, instead of stopping at the first")
    _tta_option(p)
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

    p = sub.add_parser("data-check", help="decode every image of a config's splits (or of a list file) and list "
                       "every unreadable one; exit 1 if there is one, unless --skip-bad-images")
    p.add_argument("--config", help="preset or YAML whose data.* splits to check")
    p.add_argument("--list", metavar="FILE", help="a 'relative/path label' list file to check instead")
    p.add_argument("--root", default="", metavar="DIR", help="with --list: folder the listed paths are relative to")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="unreadable images will be skipped (as lpt train --skip-bad-images skips them): exit 0")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.root=/data")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("report", help="write report.html and report.md (with plots) into a finished run directory")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--device", default="auto", help="where to compute predictions.npz if the run lacks it")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("analyze", help="feature geometry (R, D, gamma), k-NN accuracy and LDA of a run's features")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--data", nargs="+", metavar="key=value", help="data overrides, e.g. test_list=val.txt root=/data")
    p.add_argument("--k", type=int, default=10, help="neighbours of the cosine k-NN classifier (default 10)")
    p.add_argument("--lda-classes", type=int, default=20, help="classes drawn in the LDA plot (default 20)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("compare", help="table of runs: method, backbone, shot-group accuracy, parameters, "
                       "images/s (features/s for a linear probe)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    p.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md and PREFIX.csv")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("config", help="print every config key with its resolved value and what it means")
    p.add_argument("--show", required=True, metavar="PRESET_OR_YAML", help="preset or YAML file to resolve")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("pretrain", help="pretrain a small timm ViT offline (MAE or glyphs) into timm weights")
    p.add_argument("--recipe", required=True, choices=("mae", "glyphs"),
                   help="mae: masked autoencoder on Fashion-MNIST's training images (no labels); "
                        "glyphs: classify characters rendered from the system fonts")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/backbone.safetensors, card.json, card.md")
    p.add_argument("--backbone", default="vit_tiny_patch16_224", help="timm architecture (default %(default)s)")
    p.add_argument("--backbone-arg", action="append", metavar="NAME=VALUE",
                   help="timm.create_model argument, repeatable (e.g. patch_size=4, depth=12)")
    p.add_argument("--img", type=int, default=28, help="image side in pixels (default 28)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (default 1000)")
    length.add_argument("--epochs", type=int, help="mae: passes over the images; glyphs: 100 new images per class each")
    p.add_argument("--batch", type=int, default=512, help="images per step (default 512)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay on matrices (default 0.05)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50, help="steps between progress lines (default 50)")
    p.add_argument("--workers", type=int, default=-1, help="glyph rendering processes (default: cores - 1, max 16)")
    p.add_argument("--data-root", default="", help="mae: Fashion-MNIST IDX folder (default: Debian's location)")
    p.add_argument("--mask-ratio", type=float, default=0.75, help="mae: patches masked per image (default 0.75)")
    p.add_argument("--num-classes", type=int, default=1000, help="glyphs: characters to classify (default 1000)")
    p.add_argument("--font-dir", action="append", metavar="DIR", help="glyphs: font folder, repeatable "
                   "(default: /usr/share/fonts and the other system font folders)")
    p.set_defaults(func=cmd_pretrain)
    _study_parser(sub)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    from lpt.engine.step import TrainingError
    from lpt.model import BackboneError
    from lpt.model.state import CheckpointError
    from lpt.utils import DeviceError

    return ConfigError, BackboneError, CheckpointError, TrainingError, DeviceError, OSError


def _one_line(exc: Exception) -> str:
    """The message of ``exc``; for an error re-raised by a DataLoader worker (its message is the worker's
    traceback), the original message: the last line, less its exception type."""
    import re

    text = str(exc).strip()
    if "\n" not in text:
        return text
    return re.sub(r"^[A-Za-z_][\w.]*: ", "", text.splitlines()[-1], count=1)


def main(argv: list[str] | None = None) -> int:
    import logging

    from lpt.utils import set_threads, setup_logging

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse ends a list of key=value overrides at the first option: take up those that follow it too
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides += extra
    USER_ERRORS = _user_errors()
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    set_threads(args.threads or 0)  # torch's own default counts the machine's cores, not the usable ones
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`lpt config --show demo | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as exc:
        print(f"lpt {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
