"""The package's layout: every module imports, and no module imports (at load or inside a function) a module
that imports it back, directly or through others; imports only read by type checkers do not count."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "itclust_hub"
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py"))


def _imported(path: Path) -> set[str]:
    """The package's modules that ``path`` imports anywhere but under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree)
                   if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for node in ast.walk(block)}
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and id(node) not in typing_only:
            if node.level == 1:
                names |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
            elif (node.module or "").startswith("itclust_hub."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import) and id(node) not in typing_only:
            names |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("itclust_hub.")}
    return names & set(MODULES)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (module -> modules it imports) as a path that ends where it starts, or None."""
    state = {}  # module -> "open" while on the current path, "done" after

    def visit(module, path):
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state and (found := visit(other, path + [other])):
                return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module("itclust_hub" if module == "__init__" else f"itclust_hub.{module}")


def test_no_import_cycles():
    graph = {module: _imported(PACKAGE / f"{module}.py") - {module} for module in MODULES}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_cycle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


NETWORK_NAMES = {"httpx2", "urllib.request", "fsspec", "HfApi", "hf_hub_download", "snapshot_download"}


def test_only_the_hub_module_goes_to_the_network():
    """Everything that can reach the network (Hub API, downloads, file servers) is in _hub; the index lookup
    (_registry) and the rest read local files only."""
    reaching = set()
    for module in MODULES:
        for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
            names = set()
            if isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = {node.module, *(alias.name for alias in node.names)}
            if names & NETWORK_NAMES:
                reaching.add(module)
    assert reaching == {"_hub"}
