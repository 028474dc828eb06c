"""Data layer: catalogue + train/valid/test examples, format readers, raw pipelines, synthetic data.

* :mod:`recgym.data.formats`: one module per published format, the ``FORMATS`` table.
* :mod:`recgym.data.sources`: one module per raw source, the ``RAW_SOURCES`` table, ``prepare_raw``.
* :mod:`recgym.data.registry`: :func:`load` by name or folder, with a processed-dataset cache.
"""

from recgym.data.dataset import (
    PAD,
    SPLITS,
    Catalogue,
    DataFormatError,
    Dataset,
    DataWarning,
    Examples,
    format_sid,
    parse_sid,
    sequence_windows,
    temporal_split,
)
from recgym.data.download import DownloadError
from recgym.data.formats import (
    FORMATS,
    detect_format,
    format_names,
    read_d3,
    read_folder,
    read_lcrec,
    read_sprec,
)
from recgym.data.registry import available, data_dir, load
from recgym.data.sequences import SequenceWindows, UserSequences
from recgym.data.synthetic import make_synthetic

__all__ = [
    "available", "data_dir", "load", "make_synthetic",
    "FORMATS", "detect_format", "format_names", "read_d3", "read_folder", "read_lcrec", "read_sprec",
    "PAD", "SPLITS", "Catalogue", "DataFormatError", "DataWarning", "Dataset", "DownloadError", "Examples",
    "format_sid", "parse_sid", "sequence_windows", "temporal_split", "SequenceWindows", "UserSequences",
]
