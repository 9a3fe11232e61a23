"""BERT-family GGUF files written the way llama.cpp's convert_hf_to_gguf.py writes them.

`BertModel` (and `DistilBertModel`, which the converter also writes as MODEL_ARCH.BERT) as
conversion/bert.py and conversion/base.py do it:
- tensors: "bert."/"distilbert." prefixes stripped, LayerNorm gamma/beta renamed, position_ids,
  the pooler and the MLM heads (cls.*, vocab_*) dropped, names from gguf-py's TensorNameMap, GGML
  dims; 1-D tensors, norms, position_embd and token_types in F32, other matrices in the out type;
- metadata: TextModel.set_gguf_parameters (block/context/embedding/feed-forward/head counts, layer
  norm eps; DistilBERT's fixed 1e-12), causal_attention False, pooling_type from a
  sentence-transformers Pooling module;
- vocabulary: get_vocab_base (AutoTokenizer, added tokens CONTROL when special), the "phantom
  space" rewrite ("##x" -> "x", word starts "x" -> "▁x", CONTROL unchanged), token_type_count and
  gguf.SpecialVocab's special ids and add_*_token flags.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

import numpy as np

# get_vocab_base_pre's hash of BERT WordPiece tokenizers (bge-small-en-v1.5, jina-v2-en, all-MiniLM);
# the later "jina-v2-en" line of the converter's table is the one that wins.
_BERT_CHKHSH = "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f"
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
FTYPES = {"F32": 0, "F16": 1, "Q8_0": 7}  # gguf.LlamaFileType


def tokenizer_pre(tokenizer) -> str:
    """get_vocab_base_pre for WordPiece vocabularies. The converter refuses a hash it does not know
    (a tiny test vocabulary has its own); llama.cpp's WPM tokenizer ignores `pre`, so "default"."""
    return "jina-v2-en" if sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest() == _BERT_CHKHSH else "default"


def add_wordpiece_vocab(writer, hf_dir, vocab_size: int, type_vocab_size: int = 1) -> None:
    """BertModel.set_vocab: get_vocab_base, the phantom-space rewrite, SpecialVocab."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    reverse = {i: t for t, i in tokenizer.vocab.items()}
    added, decoder = tokenizer.get_added_vocab(), tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if decoder[i].special:
                types.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)

    def phantom(tok: str, toktype: int) -> str:
        if toktype == gguf.TokenType.CONTROL:
            return tok
        return tok[2:] if tok.startswith("##") else "\u2581" + tok

    writer.add_token_type_count(type_vocab_size)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre(tokenizer_pre(tokenizer))
    writer.add_token_list([phantom(t, ty) for t, ty in zip(tokens, types, strict=True)])
    writer.add_token_types(types)
    gguf.SpecialVocab(hf_dir, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


def _pooling_type(hf_dir: Path):
    """BertModel._try_set_pooling_type: the Pooling module named by modules.json, if any."""
    import gguf

    modules = hf_dir / "modules.json"
    if not modules.is_file():
        return None
    path = next((m["path"] for m in json.loads(modules.read_text()) if m["type"].endswith("models.Pooling")), None)
    if path is None:
        return None
    pooling = json.loads((hf_dir / path / "config.json").read_text())
    for key, kind in (("pooling_mode_mean_tokens", gguf.PoolingType.MEAN),
                      ("pooling_mode_cls_token", gguf.PoolingType.CLS),
                      ("pooling_mode_lasttoken", gguf.PoolingType.LAST)):
        if pooling.get(key):
            return kind
    raise NotImplementedError("Only MEAN, CLS, and LAST pooling types supported")


def _kept(name: str) -> str | None:
    """BertModel/DistilBertModel.filter_tensors: the name the converter maps, None if dropped."""
    for prefix in ("bert.", "distilbert."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.startswith("vocab_"):  # DistilBERT's MLM head
        return None
    if name.endswith(".gamma"):
        name = name[:-6] + ".weight"
    if name.endswith(".beta"):
        name = name[:-5] + ".bias"
    if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
        return None
    if name.startswith(("cls.predictions", "cls.seq_relationship")):
        return None
    return name


def make_bert_gguf(hf_dir, out_path, *, outtype: str = "F32") -> Path:
    """A GGUF of an HF BertModel/BertForMaskedLM/DistilBertModel folder (outtype F32, F16 or Q8_0)."""
    import gguf
    from safetensors.numpy import load_file

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    distil = cfg["model_type"] == "distilbert"
    layers = cfg["n_layers" if distil else "num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, layers)
    writer = gguf.GGUFWriter(out_path, "bert")

    # prepare_tensors
    out_qtype = gguf.GGMLQuantizationType[outtype]
    always_f32 = {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD] + ".weight",
                  gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_TYPES] + ".weight"}
    state = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        state.update(load_file(f))
    for name, data in state.items():
        if (kept := _kept(name)) is None:
            continue
        new_name = names.get_name(kept, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"Can not map tensor {kept!r}")
        data = data.astype(np.float32)
        f32 = data.ndim <= 1 or new_name.endswith("_norm.weight") or new_name in always_f32
        qtype = gguf.GGMLQuantizationType.F32 if f32 else out_qtype
        writer.add_tensor(new_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    # prepare_metadata: general.*, set_gguf_parameters
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(hf_dir.name)
    if distil:
        writer.add_layer_norm_eps(1e-12)
    writer.add_block_count(layers)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["dim" if distil else "hidden_size"])
    writer.add_feed_forward_length(cfg["hidden_dim" if distil else "intermediate_size"])
    writer.add_head_count(cfg["n_heads" if distil else "num_attention_heads"])
    if not distil and "layer_norm_eps" in cfg:
        writer.add_layer_norm_eps(cfg["layer_norm_eps"])
    writer.add_file_type(FTYPES[outtype])
    writer.add_causal_attention(False)
    if (pooling := _pooling_type(hf_dir)) is not None:
        writer.add_pooling_type(pooling)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # set_vocab
    add_wordpiece_vocab(writer, hf_dir, cfg["vocab_size"], cfg.get("type_vocab_size", 1))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
