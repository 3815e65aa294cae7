"""Studies: a study file expanded into ordinary lpt runs, run by the local launcher, its state and its report."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml
from scipy import stats

from lpt.cli import main
from lpt.config import from_dict, save_config
from lpt.study import directory, launch
from lpt.study.report import write_study_report
from lpt.study.spec import load_study, tracking_on
from tests.conftest import tiny_run_overrides

ACC = ("overall", "many", "medium", "few")


def write_study(path, **fields):
    """A study file; ``fields`` replace the defaults (a tiny two-variant, two-seed study on the demo preset)."""
    study = {"name": "tiny", "base": {"config": "demo", "overrides": ["progress=false"]},
             "variants": {"lpt": [], "vpt": ["method=vpt", "phases=[phase1]"]}, "seeds": [0, 1]} | fields
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_study_expands_into_named_runs_with_their_overrides(tmp_path):
    study = load_study(write_study(tmp_path / "s.yaml", grid={"phase1.lr": [0.01, 0.04]}, seeds=[3]))
    runs = study.runs()
    assert [r.name for r in runs] == ["lpt__phase1.lr-0.01__seed3", "lpt__phase1.lr-0.04__seed3",
                                      "vpt__phase1.lr-0.01__seed3", "vpt__phase1.lr-0.04__seed3"]
    assert runs[2].overrides == ("progress=false", "method=vpt", "phases=[phase1]", "phase1.lr=0.01", "seed=3")
    cfg = study.resolve(runs[2])  # exactly as lpt train resolves it
    assert (cfg["method"], cfg["phases"], cfg["phase1"]["lr"], cfg["seed"]) == ("vpt", ["phase1"], 0.01, 3)


def test_a_variant_given_as_a_mapping_is_the_same_as_its_override_strings(tmp_path):
    study = load_study(write_study(tmp_path / "s.yaml", variants={"vpt": {"method": "vpt", "phases": ["phase1"]}}))
    assert study.runs()[0].overrides == ("progress=false", "method=vpt", 'phases=["phase1"]', "seed=0")
    assert study.resolve(study.runs()[0])["phases"] == ["phase1"]


def test_the_shipped_demo_study_is_the_demo_comparison():
    study = load_study("demo_methods")
    assert list(study.variants) == ["linear_probe", "vpt", "lora", "adaptformer", "ssf", "bitfit", "full", "lift",
                                    "lpt", "lpt_adaptformer", "lift_plus"]
    assert study.seeds == [0, 1, 2] and len(study.runs()) == 33
    from lpt.cli import DEMO_LINEAR_PROBE  # lpt demo's probe, unchanged
    assert study.variants["linear_probe"] == DEMO_LINEAR_PROBE


def study_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err  # one line
    return err


@pytest.mark.parametrize("fields, message", [
    ({"seed": [0]}, "unknown key 'seed' in the top level; valid keys: name, base, variants"),
    ({"variants": {"vpt": ["method=vpt", "phase1.epoch=3"]}}, "variant 'vpt'): unknown config key 'phase1.epoch'"),
    ({"seeds": []}, "seeds must be a non-empty list of distinct whole numbers >= 0, not []"),
    ({"base": {"config": "demo", "override": []}}, "unknown key 'override' in base; valid keys: config, overrides"),
    ({"select": "best_test"}, "select is 'best_test'; expected one of all, best_val"),
    ({"select": "best_val", "grid": {"phase1.lr": [0.1, 0.2]}}, "select: best_val needs validation numbers, but run "
                                                                  "lpt__phase1.lr-0.1__seed0 has neither"),
])
def test_bad_study_files_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys, fields, message):
    path = write_study(tmp_path / "s.yaml", **fields)
    err = study_error(["study", "run", str(path), "--out", str(tmp_path / "out")], capsys)
    assert message in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_two_variants_of_one_name_are_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\nbase: {config: demo}\nseeds: [0]\nvariants:\n  lpt: []\n  vpt: [method=vpt]\n"
                    "  lpt: [seed=1]\n")
    err = study_error(["study", "run", str(path), "--out", str(tmp_path / "out")], capsys)
    assert err == f"lpt study: error: {path} line 7: 'lpt' is given twice"


def test_a_study_directory_of_another_study_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "out"
    directory.prepare(load_study(write_study(tmp_path / "a.yaml")), out)
    before = (out / "study.json").read_text()
    other = write_study(tmp_path / "b.yaml", seeds=[0, 1, 2])
    err = study_error(["study", "run", str(other), "--out", str(out)], capsys)
    assert f"{out} holds the study 'tiny' made from {tmp_path / 'a.yaml'}, whose runs differ" in err
    same_names = write_study(tmp_path / "d.yaml", variants={"lpt": ["phase1.lr=0.1"], "vpt": ["method=vpt",
                                                                                               "phases=[phase1]"]})
    assert "whose runs differ" in study_error(["study", "run", str(same_names), "--out", str(out)], capsys)
    assert (out / "study.json").read_text() == before
    # the same study again is accepted (it resumes)
    assert directory.prepare(load_study(write_study(tmp_path / "c.yaml")), out)["fingerprint"] == json.loads(before)[
        "fingerprint"]


def test_a_study_that_tracks_groups_its_runs_under_its_name(tmp_path):
    tracked = write_study(tmp_path / "t.yaml", variants={"lpt": [], "vpt": ["method=vpt", "phases=[phase1]",
                                                                            f"log.mlflow.tracking_uri={tmp_path}/ml"]})
    record = directory.prepare(load_study(tracked), tmp_path / "out")
    assert [r["overrides"][-1] for r in record["runs"]] == ["seed=0", "seed=1", "log.group=tiny", "log.group=tiny"]
    run = record["runs"][2]
    assert launch.train_command(tmp_path / "out", run, 1)[-1] == "log.group=tiny"
    from lpt.config import load_config
    assert load_config("demo", run["overrides"]).log.group == "tiny"  # the W&B group, the MLflow parent run


def test_tracking_groups_runs_only_where_a_run_tracks():
    assert not tracking_on({"seed": 0})  # this lpt has no log section
    assert not tracking_on({"log": {"wandb": {"project": ""}, "mlflow": {"tracking_uri": ""}}})
    assert tracking_on({"log": {"wandb": {"project": "p"}, "mlflow": {"tracking_uri": ""}}})
    assert tracking_on({"log": {"wandb": {"project": ""}, "mlflow": {"tracking_uri": "sqlite:///m.db"}}})


def test_local_jobs_split_the_usable_cores_and_never_oversubscribe(monkeypatch):
    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    assert launch.split_cores(1, 10) == (1, 2)
    assert launch.split_cores(2, 10) == (2, 1)
    assert launch.split_cores(8, 10) == (2, 1)  # no more runs at once than cores
    assert launch.split_cores(2, 1) == (1, 2)  # one run left: it gets both cores


def test_dry_run_prints_the_runs_and_writes_nothing(tmp_path, capsys):
    path = write_study(tmp_path / "s.yaml", grid={"phase1.epochs": [1, 2]})
    assert main(["study", "run", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tmp_path / 'out' / 'runs' / 'lpt__phase1.epochs-1__seed0'}: progress=false phase1.epochs=1 " \
                     "seed=0"
    # lpt: phase 1 (1 or 2 epochs) + the demo's 4 of phase 2, for 2 seeds: (5 + 6) * 2; vpt: phase 1, (1 + 2) * 2
    assert out[-1] == "estimated cost: 8 runs, 28 epochs in all"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- a study that runs


def hand_stats(values):
    """mean, sample std and the 95% CI half-width, computed here from the formula."""
    n, mean = len(values), sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)


def check_report_against_runs(study_dir, groups: dict[str, list[str]]):
    """report.csv's numbers equal those computed by hand from each run's metrics.json."""
    write_study_report(study_dir)
    rows = {r["variant"]: r for r in csv.DictReader((study_dir / "report.csv").open())}
    for variant, names in groups.items():
        metrics = [json.loads((study_dir / "runs" / n / "metrics.json").read_text()) for n in names]
        row = rows[variant]
        for key in ACC:
            if metrics[0][key] is None:  # a shot group without classes in the tiny data
                assert row[f"{key}_mean"] == "" and all(m[key] is None for m in metrics)
                continue
            mean, std, half = hand_stats([m[key] for m in metrics])
            assert float(row[f"{key}_mean"]) == pytest.approx(mean, abs=1e-9)
            assert float(row[f"{key}_std"]) == pytest.approx(std, abs=1e-9)
            assert float(row[f"{key}_ci95"]) == pytest.approx(half, abs=1e-9)
        assert int(row["finished"]) == len(names)
        md = (study_dir / "report.md").read_text()
        mean, std, _ = hand_stats([m["overall"] for m in metrics])
        assert f"| {variant} | {len(names)}/{len(names)} | {mean:.2f} ± {std:.2f} |" in md


@pytest.fixture(scope="module")
def local_study(tmp_path_factory, tiny_fmnist):
    """2 variants x 2 seeds of the tiny settings, plus a variant whose runs fail (their data root is missing)."""
    tmp = tmp_path_factory.mktemp("study")
    path = write_study(tmp / "s.yaml", base={"config": "demo", "overrides": tiny_run_overrides(tiny_fmnist)},
                       variants={"lpt": [], "vpt": ["method=vpt", "phases=[phase1]"],
                                 "broken": [f"data.root={tmp / 'missing'}"]})
    out = tmp / "out"
    code = main(["--quiet", "study", "run", str(path), "--out", str(out), "--jobs", "2"])
    return path, out, code


@pytest.mark.slow
def test_a_local_study_runs_every_run_and_goes_on_past_failed_ones(local_study, capsys):
    path, out, code = local_study
    assert code == 1  # two runs failed
    states = {s.name: s for s in directory.statuses(out)}
    assert [n for n, s in states.items() if s.state == "finished"] == ["lpt__seed0", "lpt__seed1", "vpt__seed0",
                                                                       "vpt__seed1"]
    failed = states["broken__seed0"]
    assert failed.state == "failed" and failed.error.startswith("lpt train: error:") and "missing" in failed.error
    assert main(["study", "status", str(out)]) == 1
    printed = capsys.readouterr().out
    assert f"failed       broken__seed1: {failed.error}" in printed
    assert printed.splitlines()[-1] == "0 pending, 0 running, 0 interrupted, 4 finished, 2 failed"
    for name in ("lpt__seed0", "vpt__seed1"):  # ordinary lpt runs
        cfg = yaml.safe_load((out / "runs" / name / "config.yaml").read_text())
        assert cfg["seed"] == int(name[-1]) and cfg["threads"] == 1  # 2 jobs on 2 cores


@pytest.mark.slow
def test_a_second_study_run_skips_finished_runs_and_retries_failed_ones(local_study, capsys):
    path, out, _ = local_study
    logs = {n: directory.log_path(out, n).read_text() for n in ("lpt__seed0", "broken__seed0")}
    assert main(["--quiet", "study", "run", str(path), "--out", str(out)]) == 1
    assert directory.log_path(out, "lpt__seed0").read_text() == logs["lpt__seed0"]  # not started again
    assert directory.log_path(out, "broken__seed0").read_text().count("$ ") == 2  # tried again
    assert "study tiny: 6 runs, 4 finished, running or queued; 2 to run" in capsys.readouterr().out


@pytest.mark.slow
def test_the_report_gives_mean_std_and_ci_over_seeds_and_names_failed_runs(local_study):
    _, out, _ = local_study
    check_report_against_runs(out, {"lpt": ["lpt__seed0", "lpt__seed1"], "vpt": ["vpt__seed0", "vpt__seed1"]})
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "| broken | 0/2 |" in md
    assert "| broken__seed0 | failed | lpt train: error:" in md
    assert html.count('src="data:image/png;base64,') == 3 and "<img src=\"report_" not in html  # self-contained
    for png in ("report_overall_vs_params.png", "report_overall_vs_cost.png", "report_few.png"):
        assert (out / png).is_file() and f"]({png})" in md


def test_an_interrupted_run_is_resumed_by_the_next_study_run(tmp_path, tiny_fmnist):
    path = write_study(tmp_path / "s.yaml", base={"config": "demo", "overrides": tiny_run_overrides(tiny_fmnist)},
                       variants={"vpt": ["method=vpt", "phases=[phase1]"]}, seeds=[0])
    out = tmp_path / "out"
    record = directory.prepare(load_study(path), out)
    run = record["runs"][0]
    assert launch.train_command(out, run, 1)[-4:] == ["--out", str(out / "runs" / run["name"]), "progress=false",
                                                     *run["overrides"][1:]][-4:]
    # an interrupted run: a resumable state in its directory
    run_dir = out / "runs" / run["name"]
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / "classes.json").write_text("{}")
    (run_dir / "resume.safetensors").write_bytes(b"")
    assert launch.train_command(out, run, 1)[-3:] == ["train", "--resume", str(run_dir)]
    assert directory.run_status(out, run["name"]).state == "interrupted"
    (out / "logs").mkdir(exist_ok=True)
    for code in (130, 143):  # stopped by SIGINT / by SIGTERM (scancel, Slurm's pre-emption): saved, not failed
        (out / "logs" / f"{run['name']}.exit").write_text(str(code))
        assert directory.run_status(out, run["name"]).state == "interrupted"
    # several GPUs: torchrun, one process per GPU, inside the job
    assert launch.train_command(out, run, 4, gpus=2)[1:6] == ["-m", "torch.distributed.run", "--standalone",
                                                              "--nproc_per_node=2", "-m"]


def test_a_run_whose_directory_another_process_holds_is_running(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    code = (f"import time; from pathlib import Path; from lpt.run.files import run_lock\n"
            f"with run_lock(Path({str(run_dir)!r})):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (run_dir / "config.yaml").write_text("seed: 0\n")
        (run_dir / "classes.json").write_text("{}")
        assert directory.run_status(tmp_path, "r").state == "running"
    finally:
        holder.kill()
        holder.wait()
    assert directory.run_status(tmp_path, "r").state == "pending"  # the lock went with its process


# ----------------------------------------------------------------------------- select: best_val


def synthetic_run(run_dir, overrides, test: dict, vals: list[float]):
    """A finished run directory written by hand: its config, metrics.json (test) and validation records."""
    run_dir.mkdir(parents=True)
    save_config(from_dict(yaml.safe_load("data: {source: list, val_list: v.txt}") | {}), run_dir / "config.yaml")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key, value in overrides.items():
        cfg[key] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "classes.json").write_text(json.dumps({"classes": ["a", "b"], "train_counts": [200, 5]}))
    (run_dir / "metrics.json").write_text(json.dumps(test | {"phase": 2}))
    (run_dir / "run.json").write_text(json.dumps({"method": "lpt", "phases": {"phase2": {"train_seconds": 10}},
                                                  "wall_seconds": 12, "world_size": 1}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"phase": "phase2", "epoch": e + 1, "val": {
        "overall": v, "many": v, "medium": v, "few": v, "num_images": 10}}) + "\n" for e, v in enumerate(vals)))


def test_best_val_selects_on_validation_even_where_test_disagrees(tmp_path):
    path = write_study(tmp_path / "s.yaml", variants={"lpt": [], "vpt": ["method=vpt", "phases=[phase1]"]},
                       grid={"phase1.lr": [0.01, 0.04]}, select="best_val",
                       base={"config": "demo", "overrides": ["data.source=list", "data.val_list=v.txt"]})
    out = tmp_path / "out"
    record = directory.prepare(load_study(path), out)
    # lr 0.01: better on validation (60, 62), worse on test (50, 52); lr 0.04 the other way round.
    numbers = {"0.01": ([60, 62], [50, 52]), "0.04": ([55, 57], [70, 72])}
    for run in record["runs"][:4]:  # lpt's; vpt's never ran
        lr = run["setting"].split("=")[1]
        val, test = numbers[lr][0][run["seed"]], numbers[lr][1][run["seed"]]
        synthetic_run(out / "runs" / run["name"], {}, dict.fromkeys(ACC, test), [val - 10, val])
    write_study_report(out)
    rows = {(r["variant"], r["setting"]): r for r in csv.DictReader((out / "report.csv").open())}
    assert rows["lpt", "phase1.lr=0.01"]["selected"] == "True" and rows["lpt", "phase1.lr=0.04"]["selected"] == "False"
    assert float(rows["lpt", "phase1.lr=0.01"]["val_overall_mean"]) == 61.0  # the last validation of each run
    md = (out / "report.md").read_text()
    assert "| lpt (phase1.lr=0.01) | 2/2 | 51.00 ± 1.41 |" in md  # the table shows the validation choice
    assert "| lpt | phase1.lr=0.04 | 2/2 | 56.00 | 71.00 |  |" in md
    # a variant with nothing to choose on yet is shown unfinished, every setting, not dropped
    assert "| vpt (phase1.lr=0.01) | 0/2 | - |" in md and "| vpt (phase1.lr=0.04) | 0/2 | - |" in md
    assert "| vpt__phase1.lr-0.04__seed1 | pending | - |" in md and "| vpt | phase1.lr=0.01 | 0/2 | - | - |  |" in md


def test_best_val_runs_count_their_best_validation_epoch(tmp_path):
    run_dir = tmp_path / "r"
    synthetic_run(run_dir, {"select": "best_val"}, dict.fromkeys(ACC, 50.0), [70.0, 65.0])
    from lpt.study.report import read_numbers
    assert read_numbers(run_dir).val == 70.0
    assert np.isclose(read_numbers(run_dir).eval_device_h, 2 / 3600)
    zero_shot = tmp_path / "z"  # no phase: nothing was validated
    synthetic_run(zero_shot, {"method": "zeroshot", "phases": []}, dict.fromkeys(ACC, 40.0), [])
    assert read_numbers(zero_shot).val is None and read_numbers(zero_shot).accuracy["overall"] == 40.0
