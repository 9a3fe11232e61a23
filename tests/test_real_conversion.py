"""Acceptance on the real models PyPI packages ship: SmolLM2-135M (GGUF, Q4_1) and all-MiniLM-L6-v2.

Every gate passes for f16 and q8_0 of both; q4_0 and q4_k pass at their own tolerances; the f32
variant of the GGUF equals gguf.quants.dequantize of the source bit for bit (Q/K rows un-permuted).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from apr_qa.apr import AprReader
from apr_qa.cli import main

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("real")
    cache = {}

    def make(source, label, quant):
        key = (label, quant)
        if key not in cache:
            out = out_dir / f"{label}-{quant}.apr"
            assert main(["convert", str(source), str(out), "--quant", quant]) == 0
            cache[key] = out
        return cache[key]

    return make


def gates_of(apr, source, tmp_path):
    evidence = tmp_path / "evidence.json"
    code = main(["validate", str(apr), "--source", str(source), "--json", str(evidence)])
    gates = json.loads(evidence.read_text())["gates"]
    return code, {g["id"]: g for g in gates}


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0", "q4_k"])
def test_smollm2_gguf_passes_every_gate(smollm2_gguf, converted, tmp_path, quant):
    code, gates = gates_of(converted(smollm2_gguf, "smollm2", quant), smollm2_gguf, tmp_path)
    assert code == 0, {k: g["message"] for k, g in gates.items() if not g["passed"]}
    assert gates["C6"]["measured"] == 134_515_008
    assert gates["C8"]["details"]["tensors_checked"] == 272


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_0", "q4_k"])
def test_minilm_passes_every_gate(minilm_dir, converted, tmp_path, quant):
    code, gates = gates_of(converted(minilm_dir, "minilm", quant), minilm_dir, tmp_path)
    assert code == 0, {k: g["message"] for k, g in gates.items() if not g["passed"]}
    assert gates["C8"]["details"]["tensors_checked"] == 103  # 104 minus the position_ids buffer


def test_smollm2_f32_equals_gguf_dequantize_bit_for_bit(smollm2_gguf, converted):
    out = converted(smollm2_gguf, "smollm2", "f32")
    reader = GGUFReader(smollm2_gguf)
    n_head = int(reader.fields["llama.attention.head_count"].parts[-1][0])
    n_kv = int(reader.fields["llama.attention.head_count_kv"].parts[-1][0])
    by_name = {t.name: t for t in reader.tensors}

    def reference(gguf_name, heads=None):
        t = by_name[gguf_name]
        w = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        if heads:  # inverse of llama.cpp's LlamaModel.permute, written out independently
            w = w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        return w

    with AprReader(out) as apr:
        assert apr.metadata["quantization"]["level"] == "f32"
        assert any("Q4_1" in note for note in apr.metadata["conversion_notes"])
        checks = {
            "model.embed_tokens.weight": reference("token_embd.weight"),
            "model.layers.3.self_attn.q_proj.weight": reference("blk.3.attn_q.weight", n_head),
            "model.layers.3.self_attn.k_proj.weight": reference("blk.3.attn_k.weight", n_kv),
            "model.layers.3.self_attn.v_proj.weight": reference("blk.3.attn_v.weight"),
            "model.layers.29.mlp.down_proj.weight": reference("blk.29.ffn_down.weight"),
            "model.norm.weight": reference("output_norm.weight"),
        }
        for name, expected in checks.items():
            got = apr.load(name)
            assert got.shape == expected.shape, name
            assert np.array_equal(got.view(np.uint32), expected.astype(np.float32).view(np.uint32)), name
