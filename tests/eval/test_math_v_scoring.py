"""MATH-V's official rule: equality with the answer letter or the option value, LaTeX-aware, 2 decimals."""

import os

import pytest

from mathvlm.eval import math_v

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "math_v")


@pytest.mark.parametrize("a, b, expected", [
    ("A", "a", True),                      # case-insensitive
    ("\\frac{1}{2}", "0.5", True),         # LaTeX value
    ("$\\frac{1}{2}$", "0.5", True),       # LaTeX option with dollars
    ("$\\sqrt{2}$", "1.414", True),        # equal after rounding to 2 decimals
    ("0.5", "0.51", False),
    ("0.504", "0.5", True),
    ("2\\pi", "6.28", True),
    ("(1,2)", "(1, 2)", True),            # tuples are re-joined element by element
    ("(1,2)", "(1,2)", True),
    ("(1,2)", "(1.0,2.0)", True),          # official: latex2sympy2 reads 1.0 as the rational 1, "1"
    ("(0.333,1)", "(\\frac{1}{3},1)", True),
    ("", "", False), ("  ", "1", False),   # empty never matches
    ("x", "y", False), ("x+1", "1+x", False),  # symbols are not numbers
])
def test_is_equal(a, b, expected):
    assert math_v.is_equal(a, b) is expected


@pytest.mark.parametrize("a, b, official, lenient", [
    ("(1,2)", "(1.0,2.0)", True, False),   # lenient keeps floats as "1.0"
    ("120", "$120^{\\circ}$", False, True),  # lenient strips the degree sign
    ("e", "2.72", False, True),            # lenient reads e as Euler's number
])
def test_official_and_lenient_rules_differ(a, b, official, lenient):
    assert math_v.is_equal(a, b) is official
    assert math_v.is_equal(a, b, rule="lenient") is lenient


def test_correct_by_letter_or_by_option_value():
    problem = {"answer": "B", "options": ["$\\frac{1}{2}$", "$\\sqrt{2}$", "3"]}
    assert math_v.is_correct(problem, "B")
    assert math_v.is_correct(problem, "b")
    assert math_v.is_correct(problem, "1.41")
    assert not math_v.is_correct(problem, "0.5")
    assert math_v.is_correct({"answer": "7", "options": []}, "7.0")


@pytest.mark.parametrize("response, expected", [
    ("The answer is 12.", "12"),
    ("Therefore, the answer is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
    ("so x = 5", "5"),
    ("Let me think... The correct option is B.", "b"),
    ("B\nbecause ...", "b"),
])
def test_extract_answer(response, expected):
    assert math_v.extract_answer(response) == expected


def test_predictions_file_gives_the_exact_count():
    # The stored model_answer is used (regen_answer=False): the responses here are placeholders.
    tally = math_v.score_predictions(os.path.join(FIXTURES, "predictions.jsonl"), FIXTURES, regen_answer=False)
    assert (tally.correct, tally.total) == (3, 4)
    assert tally.to_dict()["subject"]["algebra"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    assert tally.to_dict()["level"]["level3"]["correct"] == 1


def test_bad_predictions_name_the_file_and_record(tmp_path):
    for name in ("test.jsonl",):
        (tmp_path / name).write_text(open(os.path.join(FIXTURES, name)).read())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "model_answer": "B"}\n{"id": "2"}\n')
    with pytest.raises(math_v.DataError, match=r"bad.jsonl.*'2'.*response"):
        math_v.score_predictions(str(bad), str(tmp_path))
    bad.write_text('{"id": "99", "response": "1"}\n')
    with pytest.raises(math_v.DataError, match=r"bad.jsonl.*'99'.*not in"):
        math_v.score_predictions(str(bad), str(tmp_path))
