"""What a model family declares, in one place, for every stage that handles its weights.

A family is a subclass of `Architecture` in its own module of this package. It states:
- which HF `architectures` names / `model_type`s and which GGUF architecture it serves;
- `hyperparams`: the HF config.json normalised into `Hyperparams`, the only config the rest of
  the code reads;
- `tensors`: the canonical tensor table (HF names, linear weights [out, in] as nn.Linear stores
  them) with the shape each must have; gate G0 and the runtime check against it;
- transforms on the way in (`to_canonical`, e.g. GPT-2's Conv1D [in, out] transpose) and the GGUF
  row order llama.cpp's converter applied (`gguf_row_order`, e.g. llama's Q/K permutation);
- which matrices are never block-quantized (llama.cpp's `llama-quant.cpp` rules, through the GGUF
  tensor names of gguf-py's `TensorNameMap`);
- `config_from_gguf`: the HF config.json a GGUF file's metadata stands for;
- `build`: the runtime model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import FormatError, UnsupportedError

if TYPE_CHECKING:
    import gguf
    import torch

# Rotary scalings the runtime reproduces (transformers' modeling_rope_utils formulas).
# "freq_factors" is llama3 scaling as a GGUF carries it: llama.cpp's per-frequency divisors.
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "freq_factors")

# Activation functions the runtime implements (runtime.activations.ACTIVATIONS; a test keeps them equal).
ACTIVATION_NAMES = ("silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu")

# Layer counts past this are refused before a family builds per-layer tables (real models have < 200).
MAX_LAYERS = 4096
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")

# Names of llama.cpp's GGUF tensors (gguf-py constants) that llama-quant.cpp never block-quantizes
# besides 1-D tensors and norms: learned position embeddings and BERT's token types.
GGUF_NEVER_QUANTIZED = ("position_embd.weight", "token_types.weight")


@dataclass(frozen=True)
class Hyperparams:
    """The hyperparameters every stage reads, whatever the family calls them in config.json."""

    kind: str                      # "decoder" (text generation) | "encoder" (embeddings)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int              # == num_heads: multi-head; 1: multi-query; between: grouped
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    norm: str = "rms"              # "rms" | "layer" | "none" (MobileBERT's NoNorm: x * w + b)
    norm_eps: float = 1e-6
    activation: str = "silu"       # key of runtime.activations.ACTIVATIONS
    gated_mlp: bool = True         # act(gate(x)) * up(x) (SwiGLU) rather than act(up(x))
    positions: str = "rope"        # "rope" | "learned" | "alibi"
    rotary_dims: int = 0           # dims of each head that rotate (< head_dim: partial rotary)
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] = field(default_factory=dict)  # rope_type, factor, ... ({}: none)
    parallel_residual: bool = False  # x + attn(norm(x)) + mlp(norm'(x)) instead of two residual steps
    attention_bias: bool = False
    mlp_bias: bool = False
    tied_embeddings: bool = False
    sliding_windows: tuple[int | None, ...] = ()  # per layer, None = full attention; () = all full

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "vocab_size",
                     "intermediate_size", "max_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.num_layers > MAX_LAYERS:
            raise ValueError(f"num_layers {self.num_layers} is over the limit of {MAX_LAYERS}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_heads} attention heads do not split into {self.num_kv_heads} KV heads")
        if self.activation not in ACTIVATION_NAMES:
            raise UnsupportedError(f"activation {self.activation!r} is not supported ({', '.join(ACTIVATION_NAMES)})")

    @property
    def attention(self) -> str:
        if self.num_kv_heads == self.num_heads:
            return "multi-head"
        return "multi-query" if self.num_kv_heads == 1 else "grouped-query"


def require(config: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` that config.json defines (families spell the same thing differently)."""
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    raise FormatError(f"config.json lacks {' / '.join(keys)}")


class Architecture:
    """One model family. Subclasses set the class attributes and override what differs."""

    hf_names: ClassVar[tuple[str, ...]] = ()    # config["architectures"][0] values served
    model_types: ClassVar[tuple[str, ...]] = ()  # config["model_type"] values served
    gguf_arch: ClassVar[str | None] = None       # gguf.MODEL_ARCH member name (None: llama.cpp lacks it)
    kind: ClassVar[str] = "decoder"
    family: ClassVar[str] = ""                   # short display name, e.g. "GPT-2"

    def __init__(self, config: dict[str, Any], path: Any = None):
        self.config = config
        self.path = path
        try:
            for key in LAYER_COUNT_KEYS:  # before any family code sizes a table or a loop by it
                if isinstance(config.get(key), int) and config[key] > MAX_LAYERS:
                    raise FormatError(f"config.json {key} {config[key]} is over the limit of {MAX_LAYERS}")
            self.hp = self.hyperparams(config)
            self.tensors()  # some keys are read only here (embedding sizes, groups): a bad one fails now
        except (FormatError, UnsupportedError) as exc:
            raise type(exc)(str(exc), path) from None
        except (LookupError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:  # a value of a wrong type
            raise FormatError(f"config.json does not describe a valid {self.family} model: {exc}", path) from None

    # --- config -------------------------------------------------------------------------------
    @classmethod
    def hyperparams(cls, config: dict[str, Any]) -> Hyperparams:
        raise NotImplementedError

    # --- tensors ------------------------------------------------------------------------------
    def tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the model needs: canonical name -> canonical shape."""
        raise NotImplementedError

    def optional(self, name: str) -> bool:
        """A tensor checkpoints may carry that the runtime does not read (kept, not checked)."""
        return False

    def dropped(self, name: str) -> bool:
        """A stored non-parameter (attention-mask buffers and the like): not converted."""
        return False

    def rename(self, name: str) -> str:
        """The canonical name of a checkpoint tensor (identity unless a family has legacy spellings)."""
        return name

    def to_canonical(self, name: str, array: np.ndarray) -> np.ndarray:
        """A checkpoint tensor in canonical layout (identity unless the family stores otherwise)."""
        return array

    def canonical_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def keep_unquantized(self, name: str) -> bool:
        """Matrices stored in float at block-quantized levels. llama-quant.cpp's rule, through the
        tensor's GGUF name: position embeddings and token types. Families without a GGUF
        architecture override this with their own equivalents."""
        gguf_name = self.gguf_name(name)
        return gguf_name is not None and (gguf_name in GGUF_NEVER_QUANTIZED or gguf_name.endswith("_norm.weight"))

    # --- GGUF ---------------------------------------------------------------------------------
    @classmethod
    def gguf_name_of_arch(cls) -> str | None:
        """The `general.architecture` string llama.cpp writes for this family ("llama", "phi2"...)."""
        import gguf

        return gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[cls.gguf_arch]] if cls.gguf_arch else None

    @cached_property
    def _name_map(self) -> gguf.TensorNameMap | None:
        import gguf

        if self.gguf_arch is None:
            return None
        return gguf.TensorNameMap(gguf.MODEL_ARCH[self.gguf_arch], self.hp.num_layers)

    def gguf_name(self, name: str) -> str | None:
        """llama.cpp's name for a canonical tensor (gguf-py's TensorNameMap), None if it has none."""
        if self._name_map is None:
            return None
        return self._name_map.get_name(name, try_suffixes=(".weight", ".bias"))

    def gguf_to_canonical_names(self) -> dict[str, str]:
        """GGUF tensor name -> canonical name, for every tensor this model has."""
        out = {}
        for name in self.tensors():
            gguf_name = self.gguf_name(name)
            if gguf_name is None:
                raise UnsupportedError(f"tensor {name} has no GGUF {self.gguf_arch} name", self.path)
            out[gguf_name] = name
        return out

    def gguf_row_order(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """Row permutation llama.cpp's converter applied: canonical row r sits at GGUF row order[r].
        Rows move whole, so quantized blocks are reordered unchanged. None: rows as they are."""
        return None

    @classmethod
    def config_from_gguf(cls, meta: dict[str, Any], tensor_names: set[str]) -> dict[str, Any]:
        """The HF config.json that a GGUF file's `{arch}.*` metadata records."""
        raise UnsupportedError(f"{cls.family} models cannot be read from GGUF")

    # --- GGUF export (the inverse of config_from_gguf) -----------------------------------------
    def write_gguf_metadata(self, writer: gguf.GGUFWriter) -> list[str]:
        """Write the `{arch}.*` keys llama.cpp's convert_hf_to_gguf.py writes for this family; return
        what llama.cpp will not reproduce. UnsupportedError for forms llama.cpp cannot run."""
        raise UnsupportedError(f"{self.family} has no llama.cpp GGUF architecture", self.path)

    def gguf_extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors llama.cpp's converter derives from the config (GGUF name -> float32 values)."""
        return {}

    # --- runtime ------------------------------------------------------------------------------
    def build(self, source: Any, device: torch.device, dtype: torch.dtype) -> Any:
        raise NotImplementedError

    # --- derived --------------------------------------------------------------------------------
    def param_count(self) -> int:
        return sum(math.prod(s) for s in self.tensors().values())


def gguf_hparams(meta: dict[str, Any], arch: str):
    """`get(key, default)` over a GGUF's `{arch}.key` metadata, floats given back as the shortest
    decimal (GGUF stores float32: 1e-05, not 9.99e-06); `need(key)` raises when it is absent."""

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        return float(str(np.float32(value))) if isinstance(value, float) else value

    def need(key: str) -> Any:
        value = get(key)
        if value is None:
            raise FormatError(f"GGUF metadata key {arch}.{key} is missing")
        return value

    return get, need


def gguf_special_tokens(meta: dict[str, Any]) -> dict[str, int]:
    """bos/eos/pad token ids as config.json spells them."""
    out = {}
    for name, key in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        if (value := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None:
            out[name] = int(value)
    return out


def interleaved_rows(n_rows: int, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` as a row order: within each head, the two rotary halves are
    interleaved (GGML's RoPE rotates adjacent pairs, HF's rotates halves)."""
    if n_head <= 0 or n_rows % (2 * n_head):
        raise FormatError(f"{n_rows} rows cannot be split into {n_head} heads of rotary pairs")
    return np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).swapaxes(1, 2).reshape(-1)


def rope_config(config: dict[str, Any], default_theta: float = 10000.0) -> tuple[float, dict[str, Any]]:
    """(rope_theta, scaling parameters with rope_type; {} when unscaled) from either spelling:
    transformers >= 5 writes `rope_parameters` (theta inside), older configs `rope_theta` plus
    `rope_scaling`."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", None) or config.get("rope_theta") or default_theta)
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("partial_rotary_factor", None)
    if kind not in ROPE_TYPES:
        raise UnsupportedError(f"rope_type {kind!r} is not supported ({', '.join(ROPE_TYPES)})")
    return theta, ({} if kind == "default" else {"rope_type": kind, **params})


def partial_rotary_factor(config: dict[str, Any], default: float = 1.0) -> float:
    params = config.get("rope_parameters") or {}
    return float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", default)))


def write_gguf_basics(writer: gguf.GGUFWriter, hp: Hyperparams, kv_heads: bool = True) -> None:
    """The keys convert_hf_to_gguf.py's TextModel.set_gguf_parameters writes for every family, from the
    normalised hyperparameters (so the true values even where a family's converter hard-codes one,
    e.g. Falcon's context 2048 or GPT-2's 4 * n_embd feed-forward): counts, lengths, the norm epsilon
    under its RMS or LayerNorm key, and the rotary base (which llama.cpp reads for every architecture)."""
    writer.add_block_count(hp.num_layers)
    writer.add_context_length(hp.max_positions)
    writer.add_embedding_length(hp.hidden_size)
    writer.add_feed_forward_length(hp.intermediate_size)
    writer.add_head_count(hp.num_heads)
    if kv_heads:
        writer.add_head_count_kv(hp.num_kv_heads)
    if hp.norm == "rms":
        writer.add_layer_norm_rms_eps(hp.norm_eps)
    else:
        writer.add_layer_norm_eps(hp.norm_eps)
    if hp.positions == "rope":
        writer.add_rope_freq_base(hp.rope_theta)


def write_gguf_rope_scaling(writer: gguf.GGUFWriter, hp: Hyperparams, family: str) -> None:
    """Linear scaling as TextModel writes it; other scalings have no llama.cpp key (llama3's factors
    travel as a tensor, see Llama) and are refused rather than silently dropped."""
    import gguf

    kind = hp.rope_scaling.get("rope_type")
    if kind is None:
        return
    if kind != "linear":
        raise UnsupportedError(f"{family} with rope_type {kind!r} cannot be exported: llama.cpp's graph has no "
                               "such scaling")
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(float(hp.rope_scaling["factor"]))
