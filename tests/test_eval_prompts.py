"""Golden prompt file: the shipped file is valid and complete; bad entries give one clear line."""

from pathlib import Path

import pytest

from apr_qa.errors import FormatError
from apr_qa.evaluation.prompts import load_golden
from apr_qa.fsutil import sha256_file

GOLDEN = Path(__file__).resolve().parents[1] / "config" / "prompts" / "golden-v1.yaml"

GOOD = """\
metadata:
  version: "9"
prompts:
  - id: one
    input: "The capital of France is"
    expected_pattern: "Paris"
    category: sanity
"""


def test_shipped_golden_set_is_the_spec_set():
    golden = load_golden(GOLDEN)
    assert golden.version == "1.0.0" and golden.sha256 == sha256_file(GOLDEN)
    counts = {c: sum(p.category == c for p in golden.prompts) for c in golden.categories}
    assert counts == {"sanity": 2, "mmlu": 3, "code": 2, "format": 2}
    by_id = {p.id: p for p in golden.prompts}
    assert by_id["mmlu-elementary-math"].input == (
        "Question: What is 15% of 80?\nA) 8\nB) 12\nC) 15\nD) 20\nAnswer:\n")
    assert by_id["humaneval-add"].expected_pattern == r"return\s+a\s*\+\s*b"
    assert len(golden.paraphrase_pairs) >= 3 and len(golden.unrelated_pairs) >= 3


@pytest.mark.parametrize("text, expected", [
    ("The capital of France is Paris.", {"sanity-completion"}),
    (" B) 12", {"mmlu-elementary-math"}),
    ("\n    return a + b\n", {"humaneval-add"}),
    ("    return n % 2 == 0", {"humaneval-is-even"}),
    ('{"name": "Ann", "age": 3}', {"format-json"}),
    ("\nred\nblue\nyellow", {"format-list"}),
    ("B\nbecause 1789", {"mmlu-world-history"}),
])
def test_patterns_match_with_dotall_search(text, expected):
    golden = load_golden(GOLDEN)
    assert {p.id for p in golden.prompts if p.matches(text)} >= expected


@pytest.mark.parametrize("edit, problem", [
    (lambda t: t.replace('    expected_pattern: "Paris"\n', ""), "prompts[0] (id 'one'): missing 'expected_pattern'"),
    (lambda t: t.replace("  - id: one\n", "  - idx: one\n"), "prompts[0]: missing 'id'"),
    (lambda t: t.replace('    input: "The capital of France is"\n', ""), "missing 'input'"),
    (lambda t: t.replace('"Paris"', '"(Paris"'), "invalid expected_pattern regex"),
    (lambda t: t + t[t.index("  - id"):], "duplicate id 'one'"),
    (lambda t: t.replace('  version: "9"\n', "  name: x\n"), "missing metadata.version"),
    (lambda t: t + "embedding:\n  paraphrase_pairs:\n    - {id: one, a: x, b: y}\n", "duplicate id 'one'"),
    (lambda t: t + "embedding:\n  unrelated_pairs:\n    - {id: u, a: x}\n",
     "embedding.unrelated_pairs[0]: missing 'b'"),
    (lambda t: "prompts: [unclosed\n", "not valid YAML"),
])
def test_bad_entries_give_one_line_naming_the_file(tmp_path, edit, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(edit(GOOD))
    with pytest.raises(FormatError) as exc:
        load_golden(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(path)) and problem in message


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="not found"):
        load_golden(tmp_path / "absent.yaml")


def test_format_json_pattern_matches_json_not_a_literal_backslash():
    # a single-quoted '\\{' would require a backslash in the output; the shipped file has one backslash
    pattern = {p.id: p for p in load_golden(GOLDEN).prompts}["format-json"]
    assert pattern.matches('Sure: {"name": "Ann", "age": 30}')
    assert not pattern.matches('{"name": "Ann"}')
