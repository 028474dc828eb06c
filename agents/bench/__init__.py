"""The benchmark: :mod:`agents.bench.runner` (``recgym bench``: presets, agent rows, seeds, resume),
:mod:`agents.bench.report` (its tables and intervals) and :mod:`agents.bench.plots` (its figures).

The runner's public names are re-exported here, where they were before the package.
"""

from agents.bench.runner import (
    ABLATION,
    PRESETS,
    AgentSpec,
    BenchPreset,
    agent_choices,
    budget_settings,
    get_preset,
    load_plugin,
    parse_agents,
    parse_seeds,
    run_bench,
)

__all__ = ["ABLATION", "AgentSpec", "BenchPreset", "PRESETS", "agent_choices", "budget_settings",
           "get_preset", "load_plugin", "parse_agents", "parse_seeds", "run_bench"]
