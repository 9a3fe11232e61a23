"""`apr-qa validate`: every gate passes on good conversions and trips on a planted defect."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from apr_edit import restore_as, rewrite
from apr_qa.apr import AprReader
from apr_qa.cli import main
from apr_qa.dtypes import DType

ALL_GATES = {"C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "V1", "V2", "I-2", "I-3", "I-4"}


def run_validate(apr, source, tmp_path, *extra):
    evidence = tmp_path / f"{apr.stem}.evidence.json"
    code = main(["validate", str(apr), "--source", str(source), "--json", str(evidence), *extra])
    gates = {g["id"]: g for g in json.loads(evidence.read_text())["gates"]}
    return code, gates


@pytest.fixture(scope="module")
def tiny_apr(tiny_llama, tmp_path_factory):
    """Factory: the tiny llama converted at a level (cached per module)."""
    cache = {}

    def make(quant):
        if quant not in cache:
            out = tmp_path_factory.mktemp("apr") / f"tiny-{quant}.apr"
            assert main(["convert", str(tiny_llama), str(out), "--quant", quant]) == 0
            cache[quant] = out
        return cache[quant]

    return make


@pytest.mark.parametrize("quant", ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k"])
def test_all_gates_pass_on_good_conversions(tiny_apr, tiny_llama, tmp_path, quant):
    code, gates = run_validate(tiny_apr(quant), tiny_llama, tmp_path)
    assert set(gates) == ALL_GATES
    failed = {k: g["message"] for k, g in gates.items() if not g["passed"]}
    assert code == 0 and not failed
    assert gates["C8"]["details"]["tensors_checked"] == len(gates["C8"]["details"]["per_tensor"]) > 0


def test_bf16_source_validates_against_its_own_values(tiny_llama_bf16, tmp_path):
    out = tmp_path / "bf.apr"
    assert main(["convert", str(tiny_llama_bf16), str(out), "--quant", "bf16"]) == 0
    code, gates = run_validate(out, tiny_llama_bf16, tmp_path)
    assert code == 0, {k: g["message"] for k, g in gates.items() if not g["passed"]}
    assert gates["C8"]["measured"]["rrmse"] == 0.0  # bf16 -> bf16 is a copy


def test_perturbed_tensor_trips_c8_and_halts(tiny_apr, tiny_llama, tmp_path, capsys):
    name = "model.layers.0.mlp.down_proj.weight"

    def perturb(meta, plan, payloads):
        with AprReader(tiny_apr("f16")) as r:
            values = r.load(name)
        noise = np.random.default_rng(0).standard_normal(values.shape).astype(np.float32) * values.std()
        restore_as(DType.F16, name, values.shape, values + noise, plan, payloads)

    bad = rewrite(tiny_apr("f16"), tmp_path / "bad.apr", perturb)
    code, gates = run_validate(bad, tiny_llama, tmp_path)
    assert code == 3  # halt
    assert not gates["C8"]["passed"] and name in gates["C8"]["details"]["failures"]
    assert gates["C6"]["passed"] and gates["C7"]["passed"]
    err = capsys.readouterr().err
    assert "HALT gate C8" in err and "bad.apr" in err


def test_missing_tensor_trips_c3_i2_c6(tiny_apr, tiny_llama, tmp_path):
    name = "model.layers.1.self_attn.v_proj.weight"

    def drop(meta, plan, payloads):
        plan[:] = [e for e in plan if e.name != name]
        payloads.pop(name)

    code, gates = run_validate(rewrite(tiny_apr("q8_0"), tmp_path / "drop.apr", drop), tiny_llama, tmp_path)
    assert code == 3
    assert not gates["C3"]["passed"] and gates["C3"]["details"]["missing"] == [name]
    assert not gates["I-2"]["passed"] and not gates["C6"]["passed"]


def test_wrong_shape_trips_c7(tiny_apr, tiny_llama, tmp_path):
    name = "model.norm.weight"

    def reshape(meta, plan, payloads):
        with AprReader(tiny_apr("f32")) as r:
            v = r.load(name)
        restore_as(DType.F32, name, (v.size // 2, 2), v.reshape(-1, 2), plan, payloads)

    code, gates = run_validate(rewrite(tiny_apr("f32"), tmp_path / "shape.apr", reshape), tiny_llama, tmp_path)
    assert code == 3 and not gates["C7"]["passed"] and name in gates["C7"]["details"]["mismatched"]


def test_silent_f32_fallback_trips_i3(tiny_apr, tiny_llama, tmp_path):
    name = "model.layers.0.self_attn.q_proj.weight"

    def fallback(meta, plan, payloads):  # the source values, kept in F32 instead of Q4_0
        v = load_file(tiny_llama / "model.safetensors")[name]
        restore_as(DType.F32, name, v.shape, v, plan, payloads)

    code, gates = run_validate(rewrite(tiny_apr("q4_0"), tmp_path / "fb.apr", fallback), tiny_llama, tmp_path)
    assert code == 1 and not gates["I-3"]["passed"] and name in gates["I-3"]["details"]["fallbacks"]


def test_metadata_schema_trips_v2(tiny_apr, tiny_llama, tmp_path):
    def strip(meta, plan, payloads):
        del meta["provenance"]
        meta["hidden_size"] = "64"

    code, gates = run_validate(rewrite(tiny_apr("f16"), tmp_path / "meta.apr", strip), tiny_llama, tmp_path)
    assert code == 1 and not gates["V2"]["passed"] and gates["V2"]["measured"] == 2


def test_bad_magic_trips_c5_and_v1(tiny_apr, tiny_llama, tmp_path):
    bad = tmp_path / "magic.apr"
    data = bytearray(tiny_apr("f16").read_bytes())
    data[0:4] = b"APR!"  # an early prototype's magic: real readers reject it
    bad.write_bytes(bytes(data))
    code, gates = run_validate(bad, tiny_llama, tmp_path)
    assert code == 3 and not gates["C5"]["passed"] and not gates["V1"]["passed"]
    assert gates["C5"]["measured"] == b"APR!".hex()


def test_tolerances_file_overrides_defaults(tiny_apr, tiny_llama, tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text("tolerances:\n  Q4_0: {rrmse: 0.0001}\nlevels:\n  C8: warn\n")
    code, gates = run_validate(tiny_apr("q4_0"), tiny_llama, tmp_path, "--tolerances", str(strict))
    assert not gates["C8"]["passed"] and gates["C8"]["level"] == "warn"
    assert code == 0  # a warning flags, it does not stop


def test_missing_source_reports_c1(tiny_apr, tmp_path):
    code, gates = run_validate(tiny_apr("f16"), tmp_path / "nowhere", tmp_path)
    assert code == 3 and not gates["C1"]["passed"] and "not run" in gates["C8"]["message"]
