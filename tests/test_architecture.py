"""The package's shape: short functions, no hidden imports, the layer contract configured for every module.

`lint-imports` (run by the test command, see .ci/run) enforces the layers and the absence of import cycles;
these tests keep the rules that the linter cannot see.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlalign"
MAX_FUNCTION_LINES = 60
# Command-line modules import their commands inside the handlers, so `vlalign --help` starts fast.
CLI_MODULES = {"cli.py", "label_cli.py"}


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_every_function_fits_on_a_screen():
    too_long = []
    for path, node in _functions():
        first = min([decorator.lineno for decorator in node.decorator_list] + [node.lineno])
        lines = node.end_lineno - first + 1
        if lines > MAX_FUNCTION_LINES:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, too_long


def test_vlalign_modules_are_imported_at_the_top_except_by_the_command_line():
    hidden = []
    for path, node in _functions():
        if path.name in CLI_MODULES:
            continue
        for inner in ast.walk(node):
            module = inner.module if isinstance(inner, ast.ImportFrom) else None
            names = [alias.name for alias in inner.names] if isinstance(inner, ast.Import) else []
            if (module or "").startswith("vlalign") or any(name.startswith("vlalign") for name in names):
                hidden.append(f"{path.relative_to(PACKAGE.parent)}:{inner.lineno} in {node.name}")
    assert not hidden, hidden


def test_the_layer_contract_places_every_top_level_module():
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")
    placed = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    modules |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert placed == modules
    assert layers["exhaustive"] is True  # and lint-imports refuses a module added to none


def test_the_command_line_parser_does_not_import_torch():
    """`vlalign --help` and argument errors answer at once: building every parser (which lists the
    benchmarks, objectives and demo recipes) must not pull in torch or transformers."""
    import subprocess
    import sys

    code = ("import sys; from vlalign.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
