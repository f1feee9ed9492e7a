"""Texts of a problem: MathVerse versions, captions, multiple-choice options and the chain-of-thought.

Versions (what the text states / what the image shows):

=================  ====================================================  =====================================
version            text                                                  image
=================  ====================================================  =====================================
text_dominant      description + every given + question                  figure, letters, marks
text_lite          every given + question (descriptive facts dropped)    figure, letters, marks
vision_intensive   the first half of the givens + question               + the other half of the givens
vision_dominant    description + question (no given values)              + every given
vision_only        an instruction only                                   + every given + the question
text_only          same as text_dominant                                 none (Math-PUMA stage 1)
=================  ====================================================  =====================================

Math-PUMA stage-2 pairs: text-rich = text_dominant, vision-rich = vision_dominant (same answer, same CoT).
"""

from __future__ import annotations

import re

import numpy as np
import sympy as sp

from mathvlm.engine.common import answer_text, fmt, numeric

VERSIONS = ("text_dominant", "text_lite", "vision_intensive", "vision_dominant", "vision_only", "text_only")
VISION_ONLY_INSTRUCTION = "Answer the question shown in the image."
_OPENERS = ["The figure shows the following. ", "In the diagram, ", "This image depicts a figure: ",
            "Shown here: ", "The picture illustrates how the shapes fit together. ", ""]
_JOINERS = [" Next, ", " Then, ", " Adjacent to it, ", " In addition, ", " Also, ", " "]
_MC_PROMPTS = ["Choose the correct option.", "Select the right answer from the choices.",
               "Pick one of the options below.", "Which choice is correct?"]


def _sentence(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "?")) else ".")


def version_layers(problem: dict, version: str) -> tuple[set[str], bool]:
    """(layers to draw, question drawn into the image)."""
    n = len(problem["givens"])
    every = {f"given:{i}" for i in range(n)}
    if version in ("text_dominant", "text_lite", "text_only"):
        return {"base"}, False
    if version == "vision_intensive":
        return {"base"} | {f"given:{i}" for i in range(n // 2, n)}, False
    return {"base"} | every, version == "vision_only"


def version_text(problem: dict, version: str) -> str:
    givens = [g for g, _ in problem["givens"]]
    description = [_sentence(d) for d in problem["description"]]
    if version in ("text_dominant", "text_only"):
        parts = description + ([_sentence("Given " + ", ".join(givens))] if givens else [])
    elif version == "text_lite":
        parts = [_sentence("Given " + ", ".join(givens))] if givens else []
    elif version == "vision_intensive":
        kept = givens[: len(givens) // 2]
        parts = [_sentence("Given " + ", ".join(kept))] if kept else []
    elif version == "vision_dominant":
        parts = description
    else:
        return VISION_ONLY_INSTRUCTION
    return " ".join(parts + [problem["question"]])


def caption(problem: dict, rng: np.random.Generator) -> str:
    """MAVIS-Caption style: the generation trace replayed through varied phrase templates."""
    facts = [f for f in problem["caption_facts"]]
    text = _OPENERS[rng.integers(len(_OPENERS))]
    for i, fact in enumerate(facts):
        text += _JOINERS[rng.integers(len(_JOINERS))] if i else ""
        sentence = _sentence(fact)
        if text.endswith(", "):  # mid-sentence after "In the diagram, " keeps lower case
            sentence = fact[0].lower() + sentence[1:] if not fact[:2].isupper() else sentence
        text += sentence
    givens = [g for g, _ in problem["givens"]]
    if givens:
        lead = ["The marked values are ", "It is labelled with ", "Annotations read ", "The diagram gives "]
        text += " " + lead[rng.integers(len(lead))] + ", ".join(givens) + "."
    return text.strip()


def _value_equal(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    try:
        return abs(numeric(a) - numeric(b)) < 1e-6 * max(1.0, abs(numeric(a)))
    except (TypeError, ValueError):
        return True  # not comparable (complex, undefined): treat as a clash so it is skipped


_INTEGER = re.compile(r"(?<![\w/.])-?\d+(?![\w/.])")


def _numeric_slips(answer: str) -> list[str]:
    """``(3, -2)`` → ``(4, -2)``, ``(2, -2)``, ``(3, -1)``, ...: each whole number of a written answer
    moved by one (fractions and decimals are left alone)."""
    out = []
    for match in _INTEGER.finditer(answer):
        for delta in (1, -1):
            value = int(match.group()) + delta
            out.append(answer[:match.start()] + str(value) + answer[match.end():])
    return out


def choices(problem: dict, rng: np.random.Generator) -> tuple[list[str], int]:
    """Four options: the answer plus typical-mistake values; returns (option texts, answer index).
    A problem with ``ordered_options`` lists those, in that order (the answer among them)."""
    answer = problem["answer"]
    if problem.get("ordered_options"):
        texts = list(problem["ordered_options"])
        return texts, texts.index(answer)
    picked = []
    for m in problem["mistakes"]:
        if not isinstance(m, str):
            m = sp.sympify(m)
            if not m.is_real:
                continue
        if not _value_equal(m, answer) and all(not _value_equal(m, p) for p in picked):
            picked.append(m)
        if len(picked) == 3:
            break
    k = 2
    while len(picked) < 3 and not isinstance(answer, str):  # arithmetic slips as the last resort
        for cand in (answer + k - 1, answer * k, answer - k):
            if len(picked) < 3 and all(not _value_equal(cand, p) for p in picked + [answer]):
                picked.append(sp.sympify(cand))
        k += 1
    if isinstance(answer, str):  # a written answer: nudge its numbers (a coordinate or bound off by one)
        for cand in _numeric_slips(answer):
            if len(picked) < 3 and all(cand != str(p) for p in picked + [answer]):
                picked.append(cand)
    for filler in ("none of these", "cannot be determined", "all of these"):
        if len(picked) < 3:
            picked.append(filler)
    options = [answer] + picked
    order = rng.permutation(4)
    texts = [o if isinstance(o, str) else fmt(o) for o in (options[i] for i in order)]
    return texts, int(np.argmax(order == 0))


def answer_string(answer) -> str:
    return answer if isinstance(answer, str) else answer_text(answer)


def cot_text(problem: dict, mc_letter: str | None = None) -> str:
    steps = [f"Step {i + 1}: {s}" for i, s in enumerate(problem["cot"])]
    end = f"The answer is {answer_string(problem['answer'])}."
    if mc_letter:
        end = end[:-1] + f", which is option {mc_letter}."
    return "\n".join(steps + [end])


def listed_options(options: list[str]) -> str:
    return "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(options))


def mc_question(text: str, options: list[str], rng: np.random.Generator, listed: bool = True) -> str:
    """The MC form; ``listed=False`` (vision-only) leaves the options out of the text: they are drawn."""
    prompt = _MC_PROMPTS[rng.integers(len(_MC_PROMPTS))]
    if not listed:
        return f"{text}\n{prompt}"
    return f"{text}\n{prompt}\n{listed_options(options)}"
