"""The processed-dataset cache shared by folder reads (:mod:`recgym.data.registry`) and the raw
pipelines (:mod:`recgym.data.sources`): one ``.npz`` per dataset and options under
``data_dir()/processed``.

A cache file is written to a temporary name, flushed to disk and renamed (:meth:`Dataset.save`),
so a crash leaves either the old file or the new one. A damaged file (empty, truncated, another
cache version, ...) makes :meth:`Dataset.load` raise :class:`DataFormatError`; :func:`cached_dataset`
then warns, deletes it and builds the dataset again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from recgym.data.dataset import DataFormatError, Dataset, DataWarning

__all__ = ["cached_dataset"]


def cached_dataset(path: Path, build: Callable[[], Dataset], *, cache: bool = True) -> Dataset:
    """Load ``path`` if it exists and is readable, else ``build()`` and save it there (atomically).

    An unreadable cache file is rebuilt with a :class:`DataWarning` naming the file and the cause.

    Example:
        >>> import tempfile
        >>> from recgym.data import make_synthetic
        >>> path = Path(tempfile.mkdtemp()) / "tiny.npz"
        >>> _ = path.write_bytes(b"")  # a damaged cache
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     ds = cached_dataset(path, lambda: make_synthetic(200, 50, seed=0))
        >>> Dataset.load(path).catalogue.num_items
        200
    """
    if cache and path.exists():
        try:
            return Dataset.load(path)
        except DataFormatError as err:
            warnings.warn(f"rebuilding a damaged or outdated cache: {err}", DataWarning, stacklevel=2)
            path.unlink(missing_ok=True)
    dataset = build()
    if cache:
        dataset.save(path)
    return dataset
