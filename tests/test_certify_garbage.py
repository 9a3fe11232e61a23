"""G4 garbage detection on real-looking good text and on crafted garbage."""

from __future__ import annotations

import math

import pytest

from apr_qa.certify.garbage import check_text, check_values, entropy_bits, repetition

GOOD = [
    "Paris",
    " 4",
    "5, 6, 7, 8, 9, 10",
    "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre museum and its cafés.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make "
    "glucose and oxygen. It takes place mainly in the chloroplasts of leaf cells.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5",
    "1. apple\n2. banana\n3. cherry",
    "Les chats dorment beaucoup : environ quinze heures par jour, parfois plus.",
    "東京は日本の首都です。人口は約1400万人です。",
    "Use the file at src/apr_qa/cli.py and/or the README.",
]


@pytest.mark.parametrize("text", GOOD)
def test_good_text_is_not_garbage(text):
    verdict = check_text(text)
    assert not verdict.garbage, verdict.reasons


@pytest.mark.parametrize("text,reason", [
    ("the the the the the the the the the the the the", "repetition"),
    ("I am a robot. I am a robot. I am a robot. I am a robot. I am a robot.", "repetition"),
    ("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", "unique characters"),
    ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "entropy"),
    ("olumbia+lsi nunca/localENTS", "malformed"),
    ("olumbia+lsi nunca/localENTS Kathryn.scalablytyped rapportavelmente+HANDLEr ;;\\ ambos|sequelize", "malformed"),
    ("hello \x00\x01 world of text", "non-printable"),
    ("decoded badly: caf\ufffd and na\ufffdve", "non-printable"),
    ("nan nan nan nan nan nan nan nan", "repetition"),
    ("", "empty"),
    ("   \n  ", "empty"),
])
def test_garbage_is_caught(text, reason):
    verdict = check_text(text)
    assert verdict.garbage
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_repetition_definition():
    # words a b c a b c a b: trigrams abc bca cab abc bca cab -> 3 distinct of 6 -> 1 - 3/6 = 0.5
    assert repetition("a b c a b c a b") == pytest.approx(0.5)
    # fewer than 4 trigrams (< 6 words) is not judged
    assert repetition("a a a a a") == 0.0
    # entropy of "aabb" = 1 bit; of "abcd" = 2 bits
    assert entropy_bits("aabb") == pytest.approx(1.0)
    assert entropy_bits("abcd") == pytest.approx(2.0)


def test_non_finite_values():
    assert not check_values([0.1, -0.2, 3.0]).garbage
    v = check_values([0.1, math.nan, math.inf, -math.inf])
    assert v.garbage and v.metrics["nan"] == 1 and v.metrics["inf"] == 2
    assert check_values([]).garbage
