"""The import graph: no circles between modules or apps, and no app imports one in a higher layer.

Read from the source with `ast` (every `import`, including those inside functions and under
TYPE_CHECKING: a lazy import is still a dependency). Layers, lowest first:

    protocol ← agent, broker, fogdeck_client ← core, outbox ← audit, fleet, accounts
             ← models_registry, telemetry, webhooks ← deployments ← endpoints ← mqttbridge, frontend ← stack, config

An app may import apps of lower layers, and apps of its own layer as long as no circle forms.
What still breaks the rule is listed below, each with its reason; the test fails when one goes away
too (delete it from the list), so the lists only shrink.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LAYERS: list[set[str]] = [
    {"protocol"},
    {"agent", "broker", "fogdeck_client"},
    {"core", "outbox"},
    {"audit", "fleet", "accounts"},
    {"models_registry", "telemetry", "webhooks"},
    {"deployments"},
    {"endpoints"},
    {"mqttbridge", "frontend"},
    {"stack", "config"},
]
LAYER = {app: index for index, apps in enumerate(LAYERS) for app in apps}
NOT_APPS = {"tests", "bench"}  # they may import anything

# (importing app, imported app): why it is still there. Each is a module of the lower app that belongs
# lower down, or a read that belongs higher up; none may be added.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}
# same-layer edges that close a circle between two apps
KNOWN_SIDEWAYS: dict[tuple[str, str], str] = {}
# module circles (lazy imports included)
KNOWN_MODULE_CYCLES: dict[frozenset[str], str] = {}


def _packages() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name not in NOT_APPS)


def _modules() -> dict[str, Path]:
    found = {}
    for app in _packages():
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.append((target, node.lineno))
            names += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return names


def _module_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for name, _ in _imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            # importing a package's own parent runs its __init__ first anyway: not an edge of interest
            if name and name != module and not module.startswith(name + "."):
                graph[module].add(name)
    return graph


def _app_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    apps = set(_packages())
    for module, path in _modules().items():
        app = module.split(".")[0]
        for name, line in _imported_names(module, path):
            target = name.split(".")[0]
            if target in apps and target != app:
                edges[(app, target)].append(f"{path.relative_to(ROOT)}:{line}")
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    counter = 0
    for start in list(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_every_package_has_a_layer() -> None:
    assert set(_packages()) <= set(LAYER), f"place {set(_packages()) - set(LAYER)} in LAYERS"


def test_no_circles_between_modules() -> None:
    found = set(_cycles(_module_graph()))
    assert found == set(KNOWN_MODULE_CYCLES), {
        "new": [sorted(c) for c in found - set(KNOWN_MODULE_CYCLES)],
        "gone (delete from KNOWN_MODULE_CYCLES)": [sorted(c) for c in set(KNOWN_MODULE_CYCLES) - found],
    }


def test_no_app_imports_a_higher_layer() -> None:
    upward = {edge: where for edge, where in _app_edges().items() if LAYER[edge[1]] > LAYER[edge[0]]}
    new = {edge: where[:3] for edge, where in upward.items() if edge not in KNOWN_UPWARD}
    assert not new, f"imports from a lower layer to a higher one: {new}"
    gone = set(KNOWN_UPWARD) - set(upward)
    assert not gone, f"fixed: delete {gone} from KNOWN_UPWARD"


def test_no_circles_between_apps() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for app, target in _app_edges():
        if (app, target) not in KNOWN_UPWARD and (app, target) not in KNOWN_SIDEWAYS:
            graph[app].add(target)
    assert _cycles(graph) == []
    edges = _app_edges()
    for edge in KNOWN_SIDEWAYS:
        assert edge in edges, f"fixed: delete {edge} from KNOWN_SIDEWAYS"
        assert LAYER[edge[0]] == LAYER[edge[1]]


def test_the_checker_sees_a_lazy_circle(tmp_path: Path) -> None:
    # the rule above is only as good as the graph: a function-level import counts
    first = tmp_path / "first.py"
    first.write_text("def f():\n    from second import g\n")
    assert _imported_names("first", first) == [("second", 2), ("second.g", 2)]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
