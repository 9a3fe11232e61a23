"""Token F1 (SQuAD's definition) on hand-computed cases, the leading-span rule, and F1 in the run records
and the accuracy summary."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from apr_qa.evaluation import f1, protocol


@pytest.mark.parametrize("text, normalized", [
    ("The Cat, sat!", "cat sat"),
    ("An apple a day", "apple day"),            # articles go as words only: "day" keeps its "a"
    ("  Hello,\n World!  The end. ", "hello world end"),
    ("1,000,000", "1000000"),                   # punctuation is deleted, not replaced by a space
    ("return a + b", "return b"),               # "a" is an article to SQuAD, also in code
    ("theatre thee", "theatre thee"),
])
def test_normalize_is_squads(text, normalized):
    assert f1.normalize(text) == normalized


@pytest.mark.parametrize("generated, reference, expected", [
    ("Paris", "Paris", 1.0),
    ("paris.", "Paris", 1.0),
    ("the city of Paris", "Paris", 0.5),              # P 1/3, R 1: 2 (1/3) / (4/3)
    ("Paris France", "Paris, the capital of France", 2 / 3),  # P 1, R 2/4
    ("x x y", "x y y", 2 / 3),                        # multisets: one x and one y in common, P = R = 2/3
    ("London", "Paris", 0.0),
    ("", "", 1.0),                                    # both empty: SQuAD scores 1
    ("the", "Paris", 0.0),                            # nothing left of the generation
])
def test_f1_hand_computed(generated, reference, expected):
    assert f1.f1(generated, reference) == pytest.approx(expected)


@pytest.mark.parametrize("generated, reference, expected", [
    # the run-on after the answer does not count: the best leading span is the answer itself
    ("Paris. It is the largest city in France and its capital.", "Paris", 1.0),
    # ["b", "12", "question", "what"]: k=1 0, k=2 P 1/2 R 1 -> 2/3, k=3 P 1/3 -> 1/2, k=4 -> 2/5
    (" B) 12\nQuestion: What", "12", 2 / 3),
    # a lead-in costs precision: ["answer", "is", "c", "mitochondria"], k=4: P 1/4, R 1 -> 2/5
    ("The answer is C) Mitochondria", "Mitochondria", 0.4),
    # code: ["return", "b", "def", "f"] vs ["return", "b"]
    ("\n    return a + b\n\ndef f", "return a + b", 1.0),
    ("    return b + a", "return a + b", 1.0),    # a bag of words: order is exact match's to judge
    # multi-token reference, answered in part: ["red", "blue", "green"] vs ["red", "blue", "yellow"]:
    # k=2 P 1, R 2/3 -> 0.8 beats k=3's P = R = 2/3 (a prefix that stops before a wrong token scores higher)
    ("\nRed\nBlue\nGreen\n", "red\nblue\nyellow", 0.8),
    # an answer beyond len(reference) + LEAD_SLACK = 6 tokens scores 0
    ("one two three four five six Paris", "Paris", 0.0),
    ("", "Paris", 0.0),
])
def test_leading_f1(generated, reference, expected):
    assert f1.leading_f1(generated, reference) == pytest.approx(expected)


def test_leading_f1_span_limit():
    text = "one two three four five six seven Paris"  # "paris" is the 8th token
    assert f1.leading_f1(text, "Paris") == 0.0
    assert f1.leading_f1(text, "Paris", slack=7) == pytest.approx(2 / 9)  # k=8: P 1/8, R 1
    # the best span, not the longest: ["paris", "is", "capital"] vs ["paris"] peaks at k=1
    assert f1.leading_f1("Paris is the capital", "Paris") == 1.0
    assert f1.LEAD_SLACK == 5 and "len(reference) + 5" in f1.DEFINITION


def _prompt(pid: str, category: str, pattern: str, reference_answer: str | None):
    from apr_qa.evaluation.prompts import Prompt

    return Prompt(id=pid, input="q", category=category, expected_pattern=pattern, reference_answer=reference_answer)


def test_run_records_carry_f1_and_the_summary_its_mean_and_interval():
    with_ref = _prompt("p", "sanity", "Paris", "Paris")
    without = _prompt("q", "format", "x", None)
    records = [protocol.run_record(with_ref, 0, 42, "Paris is big", "length", 3, 4),
               protocol.run_record(with_ref, 1, 43, "the city of Paris", "length", 3, 4),
               protocol.run_record(with_ref, 2, 44, "London", "length", 3, 1),
               protocol.run_record(without, 0, 42, "x", "eos", 3, 1)]
    assert [r["f1"] for r in records] == [1.0, 0.5, 0.0, None]
    assert [r["matched"] for r in records] == [True, True, False, True]
    acc = protocol.accuracy(records)
    assert acc["overall"]["successes"] == 3 and acc["overall"]["n"] == 4  # exact match over every run
    summary = acc["f1"]
    assert summary["n"] == 3 and summary["mean"] == pytest.approx(0.5)  # over the runs with a reference answer
    # Student-t: 0.5 +- t(2, 0.975) * 0.5 / sqrt(3) = 0.5 +- 4.303 * 0.2887 -> clipped to [0, 1]
    assert summary["ci95"] == [0.0, 1.0]
    assert list(summary["by_category"]) == ["sanity"]
    assert protocol.accuracy([records[3]])["f1"] is None


def test_run_generation_scores_each_run(monkeypatch):
    """run_generation's records get F1 from the generated text, through run_record."""
    from apr_qa.evaluation.prompts import GoldenSet

    texts = iter(["Paris, of course", " Rome", "Paris"] * 2)

    class Model:
        def generate(self, prompts, n, **kw):
            text = next(texts) if n > 2 else ""
            return [SimpleNamespace(text=text, finish_reason="length", prompt_ids=[1, 2], token_ids=[3, 4],
                                    total_time_s=0.1, time_to_first_token_s=0.01, decode_tokens_per_s=10.0)]

    golden = GoldenSet(path=None, sha256="x", version="t", metadata={},  # type: ignore[arg-type]
                       prompts=[_prompt("a", "sanity", "Paris", "Paris")])
    out = protocol.run_generation(Model(), golden, protocol.EvalOptions(runs=3))
    assert [r["f1"] for r in out["records"]] == [1.0, 0.0, 1.0]
    assert out["accuracy"]["f1"]["mean"] == pytest.approx(2 / 3)
