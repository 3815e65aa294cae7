"""The card of a pretrained backbone: what it was trained on, how, where, for how long, how well,
and how to load it; written as card.json and as card.md, atomically."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import timm
import torch

from lpt.utils import atomic_write_json, atomic_write_text


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware(device: torch.device) -> dict[str, Any]:
    """Device, CPU model and cores, GPU name, and the library versions."""
    from lpt.version import __version__

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"device": str(device), "gpu": gpu, "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
            "torch": torch.__version__, "timm": timm.__version__, "lpt": __version__}


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list, tuple)):
        return "`" + json.dumps(v, ensure_ascii=False) + "`"
    return str(v)


def _table(section: dict[str, Any]) -> list[str]:
    return ["| | |", "|---|---|"] + [f"| {k} | {_value(v)} |" for k, v in section.items()]


def card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown: a headline, how to load, then one table per section."""
    metric = card["final_metric"]
    lines = [
        f"# {card['title']}", "",
        f"Final {metric['name']}: **{metric['value']:.4f}** ({metric['on']}).", "",
        f"Wall time {card['wall_time_s']:.0f} s on {card['hardware']['gpu'] or card['hardware']['cpu']}.", "",
        "## Load", "", "```python", card["load"]["python"], "```", "", "In an lpt config:", "",
        "```", card["load"]["config"], "```", "", "## Command", "", "```bash", card["command"], "```",
    ]
    for key in ("weights", "data", "training", "hardware"):
        section = {k: v for k, v in card[key].items() if k != "codepoints"}  # the characters say it shorter
        lines += ["", f"## {key.capitalize()}", "", *_table(section)]
    return "\n".join(lines) + "\n"


def write_card(out: Path, card: dict[str, Any]) -> None:
    """card.json and card.md in ``out``."""
    atomic_write_json(Path(out) / "card.json", card)
    atomic_write_text(Path(out) / "card.md", card_markdown(card))
