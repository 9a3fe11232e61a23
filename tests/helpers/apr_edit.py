"""Rewrite a valid .apr with one deliberate defect, through the real writer (for gate tests)."""

from __future__ import annotations

import copy
from pathlib import Path
from collections.abc import Callable

import numpy as np

from apr_qa.apr import AprReader, AprWriter, TensorEntry
from apr_qa.dtypes import DType
from apr_qa.quant import quantize

Edit = Callable[[dict, list[TensorEntry], dict[str, np.ndarray]], None]


def rewrite(src: Path, dst: Path, edit: Edit) -> Path:
    """Copy `src` to `dst`, letting `edit(metadata, plan, payloads)` change anything in between."""
    with AprReader(src) as reader:
        meta = copy.deepcopy(reader.metadata)
        plan = [TensorEntry(e.name, e.dtype, tuple(e.shape)) for e in reader.entries]
        payloads = {e.name: np.array(reader.raw(e.name)) for e in reader.entries}
    edit(meta, plan, payloads)
    with AprWriter(dst, meta, plan) as writer:
        for entry in plan:
            writer.write(entry.name, payloads[entry.name])
    return dst


def restore_as(dtype: DType, name: str, shape: tuple, values: np.ndarray, plan, payloads) -> None:
    """Store tensor `name` as `values` encoded in `dtype` (changing its plan entry to match)."""
    for i, e in enumerate(plan):
        if e.name == name:
            plan[i] = TensorEntry(name, dtype, tuple(shape))
    payloads[name] = quantize(dtype, values.astype(np.float32))
