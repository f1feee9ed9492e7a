"""We-Math testmini: reader, option parsing and the official four-dimensional metrics.

Option parsing (``four_dimensional_metrics.py``): take the text after the LAST "Answer" (the whole
response when there is none), strip, delete every ``> < : .``, strip, and keep the first character when
it is one of A-H. Each composite problem (``ID``) has one-step records ``Nsteps_1..N`` and the composite
``Nsteps_multi``. With sub = the one-step verdicts and multi = the composite verdict:

* IK  (insufficient knowledge):   any sub wrong and multi wrong
* IG  (inadequate generalisation): all sub right and multi wrong
* CM strict: all sub right and multi right;   CM loose: any sub right and multi right
* RM strict: any sub wrong and multi right;   RM loose: all sub wrong and multi right
Rates: IK, IG, CM over the number of problems; RM over (CM + RM). Score = (N - 0.5 IG - RM - IK) / N.
S1 = accuracy over all one-step records of the problems, S2/S3 = composite accuracy of 2/3-step problems.
"""

from __future__ import annotations

import re
from typing import Any

from mathvlm.eval.common import DataError, read_json, read_record_list, require

_REQUIRED = ("ID", "key", "answer")
_STRIPPED = re.compile(r"[><:.]")


def parse_option(response: Any) -> str | None:
    if not isinstance(response, str):
        return None
    tail = _STRIPPED.sub("", response.split("Answer")[-1].strip()).strip()
    return tail[0] if tail and tail[0] in "ABCDEFGH" else None


def _problems(records: list[dict], path: str) -> dict[str, dict[str, bool]]:
    """ID -> {"1": verdict, "2": ..., "multi": ...} for records that carry ``response``."""
    problems: dict[str, dict[str, bool]] = {}
    for index, record in enumerate(records):
        rid = record.get("question number", index) if isinstance(record, dict) else index
        require(record, _REQUIRED + ("response",), path, rid)
        role = record["key"].split("_")[-1]
        problems.setdefault(f"{record['key'].split('_')[0]}|{record['ID']}", {})[role] = (
            parse_option(record["response"]) == record["answer"])
    return problems


def four_dimensional_metrics(records: list[dict], path: str = "<records>") -> dict[str, Any]:
    counts = {"IK": 0, "IG": 0, "CM_strict": 0, "CM_loose": 0, "RM_strict": 0, "RM_loose": 0}
    one_step = []
    multi_by_steps: dict[int, list[bool]] = {2: [], 3: []}
    for name, verdicts in _problems(records, path).items():
        steps = int(name.split("steps")[0])
        expected = [str(i) for i in range(1, steps + 1)] + ["multi"]
        missing = [role for role in expected if role not in verdicts]
        if missing:
            # Upstream merges on ID_1 with a left join: a problem without its step-1 record is dropped,
            # any other missing record makes a NaN verdict, which counts as neither right nor wrong.
            raise DataError(f"{path}: problem {name.split('|')[1]!r} ({steps} steps) lacks records {missing}")
        sub = [verdicts[str(i)] for i in range(1, steps + 1)]
        multi = verdicts["multi"]
        one_step += sub
        multi_by_steps.setdefault(steps, []).append(multi)
        if multi:
            counts["CM_strict" if all(sub) else "RM_strict"] += 1
            counts["CM_loose" if any(sub) else "RM_loose"] += 1
        else:
            counts["IG" if all(sub) else "IK"] += 1
    n = sum(len(v) for v in multi_by_steps.values())
    if n == 0:
        raise DataError(f"{path}: no composite problems found")

    def rate(k, d):
        return k / d if d else 0.0

    result: dict[str, Any] = {
        "problems": n,
        "S1": rate(sum(one_step), len(one_step)),
        "S2": rate(sum(multi_by_steps[2]), len(multi_by_steps[2])),
        "S3": rate(sum(multi_by_steps[3]), len(multi_by_steps[3])),
        "counts": counts,
        "IK": rate(counts["IK"], n), "IG": rate(counts["IG"], n),
        "CM_strict": rate(counts["CM_strict"], n), "CM_loose": rate(counts["CM_loose"], n),
        "RM_strict": rate(counts["RM_strict"], counts["CM_strict"] + counts["RM_strict"]),
        "RM_loose": rate(counts["RM_loose"], counts["CM_loose"] + counts["RM_loose"]),
        "score_strict": (n - 0.5 * counts["IG"] - counts["RM_strict"] - counts["IK"]) / n,
        "score_loose": (n - 0.5 * counts["IG"] - counts["RM_loose"] - counts["IK"]) / n,
    }
    # The CLI's contract: correct/total/accuracy over every record (one-step and composite).
    verdicts = [parse_option(r["response"]) == r["answer"] for r in records]
    result.update(correct=sum(verdicts), total=len(verdicts), accuracy=rate(sum(verdicts), len(verdicts)))
    return result


def load_problems(path: str) -> list[dict]:
    return read_record_list(path, _REQUIRED + ("question", "option", "image_path"), "question number")


def prompt(record: dict) -> str:
    """The We-Math evaluation prompt shape: question, options, and an 'Answer:' instruction."""
    return (f"{record['question']}\nOptions: {record['option']}\n"
            "Answer with the option's letter from the given choices, in the form 'Answer: X'.")


def score_results(results_path: str, truth_path: str | None = None) -> dict[str, Any]:
    """Score a results JSON list (records with ``response``). With ``truth_path`` (testmini.json), records
    that carry only ``question number`` and ``response`` get the other fields from the benchmark file."""
    records = read_json(results_path)
    if not isinstance(records, list):
        raise DataError(f"{results_path}: expected a JSON list of records with a 'response' field")
    if truth_path:
        truth = {r.get("question number"): r for r in load_problems(truth_path)}
        merged = []
        for index, record in enumerate(records):
            number = record.get("question number") if isinstance(record, dict) else None
            if number not in truth:
                raise DataError(f"{results_path}: record {index} has no 'question number' found in {truth_path}")
            merged.append({**truth[number], **record})
        records = merged
    return four_dimensional_metrics(records, results_path)


# We-Math's answer template with the knowledge concept, as Math-PUMA's evaluation script sends it
# (eval/inference/sub_inference_json_customvlm.py): its line breaks and indentation become spaces.
OFFICIAL_PROMPT = """Now, we require you to solve a multiple-choice math question. We will provide
    you with the relevant knowledge concepts of this question for your reference.
    Please briefly describe your thought process and provide the final answer(option).
    Knowledge concept: {knowledge_concept}
    Question: {question}
    Option: {option}
    Regarding the format, please answer following the template below, and be
    sure to include two <> symbols:
    <Thought process>: <<your thought process>> <Answer>: <<your option>>""".replace("\n", " ")


def official_prompt(record: dict) -> str:
    """The template above with the record's ``knowledge concept description``, question and options."""
    if "knowledge concept description" not in record:
        raise DataError(f"We-Math record {record.get('question number')!r} lacks 'knowledge concept "
                        "description' (the official prompt quotes it); use testmini.json as released")
    return OFFICIAL_PROMPT.format(knowledge_concept=record["knowledge concept description"],
                                  question=record["question"], option=record["option"])
