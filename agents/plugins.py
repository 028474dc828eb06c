"""Plug-ins: Python files or modules that register learners (or rankers) when imported.

``recgym train --plugin FILE`` and ``recgym bench --plugin FILE`` import them before the command's
choices are read; see ``examples/reinforce_plugin.py``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_plugin(spec: str) -> ModuleType:
    """Import a plug-in (a ``.py`` file path or an importable module name) once; it registers agents.

    Example:
        >>> load_plugin("json").__name__  # any module; a real plug-in calls register_learner
        'json'
    """
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ValueError(f"--plugin: no such file {spec!r}")
        resolved = path.resolve()
        name = f"recgym_plugin_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
        if name in sys.modules:  # imported already: it has registered its agents
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, resolved)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as err:
        raise ValueError(f"--plugin: cannot import {spec!r} ({err}); pass a .py file or a module name") \
            from err


__all__ = ["load_plugin"]
