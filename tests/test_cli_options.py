"""Options every subcommand takes (--quiet, --threads, before or after its name) and `lpt config --show`."""

import dataclasses
import logging
import typing

import pytest
import torch

from lpt.cli import main
from lpt.config import Config
from lpt.utils import log, set_threads, usable_cores

SHOW_DEMO = ["config", "--show", "demo"]


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("argv, level", [
    (SHOW_DEMO, logging.INFO),
    (["--quiet", *SHOW_DEMO], logging.WARNING),
    ([*SHOW_DEMO, "--quiet"], logging.WARNING),
    (["--quiet", *SHOW_DEMO[:1], "--quiet", *SHOW_DEMO[1:]], logging.WARNING),
])
def test_quiet_before_or_after_the_subcommand(argv, level, capsys):
    assert main(argv) == 0
    assert log.level == level


@pytest.mark.parametrize("argv", [["--threads", "1", *SHOW_DEMO], [*SHOW_DEMO, "--threads", "1"],
                                  ["--threads", "2", *SHOW_DEMO, "--threads", "1"]])
def test_threads_option_sets_torch_threads(argv, threads_restored, capsys):
    torch.set_num_threads(3)
    assert main(argv) == 0
    assert torch.get_num_threads() == 1


def test_threads_given_before_the_subcommand_is_kept_by_a_later_quiet(threads_restored, capsys):
    torch.set_num_threads(3)
    assert main(["--threads", "2", *SHOW_DEMO, "--quiet"]) == 0
    assert torch.get_num_threads() == 2 and log.level == logging.WARNING


def test_negative_threads_is_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit) as info:
        main([*SHOW_DEMO, "--threads", "-1"])
    assert info.value.code == 2
    assert "argument --threads: '-1' is not a whole number of threads" in capsys.readouterr().err


def test_threads_zero_means_the_usable_cores(threads_restored):
    import os

    assert usable_cores() == len(os.sched_getaffinity(0))
    assert set_threads(0) == usable_cores() == torch.get_num_threads()


def _dotted_keys(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _dotted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name


def test_config_show_prints_every_key_with_its_value_and_comment(capsys):
    assert main([*SHOW_DEMO, "phase1.epochs=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [line.split(":", 1)[0] for line in lines]
    assert shown == list(_dotted_keys(Config))
    by_key = dict(zip(shown, lines))
    assert by_key["data.img_size"].startswith("data.img_size: 28 ")
    assert by_key["data.img_size"].endswith("  # training and evaluation crop")
    assert by_key["phase1.epochs"].split("#")[0].strip() == "phase1.epochs: 3"  # overrides apply
    assert by_key["data.train_list"].split("#")[0].strip() == "data.train_list: ''"  # written as YAML
    assert by_key["phases"].split("#")[0].strip() == "phases: [phase1, phase2]"
    assert all("  # " in line for line in lines)  # every key says what it is for


def test_overrides_may_follow_options(capsys):
    assert main(["--quiet", *SHOW_DEMO, "phase1.epochs=3", "--threads", "1", "phase2.epochs=2"]) == 0
    shown = capsys.readouterr().out
    assert "phase1.epochs: 3 " in shown and "phase2.epochs: 2 " in shown
    for argv, stray in (([*SHOW_DEMO, "a.b=1", "--threads", "1", "--bogus"], "--bogus"),
                        (["compare", "run_a", "--out", "table", "a.b=1"], "a.b=1")):  # compare takes no overrides
        with pytest.raises(SystemExit):
            main(argv)
        assert capsys.readouterr().err.endswith(f"lpt: error: unrecognized arguments: {stray}\n")


def test_config_show_of_a_bad_override_is_a_one_line_error(capsys):
    assert main([*SHOW_DEMO, "data.img_sise=3"]) == 2
    assert capsys.readouterr().err.startswith("lpt config: error: unknown config key 'data.img_sise'")
