"""Metric logging for every learner: JSON lines always, TensorBoard scalars where installed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class MetricLogger:
    """Append one JSON object per call to ``<run_dir>/metrics.jsonl``; mirror numbers to TensorBoard.

    Args:
        run_dir: the run folder.
        tensorboard: also write TensorBoard scalars (when ``tensorboard`` is installed).
        from_step: the first step this run will log. Records of later steps ``>= from_step`` (left
            by an interrupted run that is now resumed, or started over) and a torn last line (a
            kill mid-write) are dropped first, so no step is ever logged twice; TensorBoard
            events from ``from_step`` on are purged too. None (default): append to what is there.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     log = MetricLogger(d, tensorboard=False)
        ...     log.log({"loss": 1.5}, step=1)
        ...     log.log({"loss": 1.2}, step=2)
        ...     log.close()
        ...     MetricLogger(d, tensorboard=False, from_step=2).close()  # resumed after step 1
        ...     [r["loss"] for r in MetricLogger.read(d)]
        [1.5]
    """

    FILE = "metrics.jsonl"

    def __init__(
        self, run_dir: str | os.PathLike[str], *, tensorboard: bool = True, from_step: int | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / self.FILE
        if from_step is not None and path.exists():
            records, torn = _parse(path)
            kept = [r for r in records if r.get("step", 0) < from_step]
            if torn or len(kept) < len(records):
                write_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=from_step)
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
        """All records of a run, in order; a torn last line (a kill mid-write) is skipped.

        A damaged line elsewhere is a ValueError naming the file and the line.

        Example:
            >>> import tempfile
            >>> d = Path(tempfile.mkdtemp())
            >>> _ = (d / "metrics.jsonl").write_text('{"step": 1}\\n{"step": 2, "lo')
            >>> MetricLogger.read(d)
            [{'step': 1}]
        """
        return _parse(Path(run_dir) / MetricLogger.FILE)[0]


def _parse(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """``(records, torn?)`` of a metrics file; raises for a damaged line that is not the last."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records: list[dict[str, Any]] = []
    torn = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if number == len(lines):  # the last line, cut short by a kill mid-write
                torn = True
                break
            raise ValueError(f"{path}, line {number}: not a metrics record ({err}); delete that line, or "
                             "start the run over with --restart") from err
        records.append(record)
    return records, torn


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
