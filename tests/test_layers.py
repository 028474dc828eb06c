"""The package's import graph: no circle anywhere, and no import from a lower layer into a higher one.

README's Layout section states the layers; this test keeps them true. Every import counts,
including those inside functions (a lazy import in a circle is still a circle in the design).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import modules of its own layer or of lower layers only.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("recgym", ("recgym",)),
    ("agents: plain helpers", ("agents.configs", "agents.tracking", "agents.checkpoint", "agents.plots",
                               "agents.cli_options", "agents.pretrained", "agents.runs",
                               "agents.adapters", "agents.distributed", "agents.fsdp", "agents.kvcache",
                               "agents.recipes", "agents.saved")),
    ("agents: policy and evaluation", ("agents.policy", "agents.evaluate", "agents.training",
                                       "agents.encoders")),
    ("agents: learners, baselines, training loops", ("agents.learners", "agents.baselines", "agents.sft",
                                                      "agents.rl", "agents.minirec", "agents.integrations")),
    ("agents: construction and benchmark", ("agents.build", "agents.bench", "agents.bench_report",
                                            "agents.plugins")),
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
    """Package modules that ``path`` imports (``from a import b`` counts a.b when that is a module)."""
    is_package = path.name == "__init__.py"
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
            if target and target != name and not name.startswith(target + "."):
                found.add(target)  # a module's own parent packages are implicit, not edges
    return found


def layer_of(name: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name} belongs to no layer: place it in tests/test_layers.py and README's Layout")


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
    assert layer_of("recgym.envs.task") < layer_of("agents.policy") < layer_of("agents.cli")


def test_imports_are_read_from_source(tmp_path):
    """``from agents.learners import grpo`` and relative imports resolve to modules."""
    pkg = tmp_path / "agents" / "learners"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .grpo import GRPO\n")
    (pkg / "grpo.py").write_text("def f():\n    from agents.policy import LLMPolicy\n")
    known = {"agents.learners", "agents.learners.grpo", "agents.policy"}
    assert imports_of(pkg / "__init__.py", "agents.learners", known) == {"agents.learners.grpo"}
    assert imports_of(pkg / "grpo.py", "agents.learners.grpo", known) == {"agents.policy"}
