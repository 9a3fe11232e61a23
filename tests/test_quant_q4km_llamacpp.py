"""q4_k_m and q6_k against llama.cpp's own Q4_K_M and Q6_K files, tensor by tensor.

Always: the tiny 8-layer llamas of scripts/make_q4km_golden.py (untied and tied; every row whole
256-value super-blocks) converted by `apr-qa convert` and exported by `apr-qa export-gguf` give every
tensor the type and bytes llama.cpp gave it (tests/data/q4km_llamacpp_golden.json); `inspect --json`
shows llama.cpp's Q4_K/Q6_K pattern; validate passes every gate. When llama_cpp is importable: the
same comparison against a fresh llama.cpp run, and the recipe's choice of type for every family with
llama.cpp tensor names (rows not whole super-blocks included, through llama.cpp's fallback types).
"""

from __future__ import annotations

import importlib.util
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

import tiny_falcon
import tiny_gpt2
import tiny_models
import tiny_phi
from apr_qa.cli import main
from apr_qa.convert import convert, stored_dtypes
from apr_qa.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((ROOT / "tests" / "data" / "q4km_llamacpp_golden.json").read_text())
_spec = importlib.util.spec_from_file_location("make_q4km_golden", ROOT / "scripts" / "make_q4km_golden.py")
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


@pytest.fixture(scope="module")
def tiny8(tmp_path_factory):
    """Factory: model name -> (HF folder, work dir) of the golden's tiny llama, built once."""
    built = {}

    def make(model: str):
        if model not in built:
            work = tmp_path_factory.mktemp(f"q4km-{model}")
            built[model] = (script.build_model(work / model, model), work)
        return built[model]

    return make


def _exported(tiny8, model: str, level: str) -> dict[str, dict[str, str]]:
    hf_dir, work = tiny8(model)
    return script.gguf_tensors(script.export(hf_dir, work, level))


def _differences(ours: dict, ref: dict) -> list[str]:
    out = [f"{n}: missing" for n in ref if n not in ours] + [f"{n}: extra" for n in ours if n not in ref]
    out += [f"{n}: ours {ours[n]['type']}, llama.cpp {ref[n]['type']}"
            + ("" if ours[n]["type"] != ref[n]["type"] else " (bytes differ)")
            for n in ref if n in ours and ours[n] != ref[n]]
    return out


@pytest.mark.parametrize("model", sorted(GOLDEN["models"]))
def test_the_tiny_model_is_the_recorded_one(tiny8, model):
    # Otherwise a failure below would be a change of the model (torch, tokenizers), not of a quantizer.
    assert _exported(tiny8, model, "f32") == GOLDEN["models"][model]["f32"], (
        "the tiny llama's f32 weights changed: rerun scripts/make_q4km_golden.py")


@pytest.mark.parametrize("level", sorted(script.LEVELS))
@pytest.mark.parametrize("model", sorted(GOLDEN["models"]))
def test_every_tensor_matches_recorded_llamacpp_type_and_bytes(tiny8, model, level):
    diff = _differences(_exported(tiny8, model, level), GOLDEN["models"][model][level])
    assert not diff, f"{len(diff)} tensors differ from {GOLDEN['llama_cpp']}: {diff[:6]}"


def test_inspect_json_shows_llamacpp_q4_k_m_pattern(tiny8, tmp_path):
    hf_dir, _ = tiny8("untied")
    apr = tmp_path / "m.q4_k_m.apr"
    convert(hf_dir, apr, "q4_k_m")
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["inspect", "--json", str(apr)]) == 0
    report = json.loads(buf.getvalue())
    arch = open_source(hf_dir).arch
    shown = {arch.gguf_name(t["name"]): t["dtype"] for t in report["tensors"]}
    assert shown == {n: t["type"] for n, t in GOLDEN["models"]["untied"]["q4_k_m"].items()}
    assert report["metadata"]["quantization"]["tensor_dtypes"] == {"F32": 17, "Q4_K": 49, "Q6_K": 9}
    # the "use more bits" layers of 8: the first and last eighth, and every third between
    six_bit = sorted(n for n, d in shown.items() if d == "Q6_K")
    assert six_bit == sorted(["output.weight", *(f"blk.{i}.{t}.weight" for i in (0, 3, 6, 7)
                                                 for t in ("attn_v", "ffn_down"))])


@pytest.mark.parametrize("level", sorted(script.LEVELS))
def test_validate_passes_every_gate(tiny8, tmp_path, level):
    hf_dir, _ = tiny8("tied")
    apr = tmp_path / f"m.{level}.apr"
    convert(hf_dir, apr, level)
    evidence = tmp_path / "evidence.json"
    code = main(["validate", str(apr), "--source", str(hf_dir), "--json", str(evidence)])
    failed = {g["id"]: g["message"] for g in json.loads(evidence.read_text())["gates"] if not g["passed"]}
    assert code == 0 and not failed


def test_falcon_q5_k_choices_become_q6_k_and_say_so(tmp_path):
    hf_dir = tiny_falcon.make_tiny_falcon(tmp_path / "falcon", "mqa")
    source = open_source(hf_dir)
    dtypes, notes = stored_dtypes(source.arch, source.tensors(), "q4_k_m")
    # 2 layers: ffn_down of layer 1 is a use-more-bits layer, which llama.cpp gives Q5_K on Falcon
    assert dtypes["transformer.h.1.mlp.dense_4h_to_h.weight"].name == "Q6_K"
    assert dtypes["transformer.h.0.mlp.dense_4h_to_h.weight"].name == "Q4_K"
    assert dtypes["transformer.word_embeddings.weight"].name == "Q8_0"  # tied: it is the output, Q8_0 on Falcon
    assert any("Q5_K" in n and "dense_4h_to_h" in n for n in notes), notes


# --- live llama.cpp --------------------------------------------------------------------------------


def test_live_llamacpp_gives_the_same_bytes(llama_cpp, tiny8):
    for model in GOLDEN["models"]:
        hf_dir, work = tiny8(model)
        f32 = script.export(hf_dir, work, "f32")
        for level, file_type in script.LEVELS.items():
            ref = script.gguf_tensors(script.llamacpp_quantize(f32, work / f"{model}.{level}.live.gguf", file_type))
            diff = _differences(_exported(tiny8, model, level), ref)
            assert not diff, f"{model} {level}: {diff[:6]}"


# Family forms with llama.cpp tensor names (rows of 64: llama.cpp's shape fallbacks show too).
FAMILIES = {
    "qwen2": lambda p: tiny_models.make_tiny_llama(p, model_type="qwen2", use_sliding_window=False),
    "gpt2": tiny_gpt2.make_tiny_gpt2,
    "starcoder": tiny_gpt2.make_tiny_starcoder,
    "phi": tiny_phi.make_tiny_phi,
    "stablelm": lambda p: tiny_phi.make_tiny_stablelm(p, num_kv_heads=2),
    "falcon": lambda p: tiny_falcon.make_tiny_falcon(p, "mqa"),
    "bert": tiny_models.make_tiny_bert,
}
# llama.cpp's type for a row that is not whole blocks of the chosen type; the .apr pads K-quant rows.
LLAMACPP_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}
BLOCK = {"Q4_K": 256, "Q6_K": 256, "Q8_0": 32}


def _llamacpp_type(ours: str, cols: int) -> str:
    if cols % BLOCK.get(ours, 1) == 0:
        return ours
    fallback = LLAMACPP_FALLBACK.get(ours, "F16")
    return fallback if cols % 32 == 0 else "F16"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_recipe_picks_llamacpp_types_for_every_family(llama_cpp, family, tmp_path):
    hf_dir = FAMILIES[family](tmp_path / family)
    f32 = script.export(hf_dir, tmp_path, "f32")
    ref = script.gguf_tensors(script.llamacpp_quantize(f32, tmp_path / "q4km.gguf", "MOSTLY_Q4_K_M"))
    source = open_source(hf_dir)
    dtypes, _ = stored_dtypes(source.arch, source.tensors(), "q4_k_m")
    wrong = {}
    for info in source.tensors():
        name = source.arch.gguf_name(info.name)
        if name in ref:
            want = ref[name]["type"]
            if family == "falcon" and want in ("Q5_K", "Q5_1"):
                want = _llamacpp_type("Q6_K", info.shape[-1])  # apr-qa has no Q5_K: Q6_K (tested above)
            if _llamacpp_type(dtypes[info.name].name, info.shape[-1]) != want:
                wrong[name] = f"ours {dtypes[info.name].name}, llama.cpp {ref[name]['type']}"
    assert not wrong, wrong
