"""Imports go one way: every ``import`` in the package (module level, in functions, under TYPE_CHECKING) read
with :mod:`ast`, checked against the layer table below, and the subpackages' import graph checked for cycles.

The order is the pipeline's: cli -> handoff -> verify -> export -> rewrite -> symbolic -> layers, and
load -> families -> layers; runtimes (ONNX Runtime / OpenVINO deployment settings) serve verify, handoff and
cli and import nothing of the toolkit but errors/_util; everything may import errors, _util and the
package's ``__version__``. A failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "modconv_export"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
#: The package's own module (``modconv_export/__init__.py``: the lazy public names) and ``__main__``.
FACADE = "<root>"
#: What every unit may import.
FOUNDATION = {"errors", "_util"}
#: Unit -> the units it may import besides :data:`FOUNDATION` (each chain written out, not derived, so the
#: table reads as the rule it is).
ALLOWED: dict[str, set[str]] = {
    FACADE: {"cli", "handoff", "verify", "export", "rewrite", "symbolic", "layers", "load", "families", "runtimes"},
    "__main__": {"cli"},
    "cli": {"handoff", "verify", "export", "rewrite", "symbolic", "layers", "load", "families", "runtimes"},
    "handoff": {"verify", "export", "rewrite", "symbolic", "layers", "runtimes"},
    "verify": {"export", "rewrite", "symbolic", "layers", "runtimes"},
    "export": {"rewrite", "symbolic", "layers"},
    "rewrite": {"symbolic", "layers"},
    "symbolic": {"layers"},
    "layers": set(),
    "load": {"families", "layers"},
    "families": {"layers"},
    "runtimes": set(),
    "_util": {"errors"},
    "errors": set(),
}
#: Names every unit may take from the package's own module (they are set there, not imported lazily).
ROOT_NAMES = {"__version__"}


@dataclass(frozen=True)
class Import:
    """One import of a toolkit module: where it is and which unit it reaches."""

    path: str  # relative to the package's parent folder
    line: int
    text: str
    source: str  # the importing unit
    target: str  # the imported unit

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text} ({self.source} -> {self.target})"


def _module_name(path: Path, root: Path) -> tuple[str, str]:
    """``(module, package)`` of a file: ``modconv_export.verify.plan`` in ``modconv_export.verify``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def unit_of(module: str) -> str:
    """The top-level unit of a module name: ``modconv_export.verify.plan`` -> ``verify``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACADE


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.AST, package: str, root: Path) -> Iterator[tuple[str, str]]:
    """``(imported module, as written)`` for each toolkit module ``node`` imports."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, f"import {alias.name}"
    elif isinstance(node, ast.ImportFrom):
        module = _absolute(node, package)
        written = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
        if module != PACKAGE:
            yield module, written
            return
        for alias in node.names:  # from the package itself: a unit (``from .. import runtimes``) or a name of the facade
            is_unit = (root / alias.name).is_dir() or (root / f"{alias.name}.py").is_file()
            if is_unit:
                yield f"{PACKAGE}.{alias.name}", written
            elif alias.name not in ROOT_NAMES:
                yield PACKAGE, written


def imports_in(path: Path, root: Path = ROOT) -> list[Import]:
    """Every import of another unit of the toolkit in ``path``, at any depth of its syntax tree."""
    module, package = _module_name(path, root)
    shown = str(path.relative_to(root.parent))
    source = unit_of(module)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        for target, text in _targets(node, package, root):
            if target.split(".")[0] == PACKAGE and unit_of(target) != source:
                found.append(Import(shown, node.lineno, text, source, unit_of(target)))
    return found


def package_imports(root: Path = ROOT) -> list[Import]:
    return [i for path in sorted(root.rglob("*.py")) for i in imports_in(path, root)]


def wrong_direction(imports: list[Import]) -> list[str]:
    """One line per import the layer table does not allow (an unknown unit allows nothing)."""
    return [
        f"{i}: {i.source} may import {', '.join(sorted(ALLOWED.get(i.source, set()) | FOUNDATION)) or 'nothing'}"
        for i in imports
        if i.target not in FOUNDATION | ALLOWED.get(i.source, set())
    ]


def cycles(imports: list[Import]) -> list[str]:
    """Each cycle of the units' import graph once, as ``a -> b -> a`` with the imports that close it."""
    edges: dict[str, dict[str, Import]] = {}
    for i in imports:
        edges.setdefault(i.source, {}).setdefault(i.target, i)
    found, seen = [], set()

    def walk(unit: str, trail: list[str]) -> None:
        for nxt in sorted(edges.get(unit, {})):
            if nxt in trail:
                loop = trail[trail.index(nxt) :] + [nxt]
                key = frozenset(loop)
                if key not in seen:
                    seen.add(key)
                    links = "; ".join(str(edges[a][b]) for a, b in zip(loop, loop[1:]))
                    found.append(f"{' -> '.join(loop)} ({links})")
            elif len(trail) < len(edges) + 1:
                walk(nxt, [*trail, nxt])

    for start in sorted(edges):
        walk(start, [start])
    return found


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return package_imports()


def test_every_unit_is_in_the_layer_table(imports):
    units = {unit_of(_module_name(p, ROOT)[0]) for p in ROOT.rglob("*.py")}
    assert units - set(ALLOWED) == set(), "add the new unit to ALLOWED in tests/test_layering.py"
    assert {"cli", "verify", "export", "runtimes"} <= {i.source for i in imports}  # the reader sees real imports


def test_imports_go_one_way(imports):
    assert wrong_direction(imports) == []


def test_no_cycle_between_subpackages(imports):
    assert cycles(imports) == []


def test_export_never_imports_verify(imports):
    assert [str(i) for i in imports if i.source == "export" and i.target == "verify"] == []


# -- the checker itself, on hand-written packages -------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_function_level_import_upwards_is_named(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "__version__ = '0'\n",
            "export/__init__.py": "from .. import __version__\n",
            "export/metadata.py": "def f():\n    from ..verify.report import ParityReport\n    return ParityReport\n",
            "verify/__init__.py": "",
            "verify/report.py": "from ..export import metadata\n",
        },
    )
    found = package_imports(root)
    problems = wrong_direction(found)
    assert problems == [
        f"{PACKAGE}/export/metadata.py:2: from ..verify.report import ParityReport (export -> verify): "
        "export may import _util, errors, layers, rewrite, symbolic"
    ]
    assert cycles(found) == [
        f"export -> verify -> export ({PACKAGE}/export/metadata.py:2: from ..verify.report import ParityReport (export -> verify); "
        f"{PACKAGE}/verify/report.py:1: from ..export import metadata (verify -> export))"
    ]


def test_runtimes_importing_a_stage_and_a_facade_name_are_named(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "runtimes/__init__.py": "if True:\n    import modconv_export.verify.plan\n",
            "errors.py": "",
            "runtimes/ort.py": "from .. import check_parity, errors\n",
            "verify/__init__.py": "",
            "verify/plan.py": "",
        },
    )
    problems = wrong_direction(package_imports(root))
    assert [p.split(": ")[1] for p in problems] == [
        "import modconv_export.verify.plan (runtimes -> verify)",
        "from .. import check_parity, errors (runtimes -> <root>)",
    ]
