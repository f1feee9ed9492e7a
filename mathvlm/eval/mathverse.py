"""MathVerse: reader (official JSON list with ``problem_version``) and a local rule-based scorer.

Upstream scores with two GPT calls (extract, then judge); its only offline option is exact match.
Our local protocol: take the text after the last answer marker (MathVerse's own fallback markers),
then a multiple-choice item is right when the first option letter there equals the answer letter, and
a free-form item when math-verify finds it equivalent to the answer (exact string match as fallback).
Use ``mathvlm.eval.judge`` for the papers' GPT protocol.
"""

from __future__ import annotations

import re
from typing import Any

from mathvlm.eval.common import DataError, Tally, read_record_list

VERSIONS = ("Text Dominant", "Text Lite", "Vision Intensive", "Vision Dominant", "Vision Only", "Text Only")
_REQUIRED = ("sample_index", "problem_version", "question", "answer", "question_type", "metadata")
_MARKERS = re.compile(r"(?:answer\s*(?:is)?\s*:?|therefore,|so,|thus,|†)", re.IGNORECASE)
_LETTER = re.compile(r"\(?\b([A-F])\b\)?")


def load_problems(path: str) -> list[dict]:
    records = read_record_list(path, _REQUIRED, "sample_index")
    for record in records:
        if record["problem_version"] not in VERSIONS:
            raise DataError(f"{path}: record {record['sample_index']!r} has unknown problem_version "
                            f"{record['problem_version']!r}")
    return records


def answer_tail(response: str) -> str:
    """The text after the last answer marker, or the whole response."""
    pieces = _MARKERS.split(response)
    return pieces[-1].strip() if len(pieces) > 1 else response.strip()


def is_correct(problem: dict, response: str) -> bool:
    tail = answer_tail(response)
    answer = str(problem["answer"]).strip()
    if problem["question_type"] == "multi-choice":
        match = _LETTER.search(tail)
        return bool(match) and match.group(1) == answer.upper()
    if tail == answer:
        return True
    from mathvlm.eval.mathverify_equal import equivalent
    return equivalent(answer, tail)


def categories(problem: dict) -> dict[str, Any]:
    meta = problem.get("metadata", {})
    return {"version": problem["problem_version"], "subject": meta.get("subject", "?"),
            "question_type": problem["question_type"]}


def score_responses(problems: list[dict], responses: list[str]) -> Tally:
    tally = Tally()
    for problem, response in zip(problems, responses, strict=True):
        tally.add(is_correct(problem, response), categories(problem))
    return tally


def score_results(results_path: str) -> Tally:
    """Score an outputs file in the official form (a JSON list of the problem records, each with the
    model's response as ``model_answer``) with the local protocol above."""
    records = read_record_list(results_path, _REQUIRED + ("model_answer",), "sample_index")
    return score_responses(records, [str(r["model_answer"]) for r in records])
