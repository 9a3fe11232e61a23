"""Every quantization level carries everything the stages need, on its registry entry
(apr_qa.dtypes.QUANT_LEVELS): a codec for its storage type, a GGUF file type, validation tolerances, a
packed kernel, a T9 limit, an encoder minimum cosine and a Q1 target. A level without its limits does
not even import."""

from __future__ import annotations

import dataclasses
import importlib

import gguf
import numpy as np
import pytest

from apr_qa.dtypes import QUANT_LEVELS, DType, QuantLevel
from apr_qa.evaluation import conversion_limits, corpus_gates, encoder_eval
from apr_qa.quant import codec, dequantize, quantize
from apr_qa.runtime.packed import PACKED_DTYPES
from apr_qa.validate import DEFAULT_TOLERANCES


@pytest.mark.parametrize("name", list(QUANT_LEVELS))
def test_every_level_has_all_it_needs(name):
    level = QUANT_LEVELS[name]
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    codec(level.weights)  # its storage type's codec imports
    assert dequantize(level.weights, quantize(level.weights, x), x.shape).shape == x.shape
    assert level.gguf_file_type in gguf.LlamaFileType.__members__
    assert set(DEFAULT_TOLERANCES[level.weights.name]) >= {"kl", "cosine", "rrmse"}
    if level.weights not in (DType.F32, DType.F16, DType.BF16):
        assert level.weights in PACKED_DTYPES  # the runtime multiplies it without dequantizing
    if level.recipe:
        assert callable(importlib.import_module(f"apr_qa.quant.{level.recipe}").promotions)
    limit = conversion_limits.max_mean_kld(name)
    assert limit is not None and 0 < limit < 1
    if name != "f32":  # f32 holds the reference's own values: float rounding only
        assert "published mean KLD" in conversion_limits.basis(name)
    assert 0.9 <= encoder_eval.min_cosine(name) < 1
    assert corpus_gates.quality_target(name) in (corpus_gates.STANDARD_TARGET, corpus_gates.HIGH_ACCURACY_TARGET)
    assert corpus_gates.quality_target(name) == (corpus_gates.HIGH_ACCURACY_TARGET if level.high_accuracy
                                                 else corpus_gates.STANDARD_TARGET)


def test_a_level_without_its_limits_is_refused_at_definition():
    required = {f.name for f in dataclasses.fields(QuantLevel) if f.default is dataclasses.MISSING}
    assert {"t9_anchor", "encoder_min_cosine", "high_accuracy"} <= required
    with pytest.raises(TypeError):
        QuantLevel(DType.Q8_0, 8, True, "MOSTLY_Q8_0")  # type: ignore[call-arg]


def test_an_unknown_level_has_no_silent_default():
    from apr_qa.errors import AprQaError

    with pytest.raises(AprQaError, match="no minimum cosine for quantization level 'q3_x'"):
        encoder_eval.min_cosine("q3_x")
    assert conversion_limits.max_mean_kld("q3_x") is None  # T9 then fails and says so
