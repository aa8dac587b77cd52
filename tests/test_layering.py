"""The layering of ``autotune/`` (docs: ARCHITECTURE.md, "Layering"), read from the source with
``ast``: every import counts, at the top of a module or inside a function, so an import placed
in a function cannot hide a cycle.

Units are the subpackages and top-level modules of ``autotune`` (``autotune.train``,
``autotune.memory``, ``autotune.knobs``, ``autotune.search``, ``autotune.cli``,
``autotune.recipe``, ...); the package's own ``__init__`` (the lazy public facade) is left out
of the unit graph, since it re-exports from everything by design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autotune"

HEAVY_OPTIONAL = ("deepspeed", "transformers", "tokenizers", "pandas", "ray", "optuna",
                  "plotly", "mlflow")
"""Imported lazily (inside a function) on purpose: slow or optional dependencies (plotly: only
``autotune.search.reporting`` draws with it, when a report is written; mlflow: an optional
extra, only with ``--logger mlflow``)."""

ALLOWED_LAZY = {
    ("autotune.search.tracking", "torch.utils.tensorboard"):
        "needs the tensorboard package (an optional extra), only with --logger tensorboard",
    ("autotune.memory._measured", "torch.distributed._tools.mem_tracker"):
        "torch internal, 0.8 s to import (DTensor, runtime estimator)",
    ("autotune.train.parallel", "torch.distributed.fsdp"): "0.4 s to import, FSDP recipes only",
    ("autotune.train.parallel", "torch.distributed.tensor"): "0.4 s to import, FSDP only",
    ("autotune.train.pipeline", "torch.distributed.pipelining"):
        "1.2 s to import (torch.export), pipeline recipes only",
    ("autotune", "autotune.train"): "the facade: `import autotune` must not import torch",
    ("autotune", "autotune.apply"): "the facade: `import autotune` must not import torch",
    ("autotune", "autotune.tasks"): "the facade: `import autotune` must not import torch",
    ("autotune", "autotune.search"): "the facade: `import autotune` must not import torch",
    ("autotune.integrations", "autotune.integrations.hf_trainer"):
        "imports transformers' Trainer (about 3 s), only when a --trainer task is built",
    ("autotune.search.api", "autotune.search._run"):
        "the Ray Tune side of a search: imports Ray Tune and Optuna, only when a search runs",
}
"""Every function-local import outside ``HEAVY_OPTIONAL``, with why; a new one fails."""

LAZY_COUNT_EXCLUDED: tuple[str, ...] = ()
"""Units whose function-local imports are not counted (none)."""

NOT_BELOW = ("ray", "optuna", "autotune.search", "autotune.cli", "autotune.export")
"""What ``train``, ``memory`` and ``knobs`` must not import (ARCHITECTURE.md, Layering)."""


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module (``autotune.train.loop``)."""
    target: str
    """The imported module (``autotune.memory`` for ``from autotune.memory import x``;
    ``autotune.objective`` for ``from autotune import objective``)."""
    local: bool
    """Inside a function (or class body of one): a lazy import."""
    line: int

    def where(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}" + (
            " (in a function)" if self.local else "")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: Path, dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    base = root / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, module: str, root: Path, is_package: bool = False) -> list[Import]:
    """Every import statement of one module, resolved to module names (relative ones too)."""
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, local, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve_from(child, module, is_package)
                targets = {f"{base}.{a.name}" if base.startswith("autotune")
                           and _is_module(root, f"{base}.{a.name}") else base
                           for a in child.names}
                found.extend(Import(module, t, local, child.lineno) for t in sorted(targets))
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    keep = len(parts) - node.level + (1 if is_package else 0)
    return ".".join([*parts[:keep], *([node.module] if node.module else [])])


def all_imports(root: Path = PACKAGE) -> list[Import]:
    out: list[Import] = []
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        out.extend(imports_of(path.read_text(), name, root, path.name == "__init__.py"))
    return out


def unit(name: str) -> str:
    """``autotune.train.loop`` -> ``autotune.train``; ``ray.tune`` -> ``ray``."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "autotune" else parts[0]


def unit_graph(imports: Iterable[Import]) -> dict[str, dict[str, list[Import]]]:
    """Unit -> imported autotune unit -> the imports that make the edge (the facade
    ``autotune/__init__`` and imports within a unit left out)."""
    graph: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        src, dst = unit(imp.module), unit(imp.target)
        if src == "autotune" or dst == "autotune" or src == dst:
            continue
        if dst.startswith("autotune."):
            graph.setdefault(src, {}).setdefault(dst, []).append(imp)
    return graph


def find_cycle(graph: dict[str, dict[str, list[Import]]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = dfs(start)
            if cycle:
                return cycle
    return None


def module_graph(imports: Iterable[Import], within: str) -> dict[str, dict[str, list[Import]]]:
    """Module -> imported module, for modules of the unit ``within`` only."""
    graph: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        if imp.module.startswith(within) and imp.target.startswith(within) \
                and imp.module != imp.target:
            graph.setdefault(imp.module, {}).setdefault(imp.target, []).append(imp)
    return graph


def describe(cycle: list[str], graph: dict[str, dict[str, list[Import]]]) -> str:
    return "; ".join(imp.where() for a, b in zip(cycle, cycle[1:]) for imp in graph[a][b])


def lazy_imports(imports: Iterable[Import]) -> list[Import]:
    """Function-local imports that need a reason: those of anything but a heavy optional
    dependency."""
    return [imp for imp in imports if imp.local and unit(imp.target) not in HEAVY_OPTIONAL]


# -- the assertions about autotune/ ------------------------------------------------------------


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return all_imports()


def test_no_cycle_between_units(imports):
    """Every unit, search and CLI included, with function-local imports counted."""
    graph = unit_graph(imports)
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}: {describe(cycle, graph)}"


@pytest.mark.parametrize("package", ["autotune.train", "autotune.memory", "autotune.knobs"])
def test_no_cycle_between_modules_of(imports, package):
    graph = module_graph(imports, package)
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}: {describe(cycle, graph)}"


@pytest.mark.parametrize("package", ["autotune.train", "autotune.memory", "autotune.knobs"])
def test_training_and_memory_know_nothing_of_search_cli_or_exports(imports, package):
    bad = [imp.where() for imp in imports if unit(imp.module) == package
           and any(imp.target == n or imp.target.startswith(n + ".") for n in NOT_BELOW)]
    assert not bad, f"{package} must not import {', '.join(NOT_BELOW)}: {bad}"


def test_knobs_sit_below_train_and_memory(imports):
    allowed = {"autotune.knobs", "autotune.recipe", "autotune.tasks", "autotune.errors",
               "autotune.units", "autotune.cache"}
    bad = [imp.where() for imp in imports if unit(imp.module) == "autotune.knobs"
           and imp.target.startswith("autotune") and unit(imp.target) not in allowed]
    assert not bad, f"autotune.knobs may import only {sorted(allowed)}: {bad}"


def test_memory_does_not_import_train(imports):
    bad = [imp.where() for imp in imports if unit(imp.module) == "autotune.memory"
           and unit(imp.target) == "autotune.train"]
    assert not bad, f"autotune.train measures memory, so memory must not import it: {bad}"


def test_function_local_imports_are_only_the_allowed_lazy_ones(imports):
    lazy = lazy_imports(imports)
    unexplained = [imp.where() for imp in lazy if (imp.module, imp.target) not in ALLOWED_LAZY]
    assert not unexplained, (
        "imports inside functions hide cycles; move these to the top of the module (a lazy "
        f"import is for a heavy optional dependency only, with a comment why): {unexplained}")
    assert len(lazy) <= len(ALLOWED_LAZY)


# -- the checker itself can fail ----------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "autotune"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "memory/__init__.py": "def f():\n    from autotune.train import loop\n",
        "train/__init__.py": "",
        "train/loop.py": "from autotune.memory import f\nfrom . import result\n",
        "train/result.py": "from .loop import x\n",
    })
    imports = all_imports(root)
    assert find_cycle(unit_graph(imports)) in (
        ["autotune.memory", "autotune.train", "autotune.memory"],
        ["autotune.train", "autotune.memory", "autotune.train"])
    assert find_cycle(module_graph(imports, "autotune.train")) == [
        "autotune.train.loop", "autotune.train.result", "autotune.train.loop"]
    lazy = lazy_imports(imports)
    assert [(i.module, i.target, i.local) for i in lazy] == [
        ("autotune.memory", "autotune.train.loop", True)]
