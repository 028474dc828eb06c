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
from recgym.data.readers import detect_format, read_d3, read_folder, read_lcrec, read_sprec
from recgym.data.registry import available, data_dir, load
from recgym.data.synthetic import make_synthetic

__all__ = [
    "available", "data_dir", "load", "make_synthetic",
    "detect_format", "read_d3", "read_folder", "read_lcrec", "read_sprec",
    "PAD", "SPLITS", "Catalogue", "DataFormatError", "Dataset", "Examples",
    "format_sid", "parse_sid", "sequence_windows", "temporal_split",
]
