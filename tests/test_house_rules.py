"""The house rules of ``src/latts``, kept by a test rather than by review (``docs/architecture.md``, "House
style"): no module over 400 lines, no function over 80, and every import pointing down the layers below
(type-only and function-local imports included), so the next change that breaks one is caught by CI."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# The layers, top first: a module may import its own layer and the layers below it, never one above. The
# engine's rooms are layers of their own: the decode loop over speculation over loading over the models.
LAYERS: list[tuple[str, ...]] = [
    ("latts.cli",),
    ("latts.serve",),
    ("latts.planning",),  # the offline `latts optimize` workflow
    ("latts.eval",),
    ("latts.tts", "latts.progress"),
    ("latts.latency", "latts.backends"),
    ("latts.engine.engine", "latts.engine.budget", "latts.engine.pruning", "latts.engine"),  # the decode loop
    ("latts.engine.speculation",),
    ("latts.engine.loading",),
    ("latts.engine.models",),
    ("latts.request",),
    ("latts.tasks", "latts.types"),
    ("latts.config", "latts.provenance"),
    ("latts.errors", "latts.paths", "latts.data", "latts"),
]


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix naming ``module`` (0 is the top)."""
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = i, name.count(".")
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for path in sorted((src / "latts").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every ``latts`` import in the file, wherever it stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "latts"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "latts":
                found.append((node.lineno, base))
    return found


def upward_imports(src: Path = SRC) -> list[str]:
    """Each import that runs up a layer, as ``file:line: a -> b``."""
    bad = []
    for module, path in modules(src).items():
        here = layer_of(module)
        for line, target in imports(module, path):
            if layer_of(target) < here:
                bad.append(f"{path.relative_to(src)}:{line}: {module} (layer {here}) imports {target} "
                           f"(layer {layer_of(target)})")
    return bad


def long_modules(src: Path = SRC) -> list[str]:
    """Modules over MAX_MODULE_LINES lines."""
    return [f"{p.relative_to(src)}: {n} lines" for p in modules(src).values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]


def long_functions(src: Path = SRC) -> list[str]:
    """Functions (methods and nested ones included) over MAX_FUNCTION_LINES lines."""
    bad = []
    for path in modules(src).values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    bad.append(f"{path.relative_to(src)}:{node.lineno}: {node.name} is {n} lines")
    return bad


def test_every_module_is_in_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_no_import_runs_up_a_layer() -> None:
    assert upward_imports() == []


def test_no_module_over_400_lines() -> None:
    assert long_modules() == []


def test_no_function_over_80_lines() -> None:
    assert long_functions() == []


def test_the_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """A copy of the package with a 401-line module and an upward import fails both rules."""
    import shutil

    shutil.copytree(SRC / "latts", tmp_path / "latts")
    (tmp_path / "latts" / "config.py").write_text(
        (SRC / "latts" / "config.py").read_text() + "\nfrom latts.engine.engine import Engine  # noqa\n")
    (tmp_path / "latts" / "tasks" / "long.py").write_text("x = 1\n" * 401)
    assert any("latts.config (layer" in b and "imports latts.engine.engine" in b for b in upward_imports(tmp_path))
    assert long_modules(tmp_path) == ["latts/tasks/long.py: 401 lines"]
