"""The package's import graph: no circle anywhere, and no import from a lower layer into a higher one.

README's Layout section states the layers; this test keeps them true. Every import counts,
including those inside functions (a lazy import in a circle is still a circle in the design).
"""

import ast
import importlib
import sys
from pathlib import Path

import pytest

import agents

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import modules of its own layer or of lower layers only. A module
# belongs to the layer of its longest listed prefix (agents.training.sft is a loop, agents.training,
# the package's own __init__, is layer 3).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("recgym", ("recgym",)),
    ("agents: plain helpers", ("agents.configs", "agents.cli_options", "agents.recipes", "agents.model",
                               "agents.model.pretrained", "agents.model.adapters", "agents.model.kvcache",
                               "agents.training.tracking", "agents.training.checkpoint",
                               "agents.training.runs", "agents.training.saved", "agents.parallel",
                               "agents.bench.plots")),
    ("agents: policy and evaluation", ("agents.model.policy", "agents.model.sampling", "agents.model.beam",
                                       "agents.model.scoring", "agents.model.persistence",
                                       "agents.model.trainable", "agents.model.encoders", "agents.training",
                                       "agents.training.loop", "agents.training.evaluate")),
    ("agents: learners, baselines, training loops", ("agents.learners", "agents.baselines",
                                                      "agents.training.sft", "agents.training.rl",
                                                      "agents.minirec", "agents.integrations")),
    ("agents: construction and benchmark", ("agents.build", "agents.bench", "agents.plugins")),
    ("agents: command line", ("agents.cli",)),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in ("recgym", "agents") for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Package modules that ``path`` imports (``from a import b`` counts a.b when that is a module).

    Importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` first, so those packages count as
    imports too (a package that re-exports its modules would otherwise hide a circle), except the
    importing module's own parents, which Python has finished running before the module runs.
    """
    is_package = path.name == "__init__.py"
    own_parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:  # the longest prefix that is a package module
                target = target.rpartition(".")[0]
            while target and target != name and target not in own_parents:
                found.add(target)  # the module, then the packages above it that run first
                target = target.rpartition(".")[0]
                while target and target not in known:
                    target = target.rpartition(".")[0]
    return found


def layer_of(name: str) -> int:
    """The layer of the longest listed prefix of ``name``."""
    matches = [(len(p), index) for index, (_, prefixes) in enumerate(LAYERS) for p in prefixes
               if name == p or name.startswith(p + ".")]
    if not matches:
        raise AssertionError(f"{name} belongs to no layer: add it to tests/test_layers.py and README Layout")
    return max(matches)[1]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_every_import_goes_down_or_sideways(graph):
    bad = [f"{src} ({LAYERS[layer_of(src)][0]}) imports {dst} ({LAYERS[layer_of(dst)][0]})"
           for src, targets in graph.items() for dst in targets if layer_of(dst) > layer_of(src)]
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_cli(graph):
    assert not [src for src, targets in graph.items() if "agents.cli" in targets and src != "agents.cli"]


def test_the_checks_catch_a_circle_and_an_upward_import():
    """The checker itself: a made-up circle is found, and recgym importing agents is flagged."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("recgym.envs.task") < layer_of("agents.model.policy") < layer_of("agents.cli")
    assert layer_of("agents.training.runs") < layer_of("agents.training") < layer_of("agents.training.sft")


def test_imports_are_read_from_source(tmp_path):
    """``from agents.learners import grpo`` and relative imports resolve to modules."""
    pkg = tmp_path / "agents" / "learners"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .grpo import GRPO\n")
    (pkg / "grpo.py").write_text("def f():\n    from agents.model.policy import LLMPolicy\n")
    known = {"agents.learners", "agents.learners.grpo", "agents.model.policy"}
    assert imports_of(pkg / "__init__.py", "agents.learners", known) == {"agents.learners.grpo"}
    assert imports_of(pkg / "grpo.py", "agents.learners.grpo", known) == {"agents.model.policy"}


def test_a_package_that_runs_first_counts_as_an_import(tmp_path):
    """``import p.x`` runs ``p/__init__`` first: p is an import of the importer, not of p's own modules."""
    pkg = tmp_path / "agents" / "p"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from agents.p.x import f\n")
    (pkg / "x.py").write_text("from agents.p.y import g\n")
    (pkg / "y.py").write_text("")
    (tmp_path / "agents" / "q.py").write_text("from agents.p.y import g\n")
    known = {"agents", "agents.p", "agents.p.x", "agents.p.y", "agents.q"}
    assert imports_of(tmp_path / "agents" / "q.py", "agents.q", known) == {"agents.p", "agents.p.y"}
    assert imports_of(pkg / "x.py", "agents.p.x", known) == {"agents.p.y"}
    # so a re-export in p/__init__ that leads back to q is a circle
    graph = {"agents.q": {"agents.p", "agents.p.y"}, "agents.p": {"agents.p.x"}, "agents.p.x": {"agents.q"}}
    assert find_cycle(graph) == ["agents.p", "agents.p.x", "agents.q", "agents.p"]


def test_the_package_imports_no_moved_name():
    """Inside the package, every import names a module where it lives now (agents.MOVED are for users)."""
    used = set()
    for path in sorted((ROOT / "agents").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            used |= {f"{path.relative_to(ROOT)}: {n}" for n in names if n in agents.MOVED}
    assert not used, "\n".join(sorted(used))


@pytest.mark.parametrize("old", sorted(agents.MOVED))
def test_an_old_module_name_is_the_moved_module(old, monkeypatch):
    """``import agents.policy`` still works: the module object of agents.model.policy, with a warning."""
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {agents.MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(agents.MOVED[old])
    assert module.__spec__.name == agents.MOVED[old]  # the moved module keeps its own spec
    assert importlib.import_module(old) is module  # later imports: no second module


def test_no_class_or_function_is_longer_than_300_lines():
    """A reader can hold any one unit of the package: no class or function has more than 300 lines."""
    units = [(node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}: {node.name}")
             for path in (ROOT / "agents").rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)]
    lines, unit = max(units)
    assert lines <= 300, f"{unit} has {lines} lines: split it by concern"
