"""Rule-based answer extraction from a free response, used by our local protocol in place of the
papers' GPT extraction step. Its output feeds each benchmark's official normalisation unchanged.

MathVista (:func:`extract_for_mathvista`): first the rules of the official ``extract_answer``
(lupantech/MathVista ``evaluation/extract_answer.py``, with its ``--quick_extract`` rule), which return
before GPT is called; only where upstream would call GPT, our fallback (\\boxed / "answer is" tail,
option letter, last number). ``python -m mathvlm.evaluate agreement`` measures how often this agrees
with the published GPT extractions."""

from __future__ import annotations

import re

_MARKER = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:：]?", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")
_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[\s.:)]|$)")


def answer_tail(response: str) -> str:
    """\\boxed{...} content if any, else the text after the last 'answer' marker, else the response."""
    boxed = _BOXED.findall(response)
    if boxed:
        return boxed[-1].strip()
    pieces = _MARKER.split(response)
    return pieces[-1].strip() if len(pieces) > 1 else response.strip()


def extract_choice_letter(response: str, num_choices: int) -> str | None:
    """An option letter at the start of the answer tail, e.g. "(B) 12" or "B."."""
    match = _LETTER.match(answer_tail(response))
    if match and ord(match.group(1)) - ord("A") < num_choices:
        return match.group(1)
    return None


def extract_number(response: str) -> str | None:
    """The last number in the answer tail (thousands separators removed)."""
    numbers = _NUMBER.findall(answer_tail(response))
    return numbers[-1].replace(",", "") if numbers else None


_QUICK = re.compile(r'The answer is "(.*)"\.')


def official_rule_extraction(response: str, problem: dict) -> str | None:
    """The rule steps of MathVista's ``extract_answer``, in its order; None where it would ask GPT.

    Empty response -> ""; multi_choice and the response is exactly a choice -> it; integer type and
    ``int(response)`` works -> ``str(int)``; float type and ``float(response)`` works -> ``str(float)``
    ("3" -> "3.0"); ``The answer is "X".`` -> X (the quick-extract rule)."""
    if response == "":
        return ""
    if problem["question_type"] == "multi_choice" and response in (problem["choices"] or []):
        return response
    if problem["answer_type"] == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if problem["answer_type"] == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    found = _QUICK.search(response)
    return found.group(1) if found else None


def extract_for_mathvista(response: str, problem: dict) -> str:
    """A MathVista ``extraction``: the official rules first (:func:`official_rule_extraction`), then a
    letter or the tail text for MC, a number (or list) otherwise."""
    official = official_rule_extraction(response, problem)
    if official is not None:
        return official
    if problem["question_type"] == "multi_choice":
        return extract_choice_letter(response, len(problem["choices"] or [])) or answer_tail(response)
    if problem["answer_type"] == "list":
        tail = answer_tail(response)
        found = re.search(r"\[[^\]]*\]", tail)
        # MathVista list answers are Python list reprs, "[1, 2]": re-join the numbers that way.
        # Split on commas first: "2014,2016" is two numbers here, not one with a thousands separator.
        return "[" + ", ".join(x.strip() for x in found.group(0)[1:-1].split(",")) + "]" if found else tail
    return extract_number(response) or ""
