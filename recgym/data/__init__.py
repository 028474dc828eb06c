"""Data layer: catalogue + train/valid/test examples, readers, raw pipelines, synthetic data."""

from recgym.data.dataset import (
    PAD,
    SPLITS,
    Catalogue,
    DataFormatError,
    Dataset,
    Examples,
    format_sid,
    parse_sid,
    sequence_windows,
    temporal_split,
)

__all__ = [
    "PAD", "SPLITS", "Catalogue", "DataFormatError", "Dataset", "Examples",
    "format_sid", "parse_sid", "sequence_windows", "temporal_split",
]
