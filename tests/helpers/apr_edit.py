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


def broken_block_scale(apr: Path):
    """Every Q8_0 block's f16 scale 4x too large (a quantizer writing the wrong scale)."""
    def edit(meta, plan, payloads):
        for e in plan:
            if e.dtype == DType.Q8_0:
                blocks = payloads[e.name].view(np.uint8).reshape(-1, 34)
                blocks[:, :2] = (blocks[:, :2].copy().view(np.float16) * np.float16(4.0)).view(np.uint8)
    return edit


def transposed_projections(apr: Path):
    """q_proj and o_proj stored transposed (a wrong-layout conversion; square here, so shapes still match)."""
    def edit(meta, plan, payloads):
        with AprReader(apr) as reader:
            for e in [e for e in plan if e.name.endswith(("q_proj.weight", "o_proj.weight"))]:
                values = reader.load(e.name)
                restore_as(DType.Q8_0, e.name, values.shape, np.ascontiguousarray(values.T), plan, payloads)
    return edit
