"""torch's int4 weight-only CPU kernel over GGML blocks: the measured alternative to matmul.c,
selected with APR_QA_PACKED_KERNEL=torch-int4 (runtime.packed).

`_weight_int4pack_mm_for_cpu` is vectorized (AVX2/AVX-512) only for bfloat16: activations, one
(scale, zero) pair per 32 weights and row, and outputs are bfloat16, sums float32; its float16
and float32 forms run a scalar loop (measured ~100x slower). It computes w = (q - 8) * scale +
zero. Q4_0 maps to (d, 0); Q4_K to (d * sc, 8 * d * sc - dmin * m) per 32-weight sub-block; Q8_0
to two 4-bit planes side by side along the input dimension (q + 128 = 16 * hi + lo: scales 16 * d
and d, zeros 0 and 8 * d), the activations repeated to match. Nibbles are exact; scales round to
bfloat16 (relative error <= 2**-9), and with bfloat16 activations and outputs SmolLM2's greedy
tokens drift from the exact blocks' within ~10-30 tokens (measured), hence opt-in. Q6_K's
16-weight sub-blocks do not fit 32-weight groups.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..dtypes import DType
from .packed import BlockMatrix, PackedKernel, _f16, _q4_k_parts

INT4_DTYPES = (DType.Q8_0, DType.Q4_0, DType.Q4_K)
GROUP = 32          # weights per (scale, zero) pair
ROW_ALIGN = 16      # the kernel packs output rows in blocks of 16, 32, 48 or 64
# int32 nibbles per packing step: bounds the temporary memory of a load (16 MB).
PACK_CHUNK_ELEMS = 1 << 22


def _int4_groups(blocks: BlockMatrix, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows start..stop as the int4 kernel's inputs: nibbles int32 [r, k] (k: input columns padded to
    whole 32-groups, twice over for Q8_0's two planes) and float32 (scale, zero) [r, k / 32, 2]."""
    kind, cols = blocks.block, blocks.cols
    padded = math.ceil(cols / GROUP) * GROUP
    data = blocks.data[start:stop].unflatten(-1, (-1, kind.block_bytes))
    n = data.shape[0]
    if kind == DType.Q4_0:
        d = _f16(data[..., 0:2])
        qs = data[..., 2:]
        q = torch.cat([qs & 0x0F, qs >> 4], dim=-1).reshape(n, -1)
        scale_zero = torch.stack([d, torch.zeros_like(d)], dim=-1)
    elif kind == DType.Q8_0:
        d = _f16(data[..., 0:2])
        u = data[..., 2:].contiguous().view(torch.int8).to(torch.int32) + 128  # 1..255
        q = torch.cat([(u >> 4).reshape(n, -1), (u & 0x0F).reshape(n, -1)], dim=1)
        zero = torch.zeros_like(d)
        scale_zero = torch.cat([torch.stack([16 * d, zero], dim=-1), torch.stack([d, 8 * d], dim=-1)], dim=1)
    elif kind == DType.Q4_K:
        nib, scale, low = _q4_k_parts(data)
        q = nib.reshape(n, -1)[:, :padded]
        scale_zero = torch.stack([scale, 8 * scale - low], dim=-1).reshape(n, -1, 2)[:, : padded // GROUP]
    else:
        raise ValueError(f"{kind.name} has no int4 form")
    return q.to(torch.int32), scale_zero


def int4_kernel_available() -> bool:
    """torch's CPU int4 kernel is vectorized for bfloat16 on x86 AVX2/AVX512 (and NEON); elsewhere
    it is a scalar loop, slower than dequantizing."""
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") and hasattr(
        torch.ops.aten, "_weight_int4pack_mm_for_cpu")


class Int4Linear(PackedKernel):
    """torch's int4 weight-only matmul over the blocks' nibbles (see the module docstring)."""

    def __init__(self, blocks: BlockMatrix):
        _packing_block()
        self.block, self.cols, self.dtype = blocks.block, blocks.cols, blocks.dtype
        self.out = blocks.shape[0]
        self.shape = blocks.shape
        self.k = math.ceil(self.cols / GROUP) * GROUP                     # one plane's input width
        self.planes = 2 if self.block == DType.Q8_0 else 1
        rows = math.ceil(self.out / ROW_ALIGN) * ROW_ALIGN
        step = max(64, PACK_CHUNK_ELEMS // (self.k * self.planes) // 64 * 64)  # whole 64-row blocks
        packed, scale_zero = [], []
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            q, sz = _int4_groups(blocks, start, min(stop, self.out))
            if q.shape[0] < stop - start:  # rows padded to the kernel's row blocks: zero weights
                q = F.pad(q, (0, 0, 0, stop - start - q.shape[0]), value=8)
                sz = F.pad(sz, (0, 0, 0, 0, 0, stop - start - sz.shape[0]))
            packed.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1))
            scale_zero.append(sz.to(torch.bfloat16))
        self.packed = torch.cat(packed, dim=0)
        self.scale_zero = torch.cat(scale_zero, dim=0).transpose(0, 1).contiguous()  # [groups, rows, 2]
        self.rows_padded = rows

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + self.scale_zero.numel() * 2

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        a = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if self.k != self.cols:
            a = F.pad(a, (0, self.k - self.cols))
        if self.planes == 2:
            a = torch.cat([a, a], dim=1)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(a.contiguous(), self.packed, GROUP, self.scale_zero)
        if self.rows_padded != self.out:
            y = y[:, : self.out]
        return y.to(x.dtype).reshape(*lead, self.out)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the weight as the kernel sees them (bfloat16 scales), read from the packing."""
        flat = ids.reshape(-1).to(torch.long)
        q = _unpack_rows(self.packed, flat, self.rows_padded, self.k * self.planes)
        sz = self.scale_zero[:, flat].float()                                   # [groups, m, 2]
        w = (q.float() - 8).unflatten(-1, (-1, GROUP)) * sz[..., 0].t()[..., None] + sz[..., 1].t()[..., None]
        w = w.flatten(-2)
        if self.planes == 2:
            w = w[:, : self.k] + w[:, self.k:]
        return w[:, : self.cols].to(self.dtype).reshape(*ids.shape, self.cols)


# -- the int4 kernel's packing, read back ------------------------------------------------------------------
# torch packs rows in blocks of B (64 with AVX512, else 32); within a full block, for each input
# column k the B / 2 bytes hold row r in byte r % (B / 2), nibble r // (B / 2); a partial block
# (16, 32 or 48 rows) holds rows 2j, 2j + 1 in byte j. `_packing_block` finds B by packing a probe,
# so an unexpected layout is detected, never misread.

def _unpack_rows(packed: torch.Tensor, rows: torch.Tensor, n: int, k: int) -> torch.Tensor:
    block = _packing_block()
    flat = packed.reshape(-1)
    b = rows // block
    r = rows % block
    size = torch.clamp(n - b * block, max=block)
    full = size == block
    half = block // 2
    col = torch.where(full, r % half, r // 2)
    nibble = torch.where(full, r // half, r % 2)
    base = b * block * (k // 2)
    kk = torch.arange(k, device=packed.device)
    index = base[:, None] + kk[None, :] * (size // 2)[:, None] + col[:, None]
    byte = flat[index].to(torch.int32)
    return (byte >> (4 * nibble[:, None])) & 0x0F


_BLOCK: list[int] = []


def _packing_block() -> int:
    if not _BLOCK:
        probe_rows, probe_k = 112, 64  # one full block of 64 (or 3 of 32) and a partial one
        q = (torch.arange(probe_rows * probe_k, dtype=torch.int32).reshape(probe_rows, probe_k) * 7) % 16
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        for block in (64, 32):
            _BLOCK[:] = [block]
            if torch.equal(_unpack_rows(packed, torch.arange(probe_rows), probe_rows, probe_k), q):
                return block
        _BLOCK.clear()
        raise RuntimeError("torch's int4 packing layout is not the one this runtime reads")
    return _BLOCK[0]
