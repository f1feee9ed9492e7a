"""MATH-V: our default rule reproduces the official evaluation/evaluate.py item by item.

The expected numbers are real reference results, not ours: they were measured by running MATH-V's
evaluation/evaluate.py (``__main__``: ``evaluate(file, regen_answer=True)``) and utils.is_equal at
commit a1f5cc3 with latex2sympy2 1.9.1 / sympy 1.14.0 (see fixtures/math_v/official/SOURCE.md).
"""

import gzip
import io
import json
import os
import shutil
from contextlib import redirect_stdout

import pytest

from mathvlm import evaluate
from mathvlm.eval import math_v

OFFICIAL = os.path.join(os.path.dirname(__file__), "fixtures", "math_v", "official")
# Correct counts of the official scorer on the four published output files (3,040 items each).
OFFICIAL_COUNTS = {"Random-Chance": 218, "LLaVA-v1.5-7B": 259, "Qwen-VL-Max-CoT": 384, "LLaVA-v1.5-13B": 338}


PARTS = 2  # each file is scored in halves so that one test stays well under 20 s on a loaded machine


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("math_v_official")
    for name in [*OFFICIAL_COUNTS, "test"]:
        with gzip.open(os.path.join(OFFICIAL, f"{name}.jsonl.gz"), "rt", encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        (folder / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
        size = -(-len(lines) // PARTS)
        for part in range(PARTS):
            (folder / f"{name}.part{part}").write_text("".join(lines[part * size:(part + 1) * size]), encoding="utf-8")
    return folder


def _official_ids():
    with open(os.path.join(OFFICIAL, "official_correct_ids.json")) as f:
        return {name: set(ids) for name, ids in json.load(f).items()}


def test_reference_sets_have_the_official_counts():
    assert {name: len(ids) for name, ids in _official_ids().items()} == OFFICIAL_COUNTS


@pytest.mark.parametrize("part", range(PARTS))
@pytest.mark.parametrize("name", list(OFFICIAL_COUNTS))
def test_default_rule_matches_the_official_scorer_item_by_item(unpacked, name, part):
    verdicts = math_v.item_verdicts(str(unpacked / f"{name}.part{part}"), str(unpacked))
    assert len(verdicts) == 3040 // PARTS
    ids = {problem["id"] for problem, _ in verdicts}
    ours = {problem["id"] for problem, correct in verdicts if correct}
    official = _official_ids()[name] & ids
    assert sorted(ours - official, key=int) == [] and sorted(official - ours, key=int) == []


def _cli(args):
    out = io.StringIO()
    with redirect_stdout(out):
        code = evaluate.main(args)
    return code, json.loads(out.getvalue().strip().splitlines()[-1])


def test_cli_default_gives_the_official_count(unpacked):
    code, result = _cli(["score", "--benchmark", "math_v", "--predictions", str(unpacked / "LLaVA-v1.5-13B.jsonl"),
                         "--data", str(unpacked)])
    assert code == 0 and (result["correct"], result["total"]) == (OFFICIAL_COUNTS["LLaVA-v1.5-13B"], 3040)


def test_lenient_rule_counts_more_than_official(unpacked, tmp_path):
    # Random-Chance items whose correct option is written in degrees: the official parser rejects
    # "$120^{\circ}$", so "120" is wrong there; the lenient rule strips the degree sign.
    problems = {p["id"]: p for p in map(json.loads, open(unpacked / "test.jsonl", encoding="utf-8"))}
    with open(unpacked / "Random-Chance.jsonl", encoding="utf-8") as f:
        records = [r for r in map(json.loads, f)
                   if problems[r["id"]]["options"] and "circ" in problems[r["id"]]["options"][ord(problems[r["id"]]["answer"]) - 65]]
    (tmp_path / "subset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    shutil.copy(unpacked / "test.jsonl", tmp_path / "test.jsonl")
    official_ids = _official_ids()["Random-Chance"] & {r["id"] for r in records}
    official = {p["id"] for p, ok in math_v.item_verdicts(str(tmp_path / "subset.jsonl"), str(tmp_path)) if ok}
    lenient = {p["id"] for p, ok in math_v.item_verdicts(str(tmp_path / "subset.jsonl"), str(tmp_path), rule="lenient") if ok}
    assert official == official_ids
    assert lenient > official
    code, result = _cli(["score", "--benchmark", "math_v", "--predictions", str(tmp_path / "subset.jsonl"),
                         "--data", str(tmp_path), "--math-v-rule", "lenient"])
    assert code == 0 and result["correct"] == len(lenient)


def test_regenerated_answer_not_the_stored_one(tmp_path):
    # As the official __main__, the answer is re-extracted from the response: "C)" gives "c)", which is
    # not "C" (this happens in Qwen-VL-Max-CoT item 1787: response "A)", stored model_answer "a").
    small = os.path.join(os.path.dirname(__file__), "fixtures", "math_v", "test.jsonl")
    shutil.copy(small, tmp_path / "test.jsonl")
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "3", "response": "C)", "model_answer": "c"}) + "\n")
    assert math_v.extract_answer("C)") == "c)"
    assert math_v.score_predictions(str(tmp_path / "p.jsonl"), str(tmp_path)).correct == 0
    assert math_v.score_predictions(str(tmp_path / "p.jsonl"), str(tmp_path), regen_answer=False).correct == 1


# (answer, reference, official is_equal): each verdict measured by calling the official utils.is_equal.
@pytest.mark.parametrize("a, b, expected", [
    ("(1,2)", "(1.0,2.0)", True),                   # 1.9.1 reads 1.0 as the rational 1, printed "1"
    ("(2,1)", "(\\frac{4}{2},1)", False),           # eval of "4/2" is the float 2.0: "(2.0,1)"
    ("(2.0,1)", "(\\frac{4}{2},1)", False),
    ("(0.33,1)", "(\\frac{1}{3},1)", True),
    ("e", "2.72", False),                           # sympy's E is not a name eval knows
    ("\\pi", "3.14", True),
    ("120", "$120^{\\circ}$", False),               # degrees: the option text is compared raw, rejected
    ("13", "$13 \\%$", False), ("0.13", "$13\\%$", True),
    ("\\frac{3\\pi}{2}}{cm", "$\\frac{3 \\pi}{2}$", True),  # parsing stops at the stray "}"
    ("1.5", "3\\frac{1}{2}", True), ("3.5", "3\\frac{1}{2}", False),  # juxtaposition multiplies
    ("1.41", "\\sqrt{2}", True), ("0.5", "$\\frac{1}{2}$", True),
    ("2", "$2 \\mathrm{~cm}$", False),
    ("0.71", "\\sin(\\frac{\\pi}{4})", True), ("1", "\\csc(\\frac{\\pi}{2})", False),  # csc: not in math
    ("18", "18.since", True), ("x+1", "1+x", False), ("5", "5?", False),
    ("700800", "[700,800]", True), ("10100", "1 010 101 010", True),
    ("3", "$3\\sqrt{3}-\\pi \\$$", False), ("2.05", "3\\sqrt{3}-\\pi", True),
    ("a", "A", True), ("", "", False), ("0.75", "$\\displaystyle \\frac{3}{4}$", True),
    ("4", "2^{2}", True), ("8", "2^3", True), ("0.5", "2^{-1}", True),
])
def test_official_is_equal_quirks(a, b, expected):
    assert math_v.is_equal(a, b) is expected


def test_no_code_is_executed_and_bad_rule_is_refused():
    assert math_v.is_equal("__import__('os').system('false')", "0") is False
    with pytest.raises(ValueError):
        math_v._safe_eval("__import__('os')")
    with pytest.raises(ValueError, match="rule"):
        math_v.is_equal("1", "1.0", rule="exact")
