"""Tensor dtypes of the .apr v2 container and their storage geometry.

Codes follow the reference readers: 0 F32, 1 F16, 30 BF16, 12 Q4_K, 14 Q6_K are portable;
8 Q8_0 and 2 Q4_0 use GGML's numbering (recorded in the metadata, see `apr_qa.metadata`).
Block types store every row (the last dimension) padded to a whole number of blocks, which is
GGML's layout for K-quants and a no-op for the 32-wide types on GGML-compatible shapes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .errors import FormatError


class DType(enum.Enum):
    #       code, block_elems, block_bytes
    F32 = (0, 1, 4)
    F16 = (1, 1, 2)
    Q4_0 = (2, 32, 18)
    Q8_0 = (8, 32, 34)
    Q4_K = (12, 256, 144)
    Q6_K = (14, 256, 210)
    BF16 = (30, 1, 2)

    def __init__(self, code: int, block_elems: int, block_bytes: int):
        self.code = code
        self.block_elems = block_elems
        self.block_bytes = block_bytes

    @property
    def is_quantized(self) -> bool:
        return self.block_elems > 1

    @classmethod
    def from_code(cls, code: int, where: str = "") -> DType:
        for d in cls:
            if d.code == code:
                return d
        # I-3: an unknown dtype is an error, never a silent fallback to F32.
        raise FormatError(f"unknown tensor dtype code {code}{' for ' + where if where else ''}")

    @classmethod
    def from_name(cls, name: str) -> DType:
        try:
            return cls[name.upper()]
        except KeyError:
            raise FormatError(f"unknown dtype name {name!r}") from None

    def row_bytes(self, cols: int) -> int:
        """Bytes of one row of `cols` elements (padded to whole blocks for block types)."""
        return math.ceil(cols / self.block_elems) * self.block_bytes

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Stored size of a tensor of logical `shape`."""
        if len(shape) == 0:
            return self.row_bytes(1)
        rows = math.prod(shape[:-1])
        return rows * self.row_bytes(shape[-1])


@dataclass(frozen=True)
class QuantLevel:
    """One `apr-qa convert --quant` variant.

    weights: the dtype its weight matrices are stored in (norms and other 1-D tensors stay F32, the
    architecture's exemptions too: see `convert.target_dtype`). recipe: for a mixture, the module of
    `apr_qa.quant` whose `promotions()` moves chosen tensors to other dtypes (llama.cpp's
    Q4_K_M). bits/symmetric: the `quantization` metadata aprender reads. gguf_file_type: the
    `general.file_type` (gguf.LlamaFileType member) `apr-qa export-gguf` writes.

    Its limits (required: a level without them does not import):
    t9_anchor: the llama.cpp quantization type whose published mean KLD bounds the level's T9 limit
    (evaluation/conversion_limits.py: a level without a published figure takes the coarser published
    type it is at least as fine as). encoder_min_cosine: gate T5's minimum cosine between an encoder's
    embeddings and the reference's (q6_k / q4_k_m / q4_k measured on all-MiniLM-L6-v2, 8 sentences:
    min 0.9982 / 0.9745 / 0.9697). high_accuracy: gate Q1 holds the level to MLPerf's high-accuracy
    target (99.9 % of the reference's next-token accuracy on real text) rather than its 99 % one: the
    16- and 32-bit levels, which only round.
    """

    weights: DType
    bits: int
    symmetric: bool
    gguf_file_type: str
    t9_anchor: str
    encoder_min_cosine: float
    high_accuracy: bool
    recipe: str | None = None


# The variants, by the name `--quant`, the config and the workflow use. Adding one is its codec
# module under apr_qa/quant/ (a new dtype, or a recipe over existing ones) plus one entry here.
QUANT_LEVELS: dict[str, QuantLevel] = {
    "f32": QuantLevel(DType.F32, 32, True, "ALL_F32",
                      t9_anchor="bf16", encoder_min_cosine=0.99999, high_accuracy=True),
    "f16": QuantLevel(DType.F16, 16, True, "MOSTLY_F16",
                      t9_anchor="bf16", encoder_min_cosine=0.999, high_accuracy=True),
    "bf16": QuantLevel(DType.BF16, 16, True, "MOSTLY_BF16",
                       t9_anchor="bf16", encoder_min_cosine=0.995, high_accuracy=True),
    "q8_0": QuantLevel(DType.Q8_0, 8, True, "MOSTLY_Q8_0",
                       t9_anchor="q8_0", encoder_min_cosine=0.99, high_accuracy=False),
    "q4_0": QuantLevel(DType.Q4_0, 4, True, "MOSTLY_Q4_0",
                       t9_anchor="q4_0", encoder_min_cosine=0.95, high_accuracy=False),
    # every weight matrix Q4_K: llama.cpp's "pure" Q4_K, closest to its Q4_K_S file type; its blocks have
    # finer scales than Q4_0's, so Q4_0's published KLD bounds it
    "q4_k": QuantLevel(DType.Q4_K, 4, False, "MOSTLY_Q4_K_S",
                       t9_anchor="q4_0", encoder_min_cosine=0.95, high_accuracy=False),
    "q6_k": QuantLevel(DType.Q6_K, 6, True, "MOSTLY_Q6_K",
                       t9_anchor="q4_k_m", encoder_min_cosine=0.99, high_accuracy=False),
    "q4_k_m": QuantLevel(DType.Q4_K, 4, False, "MOSTLY_Q4_K_M",
                         t9_anchor="q4_k_m", encoder_min_cosine=0.95, high_accuracy=False, recipe="q4_k_m"),
}
