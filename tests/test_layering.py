"""The rooms of ``src/lungtumor`` import only rooms above them, in ARCHITECTURE.md's order.

ARCHITECTURE.md holds the order as a table under the heading "Layers"; this test reads that table
(the document is the truth, so a redrawn house is checked against its own drawing) and parses every
import of every module with ``ast``: imports inside functions count too, because a lazy import is
still an arrow. A module's room is its sub-package (``io``, ``lesions``...) or, at the top level,
the module itself (``cv``, ``predict``...). Rooms on one row stand side by side: neither imports the
other. No two files import each other, directly or round a circle (`test_no_import_circle_between_files`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lungtumor"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"


def read_layers(text: str) -> list[list[str]]:
    """The rows of the "Layers" table: one list of room names per row, top (imported by all) first."""
    match = re.search(r"^## Layers\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if match is None:
        raise AssertionError("ARCHITECTURE.md has no '## Layers' section")
    layers = []
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].isdigit():
            continue
        layers.append([name.strip(" `/") for name in cells[1].split(",") if name.strip()])
    if not layers:
        raise AssertionError("the '## Layers' section of ARCHITECTURE.md has no numbered rows")
    return layers


def room_of(module: str) -> str:
    """``lungtumor.io.dicom`` -> ``io``; ``lungtumor.cv`` -> ``cv``; ``lungtumor`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every ``lungtumor`` module a source imports (absolute or relative), with its line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "lungtumor"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "lungtumor":
                continue
            if target == "lungtumor":  # `from lungtumor import io` names sub-packages; `__version__` the root
                found += [(f"lungtumor.{a.name}" if (PACKAGE / a.name).exists() or (PACKAGE / f"{a.name}.py").exists() else "lungtumor", node.lineno) for a in node.names]
            else:
                found.append((target, node.lineno))
    return found


def violations(layers: list[list[str]], sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Arrows against the order: ``{module: (source, is_package)}`` -> one line per bad import."""
    level = {room: i for i, row in enumerate(layers) for room in row}
    bad = []
    for module, (source, is_package) in sorted(sources.items()):
        room = room_of(module)
        if room not in level:
            bad.append(f"{module}: room {room!r} is not in ARCHITECTURE.md's Layers table")
            continue
        for target, line in imported_modules(source, module, is_package):
            other = room_of(target)
            if other == room:
                continue
            if other not in level:
                bad.append(f"{module}:{line} imports {target}, whose room {other!r} is not in the Layers table")
            elif level[other] >= level[room]:
                where = "beside" if level[other] == level[room] else "below"
                bad.append(f"{module}:{line} imports {target}: room {other!r} stands {where} {room!r}")
    return bad


def package_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(encoding="utf-8"), p.name == "__init__.py") for p in PACKAGE.rglob("*.py")}


def test_every_import_follows_the_layers():
    bad = violations(read_layers(ARCHITECTURE.read_text(encoding="utf-8")), package_sources())
    assert not bad, "imports against ARCHITECTURE.md's Layers:\n" + "\n".join(bad)


def import_circles(sources: dict[str, tuple[str, bool]]) -> list[list[str]]:
    """Circles between files: strongly connected groups of more than one module (or a module that
    imports itself) in the graph of every import, lazy ones too, resolved to the package's modules."""
    known = set(sources)
    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        targets = set()
        for target, _ in imported_modules(source, module, is_package):
            while target and target not in known:  # `from lungtumor.io.volume import Volume` -> lungtumor.io.volume
                target = target.rpartition(".")[0]
            if target and target != "lungtumor" and not (is_package and target == module):
                targets.add(target)
        graph[module] = targets
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle_between_files():
    circles = import_circles(package_sources())
    assert not circles, f"import circles between files: {circles}"


def test_the_circle_finder_finds_a_circle():
    sources = {
        "lungtumor.a": ("from lungtumor.b import x", False),
        "lungtumor.b": ("def f():\n    import lungtumor.c", False),
        "lungtumor.c": ("from lungtumor.a import y", False),
        "lungtumor.d": ("from lungtumor.a import y", False),
    }
    assert import_circles(sources) == [["lungtumor.a", "lungtumor.b", "lungtumor.c"]]
    del sources["lungtumor.c"]
    assert import_circles(sources) == []


def test_every_module_has_a_row_in_the_module_table():
    """A new module gets a line in ARCHITECTURE.md's table (its own, or its whole room's as `room/`)."""
    named = set(re.findall(r"^\| `([\w/.]+)` \|", ARCHITECTURE.read_text(encoding="utf-8"), flags=re.M))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        room = rel.split("/")[0] + "/"
        if path.name != "__init__.py" and rel not in named and room not in named:
            missing.append(rel)
    assert not missing, f"modules without a row in ARCHITECTURE.md's module table: {missing}"


# The checker itself, on hand-made houses: it must be able to fail.
LAYERS = [["errors", "config"], ["io"], ["training", "inference"], ["reporting"], ["cli"]]


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("lungtumor.io.nifti", "from lungtumor.errors import InputError", None),
        ("lungtumor.inference.x", "def f():\n    from lungtumor.reporting.html import y", "stands below"),
        ("lungtumor.inference.x", "import lungtumor.training.module", "stands beside"),
        ("lungtumor.io.x", "from ..reporting import html", "stands below"),
        ("lungtumor.io.x", "from . import nifti", None),
        ("lungtumor.cli", "from lungtumor import reporting", None),
        ("lungtumor.io.x", "from lungtumor.nowhere import y", "not in the Layers table"),
        ("lungtumor.extra", "x = 1", "not in ARCHITECTURE.md"),
    ],
)
def test_the_checker_catches_arrows_against_the_flow(module, source, expected):
    bad = violations(LAYERS, {module: (source, False)})
    if expected is None:
        assert bad == []
    else:
        assert len(bad) == 1 and expected in bad[0]


def test_the_layers_table_is_read_from_markdown():
    text = "# A\n\n## Layers\n\n| row | rooms |\n| --- | --- |\n| 1 | `errors`, `config` |\n| 2 | `io/` |\n\n## Next\n| 3 | x |\n"
    assert read_layers(text) == [["errors", "config"], ["io"]]
