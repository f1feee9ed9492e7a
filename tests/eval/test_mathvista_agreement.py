"""MathVista: the official rule-based extraction steps, and the ``agreement`` command's numbers checked
against a count made here, record by record, on slices of two published results files."""

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout

import pytest

from mathvlm import evaluate
from mathvlm.eval import local_extraction as le
from mathvlm.eval import mathvista
from mathvlm.eval.common import DataError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "mathvista", "agreement")
FILES = [os.path.join(FIXTURES, name) for name in ("output_bard_slice.json", "output_chatgpt_slice.json")]
MC = {"question_type": "multi_choice", "answer_type": "text", "choices": ["3", "4.5", "six"]}
INT = {"question_type": "free_form", "answer_type": "integer", "choices": None}
FLOAT = {"question_type": "free_form", "answer_type": "float", "choices": None}


@pytest.mark.parametrize("response, problem, expected", [
    ("", MC, ""),                                    # empty response: empty extraction
    ("six", MC, "six"),                              # exactly a choice
    (" six", MC, "six"),                             # not exactly a choice: our fallback's tail text
    ("12", INT, "12"), (" 12 ", INT, "12"),          # int(response) works
    ("12.0", INT, "12.0"),                           # int("12.0") fails; fallback: the last number
    ("3", FLOAT, "3.0"), ("1e-1", FLOAT, "0.1"),     # str(float(response))
    ('So... The answer is "4.5".', MC, "4.5"),       # the quick-extract rule, before any letter rule
    ('The answer is "B". Answer: C', MC, "B"),
    ("Answer: (B) 4.5", MC, "B"),                    # our fallback
    ("so the result is 7 apples", INT, "7"),
])
def test_official_rules_come_first(response, problem, expected):
    assert le.extract_for_mathvista(response, problem) == expected


def _count(path):
    """An independent tally: one pass over the records with the extraction and normalisation functions."""
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    n = dict.fromkeys(mathvista.AGREEMENT_KEYS, 0)
    for record in results.values():
        ours = le.extract_for_mathvista(record["response"], record)
        n["items"] += 1

        def norm(x):
            return mathvista.normalize_extraction(x, record["choices"], record["question_type"],
                                                  record["answer_type"], record["precision"])
        n["correct_local"] += norm(ours) == record["answer"]
        if "extraction" not in record:
            n["missing_extraction"] += 1
            continue
        n["compared"] += 1
        n["raw_agree"] += ours == record["extraction"]
        n["normalized_agree"] += norm(ours) == norm(record["extraction"])
        n["correct_gpt"] += norm(record["extraction"]) == record["answer"]
    return n


def test_agreement_command_matches_an_independent_count():
    out = io.StringIO()
    with redirect_stdout(out):
        assert evaluate.main(["agreement", "--benchmark", "mathvista", "--predictions", *FILES]) == 0
    lines = out.getvalue().strip().splitlines()
    result = json.loads(lines[-1])
    expected = {os.path.basename(path): _count(path) for path in FILES}
    assert result["files"] == expected
    assert result["total"] == {k: sum(row[k] for row in expected.values()) for k in mathvista.AGREEMENT_KEYS}
    assert result["files"]["output_chatgpt_slice.json"]["missing_extraction"] == 2  # pids 2 and 4
    # The table shows the same numbers as percentages, one row per file and a total row.
    bard = expected["output_bard_slice.json"]
    row = next(line for line in lines if line.startswith("| output_bard_slice.json"))
    assert f"| {100 * bard['normalized_agree'] / bard['compared']:.1f} |" in row
    assert any(line.startswith("| total | 160 |") for line in lines)
    # Normalised agreement is never below raw agreement: equal strings normalise equally.
    assert all(r["normalized_agree"] >= r["raw_agree"] for r in expected.values())


def test_agreement_errors_name_the_file_and_record(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"7": {"question": "q", "choices": None, "answer": "1", "question_type": "free_form",
                                     "answer_type": "integer", "precision": None, "metadata": {}}}))
    with pytest.raises(DataError, match=r"bad.json.*'7'.*response"):
        mathvista.extraction_agreement(str(bad))
    err = io.StringIO()
    with redirect_stderr(err):
        assert evaluate.main(["agreement", "--benchmark", "mathvista", "--predictions", str(bad)]) == 1
    assert "bad.json" in err.getvalue()


def test_opt_in_judge_extraction_is_cached_and_counts_failures(tmp_path):
    from mathvlm.eval import judge

    prompts = []

    def transport(url, payload, headers):
        prompt = payload["messages"][0]["content"]
        prompts.append(prompt)
        if "FAIL" in prompt:
            raise OSError("connection refused")
        return {"choices": [{"message": {"content": "4.5"}}]}

    extractor = judge.MathVistaJudgeExtractor(judge.Judge("http://stub", "m", str(tmp_path), transport=transport),
                                              "Demo prompt.\n")
    problem = {**MC, "query": "Which? Choices: (A) 3 (B) 4.5 (C) six", "pid": "9"}
    assert extractor("six", problem) == "six" and prompts == []       # an official rule: no call
    assert extractor("it is the second one", problem) == "4.5"
    assert prompts[0] == ("Demo prompt.\n\nWhich? Choices: (A) 3 (B) 4.5 (C) six\n\n"
                          "it is the second one\n\nExtracted answer: ")
    assert extractor("it is the second one", problem) == "4.5" and len(prompts) == 1  # cached
    assert extractor("FAIL", problem) == "" and extractor.failures == 1 and "9: OSError" in extractor.failed_pids[0]


def test_judge_flags_must_come_together():
    err = io.StringIO()
    with redirect_stderr(err):
        code = evaluate.main(["agreement", "--benchmark", "mathvista", "--predictions", FILES[0],
                              "--judge-url", "http://127.0.0.1:9"])
    assert code == 1 and "--judge-model" in err.getvalue()
