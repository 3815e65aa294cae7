"""Every ``lpt train`` (and ``lpt eval --zero-shot``) command in docs/reproduce.md resolves to a config the
command would accept.

Each command is read from the page's fenced code blocks (line continuations joined, shell variables
set in those blocks expanded as bash would), parsed by the CLI's own parser, and resolved as
``lpt train`` resolves it before training: the preset and overrides, the method's rules, and the
backbone's shape (built on the meta device, so nothing is downloaded). Data paths are replaced by
files in a temporary folder. A row whose command has an unknown key, a bad value or an unknown preset
fails here instead of hours into a GPU run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lpt.cli import build_parser
from lpt.config import ConfigError, load_config
from lpt.methods import check_config
from lpt.methods.zeroshot import zero_shot_config
from lpt.model.build import check_fits

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproduce.md"
DATA_PATH_KEYS = ("data.root", "data.train_list", "data.test_list", "data.val_list", "data.class_index")
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S)


def expand(word: str, env: dict[str, str]) -> list[str]:
    """Bash's expansion of one unquoted shell word: ``$NAME`` alone splits into the value's words."""
    whole = re.fullmatch(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", word)
    if whole:
        return env[whole.group(1)].split()
    return [re.sub(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", lambda m: env[m.group(1)], word)]


def train_commands(text: str, subcommand: str = "train") -> list[list[str]]:
    """The argument lists (after ``train``) of every ``lpt train`` / ``-m lpt.cli train`` command (or of another
    subcommand)."""
    env: dict[str, str] = {}
    commands = []
    for block in fenced_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            for statement in line.split(";"):
                words = shlex.split(statement, comments=True)
                if len(words) == 1 and ASSIGNMENT.match(words[0]):
                    name, value = ASSIGNMENT.match(words[0]).groups()
                    env[name] = expand(value, env)[0]
                    continue
                for i, word in enumerate(words[:-1]):
                    if word in ("lpt", "lpt.cli") and words[i + 1] == subcommand:
                        commands.append([w for word in words[i + 2:] for w in expand(word, env)])
    return commands


def resolve(argv: list[str], stand_in: Path, subcommand: str = "train"):
    """The config ``lpt train`` (or ``lpt eval --zero-shot``) would run for ``argv``, data paths replaced by
    ``stand_in``."""
    args = build_parser().parse_args([subcommand, *argv])
    overrides = [f"{o.split('=', 1)[0]}={stand_in}" if o.split("=", 1)[0] in DATA_PATH_KEYS else o
                 for o in args.overrides]
    if subcommand == "eval":
        assert args.zero_shot, "the page evaluates runs with lpt eval --run only where it says so"
        cfg = zero_shot_config(args.config, overrides)
    else:
        cfg = load_config(args.config, overrides + (["deterministic=true"] if args.deterministic else []))
    check_config(cfg)
    check_fits(cfg.model, cfg.data.img_size)
    return cfg


COMMANDS = train_commands(DOC.read_text())
ZERO_SHOT = [argv for argv in train_commands(DOC.read_text(), "eval") if "--zero-shot" in argv]


@pytest.fixture
def stand_in(tmp_path) -> Path:
    path = tmp_path / "split.txt"
    path.write_text("img.png 0\n")
    return path


def test_the_page_has_a_command_for_every_paper_preset():
    used = {build_parser().parse_args(["train", *argv]).config for argv in COMMANDS}
    assert {"places_lt", "imagenet_lt", "inat2018", "cifar100_lt", "linear_places_lt", "vpt_deep_places_lt",
            "full_places_lt"} <= used
    assert len(COMMANDS) >= 30  # every table's rows, not a page the extraction misread


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv[:4]))
def test_every_command_resolves(argv, stand_in):
    cfg = resolve(argv, stand_in)
    assert cfg.data.root == str(stand_in)  # the data paths came from the page's variables, all set


@pytest.mark.parametrize("argv", ZERO_SHOT, ids=lambda argv: " ".join(argv[:4]))
def test_every_zero_shot_command_resolves(argv, stand_in):
    assert resolve(argv, stand_in, "eval").method == "zeroshot"


def test_the_page_evaluates_clip_zero_shot():
    assert ZERO_SHOT


@pytest.mark.parametrize("broken", [
    "lpt train --config places_lt --out runs/x $PLACES model.pool_sise=40",  # unknown key
    "lpt train --config places_lt --out runs/x $PLACES phase1.schedule=per_epoch",  # bad value
    "lpt train --config places_lt --out runs/x $PLACES model.split_block=12",  # K beyond ViT-B's 12 blocks
    "lpt train --config places_lt --out runs/x $PLACES method=vpt",  # vpt has one stage
    "lpt train --config place_lt --out runs/x $PLACES",  # unknown preset
])
def test_a_broken_command_fails(broken, stand_in):
    page = f'```bash\nPLACES="data.root=/d data.train_list=/d/t.txt"\n{broken}\n```\n'
    (argv,) = train_commands(page)
    with pytest.raises(ConfigError):
        resolve(argv, stand_in)
