"""MathVista testmini: data reader, prompts and the official rule-based scoring (``calculate_score.py``).

Upstream extracts a short answer from the response with GPT (``extraction`` field), then normalises it
and compares it with the answer **as strings**. This module reimplements that normalisation exactly:

* multi_choice: a ``(X)`` letter inside the extraction wins; a bare letter maps to its choice text;
  anything else goes to the nearest choice by Levenshtein distance (the FIRST nearest on ties);
* integer: ``str(int(float(x)))`` -- truncation, so "3.7" becomes "3" (``integer_rule="strict"`` is the
  stricter ``int(x)`` variant that rejects any non-integer string such as "3.0");
* float: ``str(round(float(x), int(precision)))`` -- so "1.20" with precision 1 becomes "1.2";
* list: ``str(x)``.
Failures normalise to None, which never equals an answer.

:func:`extraction_agreement` / :func:`agreement_report` (``python -m mathvlm.evaluate agreement``) measure
how often a local extraction agrees with the stored GPT ``extraction`` of a published results file.
"""

from __future__ import annotations

import os
import re
from typing import Any

from mathvlm.eval.common import DataError, Tally, levenshtein, read_json, require

BREAKDOWN_KEYS = ("question_type", "answer_type", "language", "source", "category", "task", "context",
                  "grade", "skills")
_PAREN_LETTER = re.compile(r"\(([a-zA-Z])\)")
_REQUIRED = ("question", "choices", "answer", "question_type", "answer_type", "precision", "metadata")


def most_similar_choice(prediction: str, choices: list[str]) -> str:
    """The choice with the smallest edit distance; the earliest one on ties (``list.index(min)``)."""
    distances = [levenshtein(prediction, choice) for choice in choices]
    return choices[distances.index(min(distances))]


def normalize_extraction(extraction: Any, choices: list[str] | None, question_type: str, answer_type: str,
                         precision: Any, *, integer_rule: str = "truncate",
                         ignore_empty_extractions: bool = False) -> str | None:
    if integer_rule not in ("truncate", "strict"):
        raise ValueError(f"integer_rule must be 'truncate' or 'strict', not {integer_rule!r}")
    if question_type == "multi_choice":
        extraction = extraction.strip() if isinstance(extraction, str) else str(extraction)
        if ignore_empty_extractions and not extraction:
            return None
        if not choices:
            return None  # upstream would crash here; a choice-less MC item cannot be answered
        letters = _PAREN_LETTER.findall(extraction)
        if letters:
            extraction = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in options:
            return choices[options.index(extraction)]
        return most_similar_choice(extraction, choices)
    try:
        if answer_type == "integer":
            if integer_rule == "truncate":
                return str(int(float(extraction)))
            return str(int(extraction))
        if answer_type == "float":
            return str(round(float(extraction), int(precision)))
        if answer_type == "list":
            return str(extraction)
    except (ValueError, TypeError, OverflowError):
        return None
    return None


def is_correct(problem: dict, extraction: Any, **normalize_kwargs) -> bool:
    prediction = normalize_extraction(extraction, problem["choices"], problem["question_type"],
                                      problem["answer_type"], problem["precision"], **normalize_kwargs)
    # Upstream compares with ``==`` (no strip): the answer is always a string in testmini.json.
    return prediction is not None and prediction == problem["answer"]


def categories(problem: dict) -> dict[str, Any]:
    meta = problem.get("metadata", {})
    merged = {**meta, "question_type": problem["question_type"], "answer_type": problem["answer_type"]}
    return {key: merged[key] for key in BREAKDOWN_KEYS if key in merged}


def load_testmini(data_dir: str) -> dict[str, dict]:
    """testmini.json (pid -> problem) with each problem's official prompt from query.json as ``query``."""
    path = os.path.join(data_dir, "testmini.json")
    problems = read_json(path)
    if not isinstance(problems, dict):
        raise DataError(f"{path}: expected an object keyed by pid")
    queries_path = os.path.join(data_dir, "query.json")
    queries = read_json(queries_path) if os.path.exists(queries_path) else {}
    for pid, problem in problems.items():
        require(problem, _REQUIRED, path, pid)
    for pid, problem in problems.items():
        if "query" not in problem:
            if pid not in queries:
                raise DataError(f"{queries_path}: no prompt for pid {pid!r}")
            problem["query"] = queries[pid]
    return problems


def score_results(results_path: str, data_dir: str | None = None, **normalize_kwargs) -> Tally:
    """Score an official results JSON (pid -> problem with ``extraction``), like ``calculate_score.py``.

    Missing problem fields (answer, choices, ...) are filled from ``data_dir/testmini.json`` when given."""
    results = read_json(results_path)
    if not isinstance(results, dict):
        raise DataError(f"{results_path}: expected an object keyed by pid")
    truth = load_testmini(data_dir) if data_dir else {}
    tally = Tally()
    for pid, item in results.items():
        problem = {**truth.get(pid, {}), **item} if isinstance(item, dict) else item
        require(problem, _REQUIRED, results_path, pid)
        if "extraction" not in problem:
            # Upstream raises KeyError here (e.g. 2 items of the published ChatGPT output, whose API call
            # failed); we count the item as wrong, as a missing answer, and report how many there were.
            tally.notes["missing_extraction"] = tally.notes.get("missing_extraction", 0) + 1
            tally.add(False, categories(problem))
            continue
        tally.add(is_correct(problem, problem["extraction"], **normalize_kwargs), categories(problem))
    return tally


# --- agreement of a local extraction with the stored GPT extraction ------------------------------------

AGREEMENT_KEYS = ("items", "compared", "missing_extraction", "raw_agree", "normalized_agree",
                  "correct_gpt", "correct_local")


def extraction_agreement(results_path: str, data_dir: str | None = None, extract=None,
                         response_label: str = "response", **normalize_kwargs) -> dict[str, int]:
    """How often ``extract(response, problem)`` (default: our rule-based
    :func:`mathvlm.eval.local_extraction.extract_for_mathvista`) agrees with each record's stored GPT
    ``extraction``.

    ``raw_agree``: the two strings are identical. ``normalized_agree``: they normalise
    (:func:`normalize_extraction`) to the same prediction, e.g. "B" and the text of choice B; two
    extractions that both fail to normalise (None) agree, since both score as no answer. Both are over
    ``compared`` = records with a stored extraction; ``missing_extraction`` records have none.
    ``correct_gpt`` / ``correct_local``: items correct with each extraction over all ``items`` (a record
    without a stored extraction is wrong under GPT, as in :func:`score_results`). ``response_label``:
    the field extracted from, as upstream's ``--response_label`` (``execution`` for the program-of-thought
    files, whose ``response`` is code and whose GPT extraction was made from the code's output)."""
    from mathvlm.eval import local_extraction

    extract = extract or local_extraction.extract_for_mathvista
    results = read_json(results_path)
    if not isinstance(results, dict):
        raise DataError(f"{results_path}: expected an object keyed by pid")
    truth = load_testmini(data_dir) if data_dir else {}
    counts = dict.fromkeys(AGREEMENT_KEYS, 0)
    for pid, item in results.items():
        problem = {**truth.get(pid, {}), **item} if isinstance(item, dict) else item
        require(problem, _REQUIRED + (response_label,), results_path, pid)
        response = problem[response_label]
        if not isinstance(response, str):
            raise DataError(f"{results_path}: record {pid!r} has a non-string {response_label!r} "
                            f"({type(response).__name__})")
        local = extract(response, problem)
        counts["items"] += 1
        counts["correct_local"] += is_correct(problem, local, **normalize_kwargs)
        if "extraction" not in problem:
            counts["missing_extraction"] += 1
            continue
        stored = problem["extraction"]
        counts["compared"] += 1
        counts["correct_gpt"] += is_correct(problem, stored, **normalize_kwargs)
        counts["raw_agree"] += local == stored
        args = (problem["choices"], problem["question_type"], problem["answer_type"], problem["precision"])
        counts["normalized_agree"] += (normalize_extraction(local, *args, **normalize_kwargs)
                                       == normalize_extraction(stored, *args, **normalize_kwargs))
    return counts


def agreement_table(rows: dict[str, dict[str, int]]) -> str:
    """Markdown: one row per file (name -> :func:`extraction_agreement` counts) and a total row."""
    total = {key: sum(row[key] for row in rows.values()) for key in AGREEMENT_KEYS}
    lines = ["| file | items | raw agree % | normalised agree % | acc. GPT extraction % | acc. ours % |",
             "|---|---|---|---|---|---|"]
    for name, row in [*rows.items(), ("total", total)]:
        def pct(count, of):
            return f"{100 * count / of:.1f}" if of else "-"
        lines.append(f"| {name} | {row['items']} | {pct(row['raw_agree'], row['compared'])} | "
                     f"{pct(row['normalized_agree'], row['compared'])} | {pct(row['correct_gpt'], row['items'])} | "
                     f"{pct(row['correct_local'], row['items'])} |")
    return "\n".join(lines)


def agreement_report(predictions: list[str], data: str | None, integer_rule: str = "truncate",
                     response_label: str = "response", judge_options: tuple = (None, None, None, None)):
    """(markdown table, JSON-able result {"benchmark", "files", "total"}, warning or "") for the
    ``agreement`` command. With a judge (opt-in: url, model, cache folder, prompt file) the extraction is
    MathVista's own (rules, then the judge) and each row also counts ``judge_calls`` and
    ``judge_failures`` (a failed call extracts "", as upstream; the warning lists them)."""
    url, model, cache, prompt = judge_options
    extractor = None
    if url:
        from mathvlm.eval import judge
        if not (model and cache and prompt):
            raise DataError("--judge-url needs --judge-model, --judge-cache and --judge-prompt")
        if not os.path.exists(prompt):
            raise DataError(f"{prompt}: file not found")
        with open(prompt, encoding="utf-8") as f:
            extractor = judge.MathVistaJudgeExtractor(judge.Judge(url, model, cache), f.read())
    rows = {}
    for path in predictions:
        name = os.path.basename(path)
        if name in rows:
            raise DataError(f"{path}: a file of the same name was already given")
        calls, failures = (extractor.judge.calls, extractor.failures) if extractor else (0, 0)
        rows[name] = extraction_agreement(path, data, extract=extractor, response_label=response_label,
                                          integer_rule=integer_rule)
        if extractor:
            rows[name].update(judge_calls=extractor.judge.calls - calls, judge_failures=extractor.failures - failures)
    total = {key: sum(row[key] for row in rows.values()) for key in rows[next(iter(rows))]}
    warning = ""
    if extractor and extractor.failures:
        warning = (f"warning: {extractor.failures} judge call(s) failed and extracted '': "
                   + "; ".join(extractor.failed_pids[:10]))
    return agreement_table(rows), {"benchmark": "mathvista", "files": rows, "total": total}, warning
