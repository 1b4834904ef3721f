"""The package's shape: imports run one way between sub-packages, no library module or benchmark
imports the command line, no private name crosses modules, the config schemas load without torch,
and prediction needs no Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.repository import ROOT

LAYERS = ("data", "evaluation", "training", "inference", "deploy", "cluster", "pseudo", "reports")
PACKAGE = ROOT / "common_blocks"
# Training's framework: prediction (inference, deploy) runs the plain network without it, and the
# offline bundle does not ship it.
TRAINING_FRAMEWORK = frozenset({"lightning", "pytorch_lightning", "lightning_utilities", "torchmetrics"})


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from common_blocks... import names`` / ``import common_blocks...``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("common_blocks"):
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("common_blocks")]
    return found


def _source(module: str) -> Path | None:
    """The file of a ``common_blocks`` module or package; None for a name that is neither (a class, a
    function imported from a module)."""
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _loaded_by(module: str) -> dict[str, str]:
    """Each outside package that importing ``module`` may load, with the ``common_blocks`` module that
    imports it: the imports anywhere in its file (a function's import runs when it is called) and in
    the files of the ``common_blocks`` modules and packages among them, transitively."""
    outside: dict[str, str] = {}
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _source(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo += [".".join(name.split(".")[:end]) for end in range(1, name.count(".") + 1)]  # its packages
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for imported in names:
                if imported.split(".")[0] == "common_blocks":
                    todo.append(imported)
                else:
                    outside.setdefault(imported.split(".")[0], name)
    return outside


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _is_cli(module: str) -> bool:
    return module == "common_blocks.cli" or module.startswith("common_blocks.cli.")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way_and_no_private_name_crosses_modules(path):
    """A sub-package imports only those before it in LAYERS; the top-level modules import none but
    the command line, which sits above everything; nothing imports another module's private names."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    own = _layer("common_blocks." + ".".join(parts))
    in_cli = parts[0] == "cli"
    for module, names in _imports(path):
        assert not [name for name in names if name.startswith("_")], f"{module} private names {names}"
        assert in_cli or not _is_cli(module), f"library module imports the command line ({module})"
        target = _layer(module)
        if in_cli or target is None:
            continue
        assert own is not None, f"top-level module imports {module}"
        assert LAYERS.index(target) <= LAYERS.index(own), f"{own} imports {module}"


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_use_the_library_not_the_command_line(path):
    """Benchmarks parse their own arguments with ``common_blocks.arguments`` and write JSON with
    ``common_blocks.strict_json``; the command line is not a library."""
    assert not [module for module, _ in _imports(path) if _is_cli(module)]


def _schema_modules() -> list[str]:
    """Every library module that declares a pydantic model (a subclass of ``BaseModel`` or of the
    config ``Section``): the config schemas and their sections."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        classes = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)]
        bases = {getattr(base, "id", getattr(base, "attr", None)) for node in classes for base in node.bases}
        if bases & {"BaseModel", "Section"}:
            found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


@pytest.mark.subprocess
def test_config_schemas_import_no_torch():
    """A config loads, and a bad name in it is an error, before torch (seconds) is imported: the
    schemas and every module they reach stay free of it. Each is imported in turn in a fresh process,
    which names the first one that brings torch in."""
    schemas = _schema_modules()
    assert {"common_blocks.training.config", "common_blocks.inference.ensemble_config"} <= set(schemas)
    code = (
        "import importlib, sys\n"
        f"for name in {schemas!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        sys.exit(f'{name} imports torch')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "path",
    sorted([*(PACKAGE / "inference").rglob("*.py"), *(PACKAGE / "deploy").rglob("*.py")]),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_inference_and_deploy_do_not_import_lightning(path):
    """Prediction, the export and the bundle run the plain network (``training.network``): no module
    of theirs loads Lightning or torchmetrics, through any ``common_blocks`` module it imports."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    found = {name: by for name, by in _loaded_by(module).items() if name in TRAINING_FRAMEWORK}
    assert not found, ", ".join(f"{by} imports {name}" for name, by in found.items())
