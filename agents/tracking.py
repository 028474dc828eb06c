"""Metric logging for every learner: JSON lines always, TensorBoard scalars where installed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class MetricLogger:
    """Append one JSON object per call to ``<run_dir>/metrics.jsonl``; mirror numbers to TensorBoard.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     log = MetricLogger(d, tensorboard=False)
        ...     log.log({"loss": 1.5}, step=1)
        ...     log.close()
        ...     MetricLogger.read(d)[0]["loss"]
        1.5
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._writer = None
        self._start = time.time()

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": int(step), "time": round(time.time() - self._start, 3), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()

    @staticmethod
    def read(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """All records of a run, in order."""
        path = Path(run_dir) / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` under a temporary name, then rename it: readers never see half a file.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write_atomically(Path(d) / "a.md", "hi").read_text()
        'hi'
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
