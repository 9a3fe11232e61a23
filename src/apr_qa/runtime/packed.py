"""Block-quantized weights kept in their blocks at run time, and the `linear` / `embedding` every
runtime calls instead of F.linear / F.embedding.

`WeightLoader` (packed mode) hands the architecture modules a `BlockMatrix` for each Q8_0, Q4_0,
Q4_K or Q6_K matrix: the stored GGML bytes, one row of blocks per output row. Blocks never span
rows, so selecting, reordering and concatenating rows (fused QKV, gate+up, Falcon's QKV order) is
exact. When the runtime model is built, `kernels.prepare_linear` turns each matrix it multiplies into a
kernel object that reads the blocks at every matmul (memory stays packed):

- `NativeLinear` (CPU): runtime/matmul.c, compiled on first use. Activations stay float32; each
  block's integers are converted to float32, multiplied by the activations and summed, and the
  block's scale is applied to the sum (ggml's dot-product order, without ggml's 8-bit activations).
  The weight values are exactly the dequantized ones, so packed and dequantized runs differ only
  in float32 summation order (TOLERANCE). Up to SMALL_BATCH activation rows (decoding, short
  prompts) the kernel reads the blocks directly; longer inputs dequantize slices of rows exactly
  and use torch's float32 GEMM.
- `DequantLinear`: dequantizes the whole matrix per matmul in torch (exact, any device): CUDA, and
  CPUs where matmul.c cannot be built.

torch's own CPU kernels were measured first: `_weight_int8pack_mm` scales per output channel only
(Q8_0 scales every 32 weights), and `_weight_int4pack_mm_for_cpu` is fast only in bfloat16
(runtime.torch_int4, opt-in through APR_QA_PACKED_KERNEL=torch-int4).

Embedding lookups read rows straight from the blocks (`rows`, exact); a tied embedding reads them
from the head's kernel object, so the matrix is resident once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..dtypes import DType

# Packed against dequantized outputs (logits, hidden states): at most this fraction of the
# dequantized output's range apart. Both multiply the same float32 weight values by float32
# activations; only the order of the float32 sums differs (measured on SmolLM2: ~1.5e-6).
TOLERANCE = 1e-5
# Block types the packed path keeps packed; everything else is dequantized at load.
PACKED_DTYPES = (DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K)
# "torch-int4" runs Q8_0/Q4_0/Q4_K on torch's bfloat16 int4 kernel instead (runtime.torch_int4), for
# comparison only: measured no faster than matmul.c on SmolLM2 (Q4_0 even, Q8_0 slower), and its
# bfloat16 numerics are far outside TOLERANCE.
KERNEL_ENV = "APR_QA_PACKED_KERNEL"


# -- exact dequantization in torch (ggml's formulas, float32, any device) -----------------------------

def _f16(raw: torch.Tensor) -> torch.Tensor:
    """[..., 2] uint8 little-endian half floats -> float32 [...]."""
    return raw.contiguous().view(torch.float16).squeeze(-1).float()


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[..., 0:2])
    return blocks[..., 2:].contiguous().view(torch.int8).float() * d[..., None]


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[..., 0:2])
    qs = blocks[..., 2:]
    q = torch.cat([qs & 0x0F, qs >> 4], dim=-1).float() - 8
    return q * d[..., None]


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's get_scale_min_k4 for the eight sub-blocks: [..., 12] bytes -> two [..., 8] uint8."""
    a, b, c = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = torch.cat([a & 63, (c & 0x0F) | ((a >> 6) << 4)], dim=-1)
    mn = torch.cat([b & 63, (c >> 4) | ((b >> 6) << 4)], dim=-1)
    return sc, mn


def _q4_k_parts(blocks: torch.Tensor):
    """-> nibbles [..., 8, 32] uint8, sub-block scale d * sc and min dmin * m [..., 8] float32."""
    d, dmin = _f16(blocks[..., 0:2]), _f16(blocks[..., 2:4])
    sc, mn = _k_scale_min(blocks[..., 4:16])
    qs = blocks[..., 16:].unflatten(-1, (4, 1, 32))
    q = torch.cat([qs & 0x0F, qs >> 4], dim=-2).flatten(-3, -2)
    return q, d[..., None] * sc.float(), dmin[..., None] * mn.float()


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    q, scale, low = _q4_k_parts(blocks)
    return (scale[..., None] * q.float() - low[..., None]).flatten(-2)


_Q6_SHIFTS = (0, 2, 4, 6)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    ql = blocks[..., 0:128].unflatten(-1, (2, 1, 64))
    qh = blocks[..., 128:192].unflatten(-1, (2, 1, 32))
    scales = blocks[..., 192:208].contiguous().view(torch.int8).float()
    d = _f16(blocks[..., 208:210])
    low = torch.cat([ql & 0x0F, ql >> 4], dim=-2).flatten(-2).unflatten(-1, (4, 32))
    high = torch.cat([((qh >> s) & 3) << 4 for s in _Q6_SHIFTS], dim=-2)
    q = (low | high).float() - 32
    return ((d[..., None] * scales).unflatten(-1, (16, 1)) * q.flatten(-3).unflatten(-1, (16, 16))).flatten(-2)


_DEQUANTIZE = {DType.Q8_0: _q8_0, DType.Q4_0: _q4_0, DType.Q4_K: _q4_k, DType.Q6_K: _q6_k}


def dequantize_rows(dtype: DType, data: torch.Tensor, cols: int) -> torch.Tensor:
    """Rows of blocks [n, row_bytes] uint8 -> float32 [n, cols], exactly as ggml dequantizes."""
    blocks = data.unflatten(-1, (-1, dtype.block_bytes))
    return _DEQUANTIZE[dtype](blocks).flatten(-2)[..., :cols]


# -- stored blocks -------------------------------------------------------------------------------------

@dataclass
class BlockMatrix:
    """A block-quantized [rows, cols] matrix as stored (uint8 [rows, row_bytes]); `dtype` is the
    float dtype its values are produced in."""

    block: DType
    data: torch.Tensor
    cols: int
    dtype: torch.dtype

    @classmethod
    def from_raw(cls, block: DType, raw: np.ndarray, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> BlockMatrix:
        rows, cols = shape
        data = np.array(raw, dtype=np.uint8, copy=True).reshape(rows, block.row_bytes(cols))
        return cls(block, torch.from_numpy(data).to(device), cols, dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.data.shape[0], self.cols)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    @property
    def device(self) -> torch.device:
        return self.data.device

    def __getitem__(self, rows) -> BlockMatrix:
        """Rows selected or reordered (an index tensor or slice): whole rows of blocks move."""
        if isinstance(rows, torch.Tensor):
            rows = rows.to(self.data.device)
        return BlockMatrix(self.block, self.data[rows].contiguous(), self.cols, self.dtype)

    def contiguous(self) -> BlockMatrix:
        return self

    def to(self, device: torch.device) -> BlockMatrix:
        return BlockMatrix(self.block, self.data.to(device), self.cols, self.dtype)

    def dequantize(self) -> torch.Tensor:
        return dequantize_rows(self.block, self.data, self.cols).to(self.dtype)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Unprepared blocks still multiply correctly (dequantized per call); runtimes prepare them."""
        return F.linear(x, dequantize_rows(self.block, self.data, self.cols).to(x.dtype))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """An embedding lookup: the rows `ids` (any shape) -> [*ids.shape, cols]."""
        picked = self.data[ids.reshape(-1).to(self.data.device)]
        return dequantize_rows(self.block, picked, self.cols).to(self.dtype).reshape(*ids.shape, self.cols)


def stack_rows(parts: list) -> BlockMatrix | RowStack | torch.Tensor:
    """Row concatenation of weights of one layer (QKV, gate+up): blocks concatenate as bytes when
    every part has the same block type; otherwise the parts run separately and their outputs are
    concatenated (e.g. a GGUF Q4_K_M source keeps some V projections in Q6_K)."""
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts, dim=0).contiguous()
    first = parts[0]
    if all(isinstance(p, BlockMatrix) and p.block == first.block and p.cols == first.cols for p in parts):
        return BlockMatrix(first.block, torch.cat([p.data for p in parts], dim=0), first.cols, first.dtype)
    return RowStack(list(parts))


@dataclass
class RowStack:
    """Weights whose outputs are concatenated: one linear of mixed storage."""

    parts: list

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(p.shape[0] for p in self.parts), self.parts[0].shape[1])

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([linear(x, p) for p in self.parts], dim=-1)


# -- kernels -------------------------------------------------------------------------------------------

class PackedKernel:
    """A packed weight in the form a runtime multiplies by (`linear`) and looks rows up in (`rows`)."""


class DequantLinear(PackedKernel):
    """Blocks resident as stored; each matmul dequantizes them into the activation dtype."""

    def __init__(self, blocks: BlockMatrix):
        self.blocks = blocks
        self.shape = blocks.shape
        self.dtype = blocks.dtype

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize_rows(self.blocks.block, self.blocks.data, self.blocks.cols).to(x.dtype)
        return F.linear(x, weight)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.blocks.rows(ids)


class NativeLinear(PackedKernel):
    """Blocks as stored, multiplied by matmul.c's kernels: float32 activations and sums, each block's
    integers times the activations, the scale applied per block. Up to SMALL_BATCH activation rows
    the kernel reads the blocks directly (converting each block once per 4 rows); for longer inputs
    (prefill) the weight is dequantized exactly, a slice of rows at a time, and multiplied with
    torch's float32 GEMM (measured on SmolLM2's shapes: the kernel is faster up to ~32 rows)."""

    SMALL_BATCH = 32
    PARALLEL_MIN = 1 << 20  # weight bytes x rows below which one thread beats waking another (measured)
    SLICE_BYTES = 16 << 20  # float32 dequantized at a time during prefill

    def __init__(self, blocks: BlockMatrix, lib):
        self.blocks, self.lib = blocks, lib
        self.shape, self.dtype = blocks.shape, blocks.dtype
        self.out, self.cols = blocks.shape
        self.k = blocks.data.shape[1] // blocks.block.block_bytes * blocks.block.block_elems  # padded width

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        a = x.reshape(-1, self.cols).float()
        m = a.shape[0]
        y = torch.empty(m, self.out)
        code, data = self.blocks.block.code, self.blocks.data
        if m <= self.SMALL_BATCH:
            if self.k != self.cols:
                a = F.pad(a, (0, self.k - self.cols))
            a = a.contiguous()
            parallel = int(data.numel() * m >= self.PARALLEL_MIN)
            self.lib.blocks_matmul(code, data.data_ptr(), self.out, self.k, a.data_ptr(), m, y.data_ptr(), parallel)
        else:
            step = max(1, self.SLICE_BYTES // (4 * self.cols))
            w = torch.empty(min(step, self.out), self.cols)
            for start in range(0, self.out, step):
                rows = min(step, self.out - start)
                self.lib.blocks_dequantize(code, data[start].data_ptr(), rows, self.k, self.cols, w.data_ptr())
                y[:, start:start + rows] = F.linear(a, w[:rows])
        return y.to(x.dtype).reshape(*lead, self.out)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.blocks.rows(ids)


class FloatLinear:
    """A float32 or bfloat16 [out, in] weight on CPU, multiplied for decoding (up to SMALL_BATCH rows)
    by matmul.c's row kernel: bfloat16 values widen exactly to float32, products and sums are float32,
    one thread for small matrices. MKL's matrix-vector product wakes every OpenMP thread for every
    projection (with OMP_WAIT_POLICY=PASSIVE each wake-up is a futex round trip) and its bfloat16 path
    converts through a slow route on CPUs without native bfloat16; longer inputs go to F.linear (bfloat16
    weights widened to float32 first: measured 0.10 s against 0.42 s for a 512 x 576 x 1536 product on
    2 cores)."""

    CODES: ClassVar[dict[torch.dtype, int]] = {torch.float32: DType.F32.code, torch.bfloat16: DType.BF16.code}

    def __init__(self, weight: torch.Tensor, lib):
        self.weight, self.lib = weight.contiguous(), lib
        self.shape, self.dtype = tuple(weight.shape), weight.dtype
        self.out, self.cols = self.shape
        self.code = self.CODES[weight.dtype]

    @classmethod
    def fits(cls, weight) -> bool:
        return (isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.device.type == "cpu"
                and weight.dtype in cls.CODES and weight.shape[1] % 16 == 0)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        a = x.reshape(-1, self.cols)
        m = a.shape[0]
        if m > NativeLinear.SMALL_BATCH:
            if self.dtype == torch.bfloat16:  # widened exactly: CPU bfloat16 GEMM is ~4x slower than float32's
                return F.linear(x.float(), self.weight.float()).to(x.dtype)
            return F.linear(x, self.weight)
        a = a.float().contiguous()
        y = torch.empty(m, self.out)
        parallel = int(self.nbytes * m >= NativeLinear.PARALLEL_MIN)
        self.lib.blocks_matmul(self.code, self.weight.data_ptr(), self.out, self.cols, a.data_ptr(), m,
                               y.data_ptr(), parallel)
        return y.to(x.dtype).reshape(*lead, self.out)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


# -- dispatch ----------------------------------------------------------------------------------------------

def is_packed(weight) -> bool:
    return isinstance(weight, (BlockMatrix, RowStack, PackedKernel))


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for float weights, the kernel for packed ones."""
    if isinstance(weight, torch.Tensor):
        return F.linear(x, weight, bias)
    y = weight.linear(x)
    return y if bias is None else y + bias


def embedding(ids: torch.Tensor, weight) -> torch.Tensor:
    if isinstance(weight, torch.Tensor):
        return F.embedding(ids, weight)
    return weight.rows(ids)


def resident_bytes(*roots) -> int:
    """Bytes of the distinct tensors reachable from `roots` (model objects, dataclasses, lists)."""
    seen_objects: set[int] = set()
    seen_storage: set[int] = set()
    total = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen_objects or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            continue
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() not in seen_storage:
                seen_storage.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("apr_qa",)):
            stack.extend(vars(obj).values())
    return total
