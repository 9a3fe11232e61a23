"""The .apr v2 container: byte layout, streaming writer, memory-mapped reader."""

from .container import Header, TensorEntry
from .reader import AprReader
from .writer import AprWriter

__all__ = ["AprReader", "AprWriter", "Header", "TensorEntry"]
