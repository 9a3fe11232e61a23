"""GGUF files of the llama family, presented under HF names in HF layout.

Two things separate a GGUF tensor from its HF original:
- dims are stored in GGML order (ne0 first): the HF shape is the reversed dims, the bytes are
  already row-major [out, in] and are never transposed;
- llama (not qwen2) Q and K rows were permuted for GGML's RoPE by convert_hf_to_gguf.py
  (LlamaModel.permute: reshape (n_head, 2, d/2) and swap the middle axes); it is undone here,
  with the KV head count for K. Whole rows move, so quantized blocks can be reordered as-is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as GT
import mmap

from gguf import GGUFReader
from gguf.quants import dequantize

from ..dtypes import DType
from ..errors import FormatError, UnsupportedError
from .base import RawTensor, TensorInfo
from .gguf_names import gguf_to_hf, is_permuted_k, is_permuted_q
from .gguf_tokenizer import build_tokenizer

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_PERMUTED_ARCHS = {"llama"}
# GGUF payloads .apr can hold unchanged; everything else is dequantized to F32 by the caller.
_RAW = {GT.F32: DType.F32, GT.F16: DType.F16, GT.BF16: DType.BF16, GT.Q8_0: DType.Q8_0,
        GT.Q4_0: DType.Q4_0, GT.Q4_K: DType.Q4_K, GT.Q6_K: DType.Q6_K}
# Tensors llama.cpp derives at conversion time that have no HF counterpart.
_DERIVED = {"rope_freqs.weight"}


def unpermute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes LlamaModel.permute: HF row r lives at GGUF row order[r]."""
    if n_head <= 0 or n_rows % (2 * n_head):
        raise ValueError(f"{n_rows} rows cannot be split into {n_head} heads of pairs")
    return np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).swapaxes(1, 2).reshape(-1)


def _f32_value(v: Any) -> Any:
    """GGUF stores hyper-parameters as float32; give back the shortest decimal (1e-05, not 9.99e-06)."""
    return float(str(np.float32(v))) if isinstance(v, float) else v


class GGUFSource:
    format = "gguf"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files = [self.path]
        self.notes: list[str] = []
        try:
            self._reader = GGUFReader(self.path, "r")
            meta = {k: f.contents() for k, f in self._reader.fields.items()}
        except Exception as e:  # gguf-py raises ValueError/IndexError/struct.error on damaged files
            raise FormatError(f"not a readable GGUF file: {type(e).__name__}: {e}", self.path) from None

        arch = meta.get("general.architecture")
        if arch not in _ARCHITECTURES:
            raise UnsupportedError(f"GGUF architecture {arch!r} is not supported (llama, qwen2)", self.path)
        self._meta, self._arch = meta, arch
        n_head = self._hparam("attention.head_count")
        n_head_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)

        size = self.path.stat().st_size
        self._tensors: dict[str, Any] = {}
        self._infos: list[TensorInfo] = []
        self._row_order: dict[str, np.ndarray] = {}
        for t in self._reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise FormatError(f"tensor {t.name!r} extends past the end of the file", self.path)
            hf = gguf_to_hf(t.name)
            if hf is None:
                if t.name in _DERIVED:
                    self.notes.append(f"GGUF tensor {t.name} (derived by llama.cpp, not an HF weight) skipped")
                    continue
                raise UnsupportedError(f"GGUF tensor {t.name!r} has no HuggingFace {arch} equivalent", self.path)
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            if arch in _PERMUTED_ARCHS and (is_permuted_q(t.name) or is_permuted_k(t.name)):
                heads = n_head if is_permuted_q(t.name) else n_head_kv
                try:
                    self._row_order[hf] = unpermute_rows(shape[0], heads)
                except ValueError as e:
                    raise FormatError(f"tensor {t.name!r}: {e}", self.path) from None
            self._tensors[hf] = t
            self._infos.append(TensorInfo(hf, shape, t.tensor_type.name))

        for qtype in sorted({t.tensor_type for t in self._tensors.values()} - set(_RAW), key=lambda q: q.name):
            self.notes.append(f"{qtype.name} tensors dequantized to F32 (no portable .apr code)")
        self.config = self._synthesize_config()
        if meta.get("tokenizer.ggml.tokens"):
            try:
                self.tokenizer_json, self.tokenizer_config = build_tokenizer(meta, self.notes)
            except UnsupportedError as e:
                raise UnsupportedError(str(e), self.path) from None
        else:
            self.notes.append("GGUF carries no tokenizer")
            self.tokenizer_json, self.tokenizer_config = None, {}

    def _hparam(self, key: str) -> Any:
        value = self._meta.get(f"{self._arch}.{key}")
        if value is None:
            raise FormatError(f"GGUF metadata key {self._arch}.{key} is missing", self.path)
        return value

    def _synthesize_config(self) -> dict[str, Any]:
        """The HF config.json the GGUF was converted from, as far as its keys record it."""
        arch, meta = self._arch, self._meta
        get = lambda key, default=None: _f32_value(meta.get(f"{arch}.{key}", default))  # noqa: E731
        n_head = self._hparam("attention.head_count")
        tokens = meta.get("tokenizer.ggml.tokens") or []
        cfg: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[arch]],
            "model_type": arch,
            "hidden_act": "silu",
            "hidden_size": self._hparam("embedding_length"),
            "intermediate_size": self._hparam("feed_forward_length"),
            "num_hidden_layers": self._hparam("block_count"),
            "num_attention_heads": n_head,
            "num_key_value_heads": get("attention.head_count_kv", n_head),
        }
        if (head_dim := get("attention.key_length")) is not None:
            cfg["head_dim"] = head_dim
        cfg["rms_norm_eps"] = get("attention.layer_norm_rms_epsilon", 1e-6)
        cfg["rope_theta"] = get("rope.freq_base", 10000.0)
        if (ctx := get("context_length")) is not None:
            cfg["max_position_embeddings"] = ctx
        cfg["vocab_size"] = get("vocab_size", len(tokens) or self._infos[0].shape[0])
        cfg["tie_word_embeddings"] = "lm_head.weight" not in self._tensors
        if arch == "llama":
            cfg["attention_bias"] = "model.layers.0.self_attn.q_proj.bias" in self._tensors
            cfg["mlp_bias"] = False
        for name, key in [("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")]:
            if (value := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None:
                cfg[name] = value
        scaling = get("rope.scaling.type")
        if scaling and scaling != "none":
            cfg["rope_scaling"] = {"rope_type": scaling, "factor": get("rope.scaling.factor", 1.0)}
            if (orig := get("rope.scaling.original_context_length")) is not None:
                cfg["rope_scaling"]["original_max_position_embeddings"] = orig
        return cfg

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def _rows(self, name: str, data: np.ndarray) -> np.ndarray:
        order = self._row_order.get(name)
        return np.take(data, order, axis=0) if order is not None else np.array(data)

    def load(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        try:
            values = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise UnsupportedError(f"tensor {t.name!r}: cannot dequantize {t.tensor_type.name}", self.path) from None
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out = self._rows(name, values.reshape(shape)).astype(np.float32, copy=False)
        self._release_pages()
        return out

    def load_raw(self, name: str) -> RawTensor | None:
        t = self._tensors[name]
        dtype = _RAW.get(t.tensor_type)
        if dtype is None:
            return None
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if dtype is DType.BF16:
            data = t.data.view(np.uint16).reshape(shape)
        elif dtype.is_quantized:
            # uint8 blocks, one row of the [out, in] matrix per leading index
            data = t.data.reshape(*shape[:-1], dtype.row_bytes(shape[-1]))
        else:
            data = t.data.reshape(shape)
        out = RawTensor(dtype, self._rows(name, data), shape)  # _rows copies out of the map
        self._release_pages()
        return out

    def _release_pages(self) -> None:
        """Drop the mapped pages read so far from our RSS (they stay in the page cache), so a
        streaming conversion's peak memory follows its largest tensor, not the file size."""
        mm = getattr(getattr(self._reader, "data", None), "_mmap", None)
        if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self._reader = None
        self._tensors = {}
