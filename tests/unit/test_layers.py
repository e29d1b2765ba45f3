"""The package's import graph: no circles, every import pointing down the layers.

Every module under ``platform/emoray`` is parsed with :mod:`ast`; every ``import`` and
``from ... import`` of an emoray module counts, at module level or inside a function (a
lazy import still ties the two modules). A lazy import is allowed to exist only where it
keeps a heavy stack (torch, Ray) out of a light command, and it must still point down.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "emoray"

#: bottom to top; a module belongs to the first layer one of whose prefixes it starts with
#: (longest prefix wins); it may import its own layer and the layers below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("emoray", "emoray.errors", "emoray.labels", "emoray.types", "emoray.storage",
                "emoray.console", "emoray.tracking")),
    ("io", ("emoray.io",)),
    ("datasets", ("emoray.datasets",)),
    ("synth", ("emoray.synth",)),
    ("data core", ("emoray.config.contract", "emoray.data.transforms", "emoray.data.segment",
                   "emoray.data.shards", "emoray.data.features")),
    ("config", ("emoray.config",)),
    ("runtime", ("emoray.runtime",)),
    ("data jobs", ("emoray.data",)),
    ("models", ("emoray.models",)),
    ("bundle", ("emoray.bundle",)),
    ("predict", ("emoray.predict",)),
    ("train", ("emoray.train",)),
    ("tune", ("emoray.tune",)),
    ("cluster", ("emoray.cluster",)),
    ("serving", ("emoray.serving",)),
    ("cli", ("emoray.cli", "emoray.__main__")),
]
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[tuple[str, int]]]:
    """module -> {(imported emoray module, line)}, function-level imports included."""
    modules = _modules()
    graph: dict[str, set[tuple[str, int]]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from pkg import mod` imports the submodule pkg.mod
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for t in targets:
                if t == "emoray" or t.startswith("emoray."):
                    resolved = _resolve(t, modules)
                    if resolved and resolved != name:
                        graph[name].add((resolved, node.lineno))
    return graph


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            inside = module == p or (p != "emoray" and module.startswith(p + "."))
            if inside and len(p) > best:
                best, rank = len(p), i
    assert rank >= 0, f"{module} belongs to no layer: add it to LAYERS"
    return rank


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_import_points_down():
    upward = []
    for module, imports in import_graph().items():
        for target, line in sorted(imports):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module}:{line} imports {target} "
                              f"({LAYERS[layer_of(module)][0]} -> {LAYERS[layer_of(target)][0]})")
    assert not upward, "imports running up the layers:\n" + "\n".join(upward)


def test_no_import_circles():
    graph = {m: {t for t, _ in imports} for m, imports in import_graph().items()}
    circles = _cycles(graph)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_no_module_over_the_size_limit():
    files = {**{name: path for name, path in _modules().items()},
             **{f"benchmarks/{p.name}": p for p in (PACKAGE.parents[1] / "benchmarks").glob("*.py")}}
    long = {name: n for name, path in files.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_layer_check_sees_function_level_imports(tmp_path):
    """The graph counts an import inside a function, so a lazy upward import fails."""
    graph = import_graph()
    lazy = [(m, t) for m, imports in graph.items() for t, _ in imports]
    assert lazy, "the graph found no imports at all"
    tree = ast.parse("def f():\n    from emoray.cli import main\n")
    found = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found and found[0].module == "emoray.cli"
