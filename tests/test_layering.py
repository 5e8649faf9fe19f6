"""The package layering, read from the source with `ast` (nothing is imported):

- `jaxdiff.metrics` is plain functions on arrays: no module imports `jaxdiff.models`, `jaxdiff.evaluators` or
  flax (feature networks live in `jaxdiff.evaluators`);
- no Flax module is defined in `jaxdiff.tasks` (models live in `jaxdiff.models`);
- no task imports a command-line module (`jaxdiff.cli`, `jaxdiff.train`, `sample`, `evaluate`, `predict`,
  `summary`);
- `jaxdiff.training` imports no task (the command-line layer hands the trainer what it runs).
"""
from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxdiff"
CLI_MODULES = ("jaxdiff.cli", "jaxdiff.train", "jaxdiff.sample", "jaxdiff.evaluate", "jaxdiff.predict",
               "jaxdiff.summary")


def _modules(package: str) -> list[pathlib.Path]:
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files, f"no modules under jaxdiff/{package}"
    return files


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: pathlib.Path, root: pathlib.Path = PACKAGE.parent) -> set[str]:
    """Every module name `path` imports, anywhere in the file (inside functions too), as dotted names: for
    `from a.b import c` both "a.b" and "a.b.c" (c may be a module); relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _hits(names: set[str], forbidden) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def _offences(package: str, forbidden) -> dict:
    out = {}
    for path in _modules(package):
        hits = _hits(imported_names(path), forbidden)
        if hits:
            out[str(path.relative_to(PACKAGE.parent))] = hits
    return out


def test_metrics_import_no_model_and_no_flax():
    assert _offences("metrics", ("jaxdiff.models", "jaxdiff.evaluators", "flax")) == {}


def _defines_flax_module(path: pathlib.Path) -> list[str]:
    """Classes in `path` with a base spelt `nn.Module`, `linen.Module`, `flax.linen.Module` or `Module`."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                spelt = ast.unparse(base)
                if spelt == "Module" or spelt.endswith(("nn.Module", "linen.Module")):
                    found.append(node.name)
    return found


def test_no_flax_module_defined_in_tasks():
    assert {str(p.relative_to(PACKAGE.parent)): c for p in _modules("tasks") if (c := _defines_flax_module(p))} == {}


def test_tasks_import_no_command_line_module():
    assert _offences("tasks", CLI_MODULES) == {}


def test_training_imports_no_task():
    assert _offences("training", ("jaxdiff.tasks",)) == {}


def test_the_checks_see_what_they_look_for(tmp_path):
    """The readers find imports inside functions, `from` and relative imports, and nn.Module subclasses."""
    pkg = tmp_path / "jaxdiff" / "metrics"
    pkg.mkdir(parents=True)
    bad = pkg / "bad.py"
    bad.write_text("import numpy as np\n\ndef f():\n    from flax import linen as nn\n    from ..models import unet\n"
                   "    import jaxdiff.summary\n\nclass M(nn.Module):\n    pass\n")
    names = imported_names(bad, tmp_path)
    assert _hits(names, ("flax",)) == ["flax", "flax.linen"]
    assert _hits(names, ("jaxdiff.models",)) == ["jaxdiff.models", "jaxdiff.models.unet"]
    assert _hits(names, CLI_MODULES) == ["jaxdiff.summary"]
    assert _hits({"jaxdiff.summaryx", "jaxdiff.training"}, CLI_MODULES + ("jaxdiff.train",)) == []
    assert _defines_flax_module(bad) == ["M"]
