"""The layout the docs describe is the tree: every module of lpt is in README's layout and in
docs/architecture.md, and no function of src/ is longer than 60 lines (argparse tables aside)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lpt"


def top_level_entries() -> set[str]:
    """Packages as ``name/``, modules as ``name.py``; ``__init__.py`` and caches aside."""
    return {p.name + "/" if p.is_dir() else p.name for p in SRC.iterdir()
            if not p.name.startswith(("__", ".")) and (p.is_dir() or p.suffix == ".py")}


def test_readme_layout_lists_every_module_and_package():
    section = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^  (\w+(?:/|\.py))", section, flags=re.M)) | set(re.findall(r"(\w+/):", section))
    assert listed == top_level_entries()


def test_architecture_names_every_package_and_module_of_the_layers():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"^lpt\.(\w+)", text, flags=re.M)) | set(re.findall(r"\| lpt\.(\w+)", text))
    modules = {e.rstrip("/").removesuffix(".py") for e in top_level_entries()} - {"presets", "weights"}
    assert named == modules
    for package in ("run", "engine", "methods", "model", "data", "analysis"):
        for module in (SRC / package).glob("*.py"):
            if module.name != "__init__.py":
                assert f"`{module.name}`" in text or f"`{module.stem}`" in text, f"{package}/{module.name}"


def test_no_function_in_src_is_longer_than_60_lines():
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60 and node.name != "build_parser":  # argparse tables
                    long.append(f"{path.relative_to(SRC)}:{node.name} ({length} lines)")
    assert long == []
