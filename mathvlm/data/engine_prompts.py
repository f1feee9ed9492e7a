"""The text of a data-engine instruct record as a conversation, and the answer read back from a reply.

Shared by the ``engine_instruct`` training source and the ``engine_heldout`` evaluator so a model is
asked at evaluation exactly what it was taught: the user turn is the record's ``question`` (or
``question_mc``, which lists the options, for multiple choice) preceded by the image mark when the record
has an image; the assistant turn is the chain of thought ``cot`` / ``cot_mc``, whose last line is
:func:`mathvlm.engine.wording.cot_text`'s ``The answer is X.`` / ``The answer is X, which is option L.``.
Answers are read back from that same line.

Pure text on plain dicts (no numpy, JAX or engine import), so either side can use it without the other.
Importing it still runs ``mathvlm/data/__init__`` (grain): the evaluator imports it lazily.
"""

from __future__ import annotations

import re
from fractions import Fraction

IMAGE_MARK = "<image>\n"  # LLaVA convention (mathvlm.data.readers): the image before the question
TEXT_ONLY = "text_only"
_ANSWER_LINE = re.compile(r"The answer is\s+(.+?)\s*(?:,\s*which is option\s+\(?([A-Z])\)?)?\s*\.?\s*$",
                          re.IGNORECASE)
_OPTION = re.compile(r"which is option\s+\(?([A-Z])\)?", re.IGNORECASE)
_LETTER_ONLY = re.compile(r"^option\s+\(?([A-Z])\)?$", re.IGNORECASE)  # "The answer is option C."
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:/\d+)?$")
# answer_text writes a non-integer number as its exact form then its decimal: "165/2 = 82.5" (rationals),
# "8√3 ≈ 13.86", "tan(1) ≈ 1.56". Only those two shapes are split, so "x = 3" (an equation) stays whole.
_APPROX = re.compile(r"^(?:(-?\d+/\d+)\s+=|([^=≈]+?)\s+≈)\s+(-?\d+(?:\.\d+)?)$")


def has_image(record: dict) -> bool:
    """Whether the record's image is shown (``text_only`` records carry a blank one and has_image=0)."""
    if "has_image" in record:
        return bool(int(record["has_image"]))
    return record.get("version") != TEXT_ONLY and record.get("image") is not None


def engine_image(record: dict, multiple_choice: bool = False):
    """The picture asked with the question, or None (text_only). Vision-only multiple choice draws the
    options into the image too (``image_mc``), as MathVerse does, so its text lists none."""
    if not has_image(record):
        return None
    if multiple_choice and record.get("image_mc") is not None:
        return record["image_mc"]
    return record.get("image")


def choice_list(record: dict) -> list[str]:
    """Options as a list; the engine stores them newline-joined in ``choices``."""
    choices = record.get("choices") or []
    return [c for c in choices.split("\n") if c] if isinstance(choices, str) else list(choices)


def engine_prompt(record: dict, multiple_choice: bool = False) -> str:
    """The user turn's text, without the image mark (the chat template places the image)."""
    key = "question_mc" if multiple_choice else "question"
    if key not in record:
        raise KeyError(f"engine record {record.get('id', '?')} has no {key!r}; make it with "
                       "mathvlm.engine.core.make_record(..., kind='instruct')")
    return str(record[key])


ANSWER_FORMS = ("cot", "short", "letter")


def engine_target(record: dict, multiple_choice: bool = False, answer: str = "cot") -> str:
    """The assistant turn: the chain of thought ending with the answer line (``answer="cot"``), the
    answer line alone (``"short"``: ``The answer is X[, which is option L].``), or for multiple choice
    the letter alone (``"letter"``: ``The answer is option L.``; free-form questions keep the answer line)."""
    if answer not in ANSWER_FORMS:
        raise ValueError(f"engine answer form {answer!r}; forms: {ANSWER_FORMS}")
    if answer == "letter" and multiple_choice:
        return f"The answer is option {str(record['answer_mc']).strip().upper()}."
    text = str(record["cot_mc" if multiple_choice else "cot"])
    return text.strip().splitlines()[-1] if answer != "cot" else text


def engine_conversation(record: dict, multiple_choice: bool = False, *, with_target: bool = True,
                        answer: str = "cot") -> list[dict]:
    """``[{"role": "user", ...}, {"role": "assistant", ...}]`` for the chat templates
    (:mod:`mathvlm.data.templates`); ``with_target=False`` gives the generation prompt's user turn only."""
    user = (IMAGE_MARK if has_image(record) else "") + engine_prompt(record, multiple_choice)
    turns = [{"role": "user", "content": user}]
    if with_target:
        turns.append({"role": "assistant", "content": engine_target(record, multiple_choice, answer)})
    return turns


def _answer_line(response: str):
    # Whitespace runs collapsed first: on a long run of spaces the answer pattern backtracks for
    # minutes (a sampled completion can be one).
    lines = [" ".join(line.split()) for line in str(response).strip().splitlines() if line.strip()]
    for line in reversed(lines):  # the last answer line wins, as the CoT puts it last
        index = line.lower().rfind("the answer is")
        if index >= 0:
            return _ANSWER_LINE.match(line[index:])
    return None


def extract_answer(response: str) -> str | None:
    """The value ``X`` of the last ``The answer is X[, which is option L].`` line, or None."""
    match = _answer_line(response)
    return match.group(1).strip() if match else None


def extract_option(response: str, num_choices: int = 4) -> str | None:
    """The letter of ``which is option L`` on the answer line, or None (also when out of range)."""
    match = _answer_line(response)
    letter = match.group(2) if match and match.group(2) else None
    if letter is None and match:
        option = _OPTION.search(match.group(0)) or _LETTER_ONLY.match(match.group(1).strip())
        letter = option.group(1) if option else None
    if letter is not None and ord(letter.upper()) - ord("A") < num_choices:
        return letter.upper()
    return None


def _number(text: str) -> float | None:
    text = text.strip().replace(" ", "")
    if not _NUMBER.match(text):
        return None
    return float(Fraction(text))


def _forms(text: str) -> list[str]:
    """``[exact, decimal]`` of a number written the answer_text way, else ``[text]``."""
    match = _APPROX.match(text)
    return [(match.group(1) or match.group(2)).strip(), match.group(3)] if match else [text]


def same_answer(candidate: str, reference: str, reference_value: float | None = None) -> bool:
    """``candidate`` names the engine answer ``reference`` (``answer_text`` form, e.g. ``165/2 = 82.5``):
    its exact form, the decimal the reference displays, or (given ``reference_value``) the exact value."""
    candidate, reference = candidate.strip().rstrip("."), reference.strip()
    if candidate.lower() == reference.lower():
        return True
    forms, cand_forms = _forms(reference), _forms(candidate)
    if any(c.lower() == f.lower() for c in cand_forms for f in forms):
        return True
    value = _number(cand_forms[-1]) if cand_forms else None
    if value is None:
        return False
    # A number equals the reference's exact value, or the decimal it shows (rounded as displayed).
    shown = [_number(f) for f in forms]
    if any(s is not None and abs(s - value) <= 1e-9 * max(1.0, abs(s)) for s in shown):
        return True
    if reference_value is not None and reference_value == reference_value:  # not NaN
        return abs(value - reference_value) <= 1e-6 * max(1.0, abs(reference_value))
    return False


def is_correct(record: dict, response: str, multiple_choice: bool = False) -> bool:
    """Multiple choice: the option letter of the answer line (or the option whose text it names) is
    ``answer_mc``. Free form: the answer line's value is the record's ``answer`` (see :func:`same_answer`)."""
    value = record.get("answer_value")
    value = float(value) if value is not None else None
    if multiple_choice:
        choices = choice_list(record)
        letter = extract_option(response, len(choices) or 4)
        if letter is None:
            answer = extract_answer(response)
            named = [i for i, c in enumerate(choices) if answer is not None and same_answer(answer, c)]
            letter = chr(ord("A") + named[0]) if len(named) == 1 else None
        return letter is not None and letter == str(record["answer_mc"]).strip().upper()
    answer = extract_answer(response)
    return answer is not None and same_answer(answer, str(record["answer"]), value)
