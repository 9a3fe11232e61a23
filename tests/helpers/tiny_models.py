"""Deterministic tiny models for tests: a GQA llama decoder, a BERT encoder, and GGUF files made
from the llama the way llama.cpp's convert_hf_to_gguf.py makes them.

Same arguments -> same bytes: fixed torch generator seeds, tokenizers trained on a fixed corpus,
JSON written with sorted keys. Sizes are tiny (hidden 64, 2 layers) so tests stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = """\
The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.
Water boils at 100 degrees Celsius and freezes at 0 degrees. There are 365 days in a year, 24 hours in a day.
def add(a, b):
    return a + b

for i in range(10):
    print(i * i)
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Machine learning models are converted, validated, evaluated and certified before they are released.
Tokenizers split text into pieces; each piece maps to an id in the vocabulary.
Café, naïve, résumé, Zürich, Ελληνικά, русский, 日本語, 中文 and emoji 🙂🚀 are unicode text.
Numbers such as 3.14159, 2718 and 42 appear in text, and so do dates like 2024-01-31.
<|im_start|>user
What is two plus two?<|im_end|>
<|im_start|>assistant
Two plus two is four.<|im_end|>
""".splitlines()

# Text that exercises a tokenizer: ASCII, unicode, emoji, whitespace runs, newlines, code, digits, chat markup.
TOKENIZER_PROMPTS = [
    "The capital of France is",
    "Hello, world! How are you?",
    "Café naïve résumé Zürich Ελληνικά русский 日本語",
    "emoji 🙂🚀 end",
    "   leading and  multiple   spaces\ttab",
    "line one\nline two\n\n\nthree",
    "def add(a, b):\n    return a + b  # 42\n",
    "Numbers 3.14159, 2718 and 2024-01-31",
    "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n",
]


def once(path: Path, build) -> Path:
    """`build(path)` unless a previous test of the session already did (tiny models are shared)."""
    if not path.exists():
        build(path)
    return path


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def train_byte_level_bpe(vocab_size: int = 384):
    """A byte-level BPE shaped like SmolLM2's: specials first, digits split one by one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _seeded_state(model, seed: int) -> dict:
    """Every tensor redrawn from one seeded generator; norms near 1 but not 1, so a norm mapped to
    the wrong place shows."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in model.state_dict().items():
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
        state[name] = 1.0 + 0.1 * noise if "norm" in name.lower() and name.endswith("weight") else 0.08 * noise
    return state


def _save_safetensors(state: dict, folder: Path, shards: int) -> None:
    from safetensors.torch import save_file

    names = list(state)
    if shards <= 1:
        save_file({n: state[n].contiguous() for n in names}, folder / "model.safetensors", metadata={"format": "pt"})
        return
    chunks = np.array_split(np.arange(len(names)), shards)
    weight_map, total = {}, 0
    for i, chunk in enumerate(chunks, 1):
        file = f"model-{i:05d}-of-{shards:05d}.safetensors"
        part = {names[j]: state[names[j]].contiguous() for j in chunk}
        save_file(part, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
        total += sum(t.numel() * t.element_size() for t in part.values())
    write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


LLAMA_FAMILY = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def llama_config(vocab_size: int, num_kv_heads: int = 2, tie_embeddings: bool = False, *, hidden: int = 64,
                 heads: int = 4, head_dim: int = 16, model_type: str = "llama", **extra) -> dict:
    """config.json of the tiny llama-family model, in the plain HF spelling every transformers version reads."""
    return {
        "architectures": [LLAMA_FAMILY[model_type]], "model_type": model_type, "hidden_act": "silu",
        "hidden_size": hidden, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": heads,
        "num_key_value_heads": num_kv_heads, "head_dim": head_dim, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": vocab_size,
        "tie_word_embeddings": tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "initializer_range": 0.02, **extra,
    }


def make_tiny_llama(folder, *, num_kv_heads: int = 2, tie_embeddings: bool = False, shards: int = 1,
                    dtype=None, seed: int = 0, **config) -> Path:
    """HF LlamaForCausalLM folder: hidden 64, 2 layers, 4 heads (GQA with `num_kv_heads`). `config`
    overrides llama_config's keywords (hidden, heads, head_dim, model_type for Mistral/Qwen2, or any
    config.json key such as rope_scaling or sliding_window)."""
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = dtype or torch.float32
    tok = train_byte_level_bpe()
    cfg = llama_config(tok.get_vocab_size(), num_kv_heads, tie_embeddings, **config)
    torch.manual_seed(seed)
    hf_model = getattr(transformers, cfg["architectures"][0])(transformers.AutoConfig.for_model(**cfg))
    state = _seeded_state(hf_model, seed)
    if tie_embeddings:
        state.pop("lm_head.weight")  # HF checkpoints of tied models do not store it
    _save_safetensors({n: t.to(dtype) for n, t in state.items()}, folder, shards)
    write_json(folder / "config.json", {**cfg, "torch_dtype": str(dtype).removeprefix("torch.")})
    tok.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "add_bos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": 256, "chat_template": CHAT_TEMPLATE,
    })
    return folder


def wordpiece_tokenizer():
    """A lower-casing BERT WordPiece tokenizer whose vocabulary is chosen by counting, not by a
    trainer (the tokenizers WordPiece trainer breaks ties in hash order): specials, every corpus
    character alone and as "##" continuation, then the most frequent words."""
    import collections
    import re

    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    words = collections.Counter(
        w for line in CORPUS for w in re.findall(r"\w+|[^\w\s]", normalizer.normalize_str(line))
    )
    chars = sorted({c for w in words for c in w})
    frequent = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:80]
    tokens = [*specials, *chars, *("##" + c for c in chars), *frequent]
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]", pair="[CLS] $A:0 [SEP] $B:1 [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(specials)
    return tok


def make_tiny_bert(folder, *, seed: int = 0) -> Path:
    """HF BertModel folder (the all-MiniLM layout: no "bert." prefix, with pooler) + WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = wordpiece_tokenizer()
    cfg = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": tok.get_vocab_size(),
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "hidden_act": "gelu", "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "pad_token_id": 0,
        "position_embedding_type": "absolute", "initializer_range": 0.02,
    }
    torch.manual_seed(seed)
    state = {n: t for n, t in _seeded_state(BertModel(BertConfig(**cfg)), seed).items()
             if not n.endswith("position_ids")}
    _save_safetensors(state, folder, 1)
    write_json(folder / "config.json", cfg)
    tok.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": True, "unk_token": "[UNK]",
        "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
        "model_max_length": 64,
    })
    return folder


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (Q and K rows interleaved for GGML RoPE)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_bpe_tokenizer(writer, hf_dir, pre: str = "smollm") -> None:
    """The tokenizer.ggml.* keys of an HF byte-level BPE folder, as convert_hf_to_gguf.py's
    _set_vocab_gpt2 + gguf.SpecialVocab write them: tokens (added tokens CONTROL when special,
    else USER_DEFINED), types, merges, the special ids tokenizer_config.json names, add_bos_token
    and the chat template when present. `pre`: llama.cpp's name for the pre-tokenizer ("smollm" =
    digits isolated, then the GPT-2 split; "gpt-2" = the GPT-2 split alone)."""
    import gguf

    hf_dir = Path(hf_dir)
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    vocab = {i: t for t, i in tok["model"]["vocab"].items()}
    types = dict.fromkeys(vocab, gguf.TokenType.NORMAL)
    for added in tok["added_tokens"]:
        vocab[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    ids = range(len(vocab))
    token_id = {t: i for i, t in vocab.items()}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([vocab[i] for i in ids])
    writer.add_token_types([types[i] for i in ids])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("unk_token", writer.add_unk_token_id), ("pad_token", writer.add_pad_token_id)):
        if (token := tok_cfg.get(key)) is not None:
            add(token_id[token if isinstance(token, str) else token["content"]])
    writer.add_add_bos_token(bool(tok_cfg.get("add_bos_token", False)))
    if tok_cfg.get("chat_template"):
        writer.add_chat_template(tok_cfg["chat_template"])


def make_tiny_gguf(hf_dir, out_path, *, qtype: str = "F32") -> Path:
    """A llama (or Qwen2) GGUF of the HF folder written the way convert_hf_to_gguf.py writes it: GGUF
    names, llama's Q/K permuted (LlamaModel; Qwen2Model leaves them), GGML dims, tokenizer.ggml.* keys
    with merges and chat template. 1-D tensors stay F32; 2-D ones are stored as `qtype` (F32, F16,
    BF16, Q8_0, Q4_0, Q4_1)."""
    import gguf
    from safetensors.torch import load_file

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    state = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        state.update({n: t.float().numpy() for n, t in load_file(f).items()})

    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    arch = gguf.MODEL_ARCH.QWEN2 if cfg["model_type"] == "qwen2" else gguf.MODEL_ARCH.LLAMA  # Mistral is llama
    names = gguf.TensorNameMap(arch, cfg["num_hidden_layers"])  # as convert_hf_to_gguf.py maps
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name("tiny-llama")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    if cfg.get("head_dim"):
        writer.add_key_length(cfg["head_dim"])
        writer.add_value_length(cfg["head_dim"])
    writer.add_vocab_size(cfg["vocab_size"])

    add_bpe_tokenizer(writer, hf_dir)
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("rope_type") == "llama3":  # LlamaModel.generate_extra_tensors
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))

    qt = gguf.GGMLQuantizationType[qtype]
    for name, w in state.items():
        if arch == gguf.MODEL_ARCH.LLAMA and name.endswith(("q_proj.weight", "q_proj.bias")):
            w = permute(w, heads, heads)
        elif arch == gguf.MODEL_ARCH.LLAMA and name.endswith(("k_proj.weight", "k_proj.bias")):
            w = permute(w, heads, kv)
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if w.ndim == 1 or qt == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gname, np.ascontiguousarray(w, dtype=np.float32))
        elif qt == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gname, w.astype(np.float16))
        else:
            writer.add_tensor(gname, gguf.quants.quantize(w, qt), raw_dtype=qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def llama3_rope_factors(cfg: dict) -> np.ndarray:
    """The divisor of each rotary frequency under llama3 scaling, as convert_hf_to_gguf.py computes it."""
    import math

    scaling, dim = cfg["rope_scaling"], cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = 1.0 / (cfg["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def make_tiny_spm_gguf(out_path, *, with_merges: bool = True) -> Path:
    """A llama GGUF whose tokenizer is SentencePiece-style (tokenizer.ggml.model "llama"): <unk> <s>
    </s>, 256 <0xXX> byte tokens, then BPE pieces with "▁" for spaces, scored by rank; merges are
    stored or left for the reader to derive from the scores. Weights: a 1-layer placeholder."""
    import gguf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    trained = json.loads(bpe.to_str())["model"]
    pieces = sorted(trained["vocab"], key=trained["vocab"].get)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
             *[gguf.TokenType.BYTE] * 256, *[gguf.TokenType.NORMAL] * len(pieces)]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]

    w = gguf.GGUFWriter(out_path, "llama")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    if with_merges:
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in trained["merges"]])
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out_path)
