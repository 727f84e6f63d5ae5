"""The package shape stays as documented: imports run one way, with no cycles (lazy ones included).

jobs → pipeline jobs (tokenize, audit, ops) → building blocks (dataset, io, runtime, config, records)
→ codec. The codec imports neither Ray nor the pipeline.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("codec", "pipeline", "jobs")
# a layer may import only from layers after it in this order
LAYERS = [
    {"jobs"},
    {"pipeline.tokenize", "pipeline.audit", "pipeline.ops", "pipeline.training", "pipeline.export"},
    {"pipeline.dataset", "pipeline.io", "pipeline.runtime", "pipeline.config", "pipeline.records"},
    {"codec"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] != "pipeline" else ".".join(parts[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in list(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_between_modules():
    assert _cycles(_import_graph()) == []


def test_no_import_cycles_between_subpackages():
    groups: dict[str, set[str]] = collections.defaultdict(set)
    for module, targets in _import_graph().items():
        for target in targets:
            if _group(module) != _group(target):
                groups[_group(module)].add(_group(target))
    assert _cycles(groups) == []


def test_imports_run_one_way_through_the_layers():
    rank = {group: level for level, members in enumerate(LAYERS) for group in members}
    upward = []
    for module, targets in _import_graph().items():
        source = _group(module)
        for target in targets:
            if source in rank and _group(target) in rank and rank[_group(target)] < rank[source]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_codec_imports_neither_ray_nor_the_pipeline():
    offenders = []
    for name, path in _modules().items():
        if not name.startswith("codec"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] in ("ray", "pipeline", "jobs")]
    assert offenders == []


def test_every_module_opens_with_a_docstring():
    missing = [
        name for name, path in _modules().items() if ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert missing == []
