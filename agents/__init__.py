"""agents: policies, learners and baselines that use recgym only through its public API.

The package is grouped by concern (README, Layout): ``agents.model`` (the LLM policy and what it is
made of), ``agents.training`` (SFT, the RL loop, evaluation, checkpoints and run folders),
``agents.parallel`` (torchrun and FSDP), ``agents.bench`` (the benchmark, its report and plots),
beside ``agents.learners``, ``agents.baselines`` and the command line.

Modules that lived at the top level before the grouping (``agents.policy``, ``agents.sft``,
``agents.rl``, ``agents.evaluate``, ...) still import: each old name is the moved module itself (the
same module object, so patching one patches the other), with a :class:`DeprecationWarning` naming
the new place.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", DeprecationWarning)
    ...     import agents.tracking as old
    >>> import agents.training.tracking as new
    >>> old is new
    True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

# old module -> where it lives now
MOVED: dict[str, str] = {
    "agents.policy": "agents.model.policy",
    "agents.kvcache": "agents.model.kvcache",
    "agents.adapters": "agents.model.adapters",
    "agents.pretrained": "agents.model.pretrained",
    "agents.encoders": "agents.model.encoders",
    "agents.sft": "agents.training.sft",
    "agents.rl": "agents.training.rl",
    "agents.evaluate": "agents.training.evaluate",
    "agents.checkpoint": "agents.training.checkpoint",
    "agents.runs": "agents.training.runs",
    "agents.tracking": "agents.training.tracking",
    "agents.saved": "agents.training.saved",
    "agents.distributed": "agents.parallel.distributed",
    "agents.fsdp": "agents.parallel.fsdp",
    "agents.bench_report": "agents.bench.report",
    "agents.plots": "agents.bench.plots",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: an old module name resolves to the moved module object (not a copy)."""

    def find_spec(
        self, name: str, path: object = None, target: object = None,
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # the import system sets __spec__ to the alias's: kept to restore
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())  # before path finders: an old file left on disk must not win
