"""Verifiable rewards for RL on engine problems (registry kind "reward"): pure functions of a sampled
completion and its problem record, ``fn(completion, record, **options) -> Reward``.

Rules (answers are read as :mod:`mathvlm.data.engine_prompts` reads them, from the last line holding
``The answer is X[, which is option L].``):

- ``correct``: 1.0 when the final answer is right, else 0.0. Multiple choice (``record["multiple_choice"]``
  truthy): the option letter (``which is option L`` or ``The answer is option L.``), or the option whose
  text the answer names, must be ``answer_mc`` (``engine_prompts.is_correct``). Free form: the answer is
  ``record["answer"]`` by ``engine_prompts.same_answer`` (exact form, shown decimal or ``answer_value``),
  else by math-verify on the exact form, with the engine's ``√``, ``·``, ``²`` written as LaTeX.
  Reasons: ``no_answer_line``, ``no_option``, ``wrong_option``, ``wrong_answer``, and ``unparseable``
  when reading the completion fails (it never raises on completion text).
- ``format``: 1.0 when the last non-empty line is the only answer line (a line starting ``The answer is``
  followed by an answer) and, with ``require_reasoning``, some non-empty line precedes it. Reasons:
  ``empty``, ``no_answer_line``, ``several_answer_lines``, ``answer_not_last``, ``no_reasoning``.
- ``length``: 0.0 up to ``max_chars`` characters, then ``-penalty * min(1, excess / max_chars)``
  (reason ``too_long``).

:func:`score_completions` sums weighted terms over a batch. No JAX or numpy; engine_prompts is imported
inside the functions because importing ``mathvlm.data`` pulls grain and JAX.
"""

from __future__ import annotations

import dataclasses
import re

from mathvlm import registry

REWARDS = ("correct", "format", "length")
_ANSWER_START = re.compile(r"^the answer is\s+\S", re.IGNORECASE)
_MATH_VERIFY_MAX_CHARS = 256  # longer answers are not handed to sympy
_MATH_VERIFY_TIMEOUT = 2  # seconds, per parse and per comparison (signal based: main thread only)


@dataclasses.dataclass(frozen=True)
class Reward:
    value: float
    reason: str | None = None  # why it is 0 (or penalised); None when the full reward is given


def _text(completion) -> str:
    """Completion as text (bytes decoded, None empty), each line's whitespace runs collapsed."""
    if isinstance(completion, bytes):
        completion = completion.decode("utf-8", errors="replace")
    text = "" if completion is None else str(completion)
    return "\n".join(" ".join(line.split()) for line in text.splitlines())


def _latex(text: str) -> str:
    """The engine's unicode math (``8√3``, ``√(x + 1)``, ``2·x``, ``r²``) as LaTeX math-verify parses."""
    text = re.sub(r"√\(([^()]*)\)", r"\\sqrt{\1}", text)
    text = re.sub(r"√(\d+(?:\.\d+)?|[A-Za-z])", r"\\sqrt{\1}", text)
    return text.replace("·", " \\cdot ").replace("²", "^2").replace("³", "^3")


def _same_free_form(answer: str, reference: str, value: float | None) -> bool:
    from mathvlm.data import engine_prompts
    from mathvlm.eval.mathverify_equal import equivalent

    if engine_prompts.same_answer(answer, reference, value):
        return True
    if len(answer) > _MATH_VERIFY_MAX_CHARS:
        return False
    exact = engine_prompts._forms(reference)[0]  # "165/2 = 82.5" -> "165/2"
    return equivalent(_latex(exact), _latex(answer), timeout_seconds=_MATH_VERIFY_TIMEOUT)


@registry.register("reward", "correct")
def correct_reward(completion, record) -> Reward:
    """1.0 for a right final answer, else 0.0 with the reason (see the module docstring)."""
    from mathvlm.data import engine_prompts

    multiple_choice = bool(record.get("multiple_choice"))
    # A malformed record is an error, not a zero reward: checked before the guard below.
    needed = "answer_mc" if multiple_choice else "answer"
    if needed not in record:
        raise KeyError(f"correct_reward: record {record.get('id', '?')} has no {needed!r}")
    value = None if multiple_choice else record.get("answer_value")
    value = None if value is None or float(value) != float(value) else float(value)  # NaN: no value
    try:
        text = _text(completion)
        answer = engine_prompts.extract_answer(text)
        if answer is None:
            return Reward(0.0, "no_answer_line")
        if not multiple_choice:
            right = _same_free_form(answer, str(record["answer"]), value)
            return Reward(1.0) if right else Reward(0.0, "wrong_answer")
        if engine_prompts.is_correct(record, text, True):
            return Reward(1.0)
        choices = engine_prompts.choice_list(record)
        letter = engine_prompts.extract_option(text, len(choices) or 4)
        named = [c for c in choices if engine_prompts.same_answer(answer, c)]
        return Reward(0.0, "wrong_option" if letter is not None or len(named) == 1 else "no_option")
    except Exception:  # noqa: BLE001  (any failure to read model text scores 0)
        return Reward(0.0, "unparseable")


@registry.register("reward", "format")
def format_reward(completion, record, *, require_reasoning: bool = True) -> Reward:
    """1.0 for reasoning followed by exactly one answer line, last (see the module docstring)."""
    lines = [line for line in _text(completion).splitlines() if line.strip()]
    if not lines:
        return Reward(0.0, "empty")
    answers = [i for i, line in enumerate(lines) if _ANSWER_START.match(line.strip())]
    if not answers:
        return Reward(0.0, "no_answer_line")
    if len(answers) > 1:
        return Reward(0.0, "several_answer_lines")
    if answers[0] != len(lines) - 1:
        return Reward(0.0, "answer_not_last")
    if require_reasoning and len(lines) == 1:
        return Reward(0.0, "no_reasoning")
    return Reward(1.0)


@registry.register("reward", "length")
def length_penalty(completion, record, *, max_chars: int = 512, penalty: float = 1.0) -> Reward:
    """0.0 up to ``max_chars`` characters, then a penalty growing linearly to ``-penalty`` at twice that."""
    if max_chars <= 0:
        raise ValueError(f"length_penalty: max_chars={max_chars} must be positive")
    text = completion.decode("utf-8", errors="replace") if isinstance(completion, bytes) else completion
    excess = len(text or "") - max_chars
    if excess <= 0:
        return Reward(0.0)
    return Reward(-float(penalty) * min(1.0, excess / max_chars), "too_long")


def score_completions(completions: list[str], records: list[dict], terms
                      ) -> tuple[list[float], dict[str, list[float]], dict[str, int]]:
    """Score each completion against its record with the weighted ``terms`` (dicts ``{"name": "correct",
    "weight": 1.0, **options}``, weight 1.0 by default; options go to the reward function).

    Returns the total ``sum(weight * value)`` per completion, each term's values by name, and how often
    each term gave each reason, keyed ``"name/reason"``. Unknown or repeated names and a length mismatch
    raise ValueError.
    """
    completions, records = list(completions), list(records)
    if len(completions) != len(records):
        raise ValueError(f"score_completions: {len(completions)} completions but {len(records)} records")
    known = registry.names("reward")
    parsed = []
    for term in terms:
        options = dict(term)
        name = options.pop("name", None)
        if name not in known:
            raise ValueError(f"unknown reward {name!r} in term {dict(term)}; rewards: {', '.join(known)}")
        if any(name == seen for seen, _, _ in parsed):
            raise ValueError(f"reward {name!r} appears twice in terms; give each reward once")
        parsed.append((name, float(options.pop("weight", 1.0)), options))
    totals = [0.0] * len(completions)
    values: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for name, weight, options in parsed:
        fn = registry.get("reward", name)
        values[name] = []
        for i, (completion, record) in enumerate(zip(completions, records)):
            reward = fn(completion, record, **options)
            values[name].append(reward.value)
            totals[i] += weight * reward.value
            if reward.reason is not None:
                key = f"{name}/{reward.reason}"
                counts[key] = counts.get(key, 0) + 1
    return totals, values, counts
