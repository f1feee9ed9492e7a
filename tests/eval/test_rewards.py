"""RL rewards (mathvlm.eval.rewards) on hand-written completions, against engine records and small dicts."""

from __future__ import annotations

import dataclasses
import functools
import random
import time

import pytest

from mathvlm import registry
from mathvlm.eval import rewards
from mathvlm.eval.rewards import REWARDS, Reward, correct_reward, format_reward, length_penalty, score_completions

HALF = {"id": "half", "answer": "165/2 = 82.5", "answer_value": 82.5}  # answer_text form of a rational
LETTERS = {"id": "letters", "answer": "4", "answer_value": 4.0, "choices": "-2\n8\n4\n-4", "answer_mc": "C",
           "multiple_choice": True}


@functools.lru_cache(maxsize=None)
def _engine(index: int, families: tuple | None = None) -> dict:
    from mathvlm.engine.core import make_record

    options = {"families": families} if families else {}
    record = make_record(0, index, kind="instruct", version="vision_dominant", image_size=64, **options)
    return {k: v for k, v in record.items() if "image" not in k}


def _record(key: str) -> dict:
    """Records by name; engine ones are checked so an engine change fails loudly here, not in a case."""
    if key == "half":
        return dict(HALF)
    if key == "letters":
        return dict(LETTERS)
    name, _, mode = key.partition(":")
    record = dict({"distance": lambda: _engine(1), "integral": lambda: _engine(2),
                   "shape": lambda: _engine(2, ("function_shape",))}[name]())
    expected = {"distance": ("2√2 ≈ 2.83", "8\n2√2\n4\n0", "B"), "integral": ("4", "-2\n8\n4\n-4", "C"),
                "shape": ("f(x) = -2·|x| - 2", None, "C")}[name]
    assert (record["answer"], record["answer_mc"]) == (expected[0], expected[2])
    assert expected[1] is None or record["choices"] == expected[1]
    record["multiple_choice"] = mode == "mc"
    return record


CORRECT_CASES = [
    # Multiple choice: the letter, the letter form, or the option text named.
    ("integral:mc", "Step 1: F(-2) - F(-3) = 4.\nThe answer is 4, which is option C.", 1.0, None),
    ("integral:mc", "Step 1: It is 4.\nThe answer is option C.", 1.0, None),
    ("integral:mc", "The answer is (C).", 0.0, "no_option"),
    ("integral:mc", "Step 1: It is 4.\nThe answer is 4.", 1.0, None),
    ("integral:mc", "The answer is 8, which is option B.", 0.0, "wrong_option"),
    ("integral:mc", "The answer is option B.", 0.0, "wrong_option"),
    ("integral:mc", "The answer is 8.", 0.0, "wrong_option"),
    ("integral:mc", "The answer is option E.", 0.0, "no_option"),  # only A-D exist
    ("integral:mc", "The answer is 4, which is option E.", 1.0, None),  # out of range: the text names C
    ("integral:mc", "The answer is 7.", 0.0, "no_option"),
    ("integral:mc", "I would pick C.", 0.0, "no_answer_line"),
    ("distance:mc", "The answer is 2√2 ≈ 2.83, which is option B.", 1.0, None),
    ("distance:mc", "The answer is \\sqrt{8}.", 0.0, "no_option"),  # multiple choice: no math-verify
    ("letters", "The answer is option c.", 1.0, None),
    # Free form: same_answer (exact form, shown decimal, value), then math-verify.
    ("half", "165/2 = 82.5\nThe answer is 82.5.", 1.0, None),
    ("half", "The answer is 165/2.", 1.0, None),
    ("half", "The answer is 165/2 = 82.5.", 1.0, None),
    ("half", "The answer is 82.50.", 1.0, None),
    ("half", "The answer is \\frac{165}{2}.", 1.0, None),  # math-verify
    ("half", "The answer is 82.", 0.0, "wrong_answer"),
    ("half", "The answer is 82.5, which is option A.", 1.0, None),  # free form ignores the letter
    ("distance", "The answer is 2√2.", 1.0, None),
    ("distance", "The answer is 2.83.", 1.0, None),
    ("distance", "The answer is 2.8284271.", 1.0, None),  # answer_value within 1e-6
    ("distance", "The answer is 2.8.", 0.0, "wrong_answer"),
    ("distance", "The answer is \\sqrt{8}.", 1.0, None),  # math-verify on 2\sqrt{2}
    ("distance", "The answer is 2\\sqrt{2}.", 1.0, None),
    ("distance", "The answer is √8.", 1.0, None),  # unicode √ rewritten as LaTeX
    ("integral", "The answer is 2+2.", 1.0, None),  # math-verify evaluates arithmetic
    ("integral", "The answer is 4 or 5.", 0.0, "wrong_answer"),
    ("integral", "The answer is -4.", 0.0, "wrong_answer"),
    ("integral", "the answer is 4", 1.0, None),
    ("shape", "The answer is f(x) = -2·|x| - 2.", 1.0, None),
    ("shape", "The answer is f(x) = -2|x| - 2.", 1.0, None),  # math-verify, · as \cdot
    ("shape", "The answer is -2|x|-2.", 1.0, None),
    ("shape", "The answer is f(x) = -2x - 2.", 0.0, "wrong_answer"),
    # Text that is not a usable answer.
    ("integral", "", 0.0, "no_answer_line"),
    ("integral", "\x00\ufffd", 0.0, "no_answer_line"),
    ("integral", b"\xff\xfe", 0.0, "no_answer_line"),
    ("integral", None, 0.0, "no_answer_line"),
    ("integral", "Step 1: hmm.\nThe answer is", 0.0, "no_answer_line"),
    ("integral", "The answer is \x00\ufffd.", 0.0, "wrong_answer"),
    ("integral", "The answer is \\frac{1}{.", 0.0, "wrong_answer"),
    ("integral", "The answer is " + "9" * 400 + ".", 0.0, "unparseable"),  # float overflow
    ("integral", "The answer is " + "9" * 5000 + ".", 0.0, "unparseable"),  # int digit limit
    ("half", "The answer is 82.5" + " " * 5000 + ".", 1.0, None),  # long space runs stay fast
]


@pytest.mark.parametrize("key,completion,value,reason", CORRECT_CASES)
def test_correct_reward(key, completion, value, reason):
    assert correct_reward(completion, _record(key)) == Reward(value, reason)


def test_correct_reward_engine_targets():
    for name in ("distance", "integral", "shape"):
        record = _record(name)
        assert correct_reward(record["cot"], record) == Reward(1.0)
        assert correct_reward(record["cot_mc"], {**record, "multiple_choice": True}) == Reward(1.0)


def test_correct_reward_record_errors_raise():
    with pytest.raises(KeyError, match="'answer'"):
        correct_reward("The answer is 4.", {"id": "x"})
    with pytest.raises(KeyError, match="'answer_mc'"):
        correct_reward("The answer is 4.", {"id": "x", "answer": "4", "multiple_choice": True})


def test_correct_reward_never_raises_on_noise():
    rng = random.Random(0)
    alphabet = "0123456789+-*/^()[]{}\\=.,√·πx \n\t\x00\ufffd" + "frac sqrt which is option ABCDE"
    start = time.time()
    for i in range(60):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        text = ("The answer is " if i % 2 else "") + body
        for record in (_record("half"), _record("integral:mc")):
            reward = correct_reward(text, record)
            assert reward.value in (0.0, 1.0) and (reward.reason is None) == (reward.value == 1.0)
        assert format_reward(text, None).value in (0.0, 1.0)
    assert time.time() - start < 60


FORMAT_CASES = [
    ("Step 1: 2 + 2 = 4.\nThe answer is 4.", True, 1.0, None),
    ("Step 1: 2 + 2 = 4.\n\nThe answer is 4, which is option C.\n\n", True, 1.0, None),
    ("Step 1: 2 + 2 = 4.\nThe answer is option C.", True, 1.0, None),
    ("", True, 0.0, "empty"),
    (" \n\n\t ", True, 0.0, "empty"),
    ("\x00\ufffd", True, 0.0, "no_answer_line"),
    ("Step 1: 2 + 2 = 4.\nThe answer is", True, 0.0, "no_answer_line"),
    ("Step 1: 2 + 2 = 4.\nSo the answer is 4.", True, 0.0, "no_answer_line"),  # must start the line
    ("Step 1: 2 + 2 = 4.\nThe answer is 4.\nBecause it is.", True, 0.0, "answer_not_last"),
    ("Step 1.\nThe answer is 4.\nThe answer is 5.", True, 0.0, "several_answer_lines"),
    ("The answer is 4.\nStep 1.\nThe answer is 4.", True, 0.0, "several_answer_lines"),
    ("The answer is 4.", True, 0.0, "no_reasoning"),
    ("\n  The answer is 4.  \n", True, 0.0, "no_reasoning"),
    ("The answer is 4.", False, 1.0, None),
    ("Step 1: 2 + 2 = 4.\nThe answer is 4.", False, 1.0, None),
]


@pytest.mark.parametrize("completion,require_reasoning,value,reason", FORMAT_CASES)
def test_format_reward(completion, require_reasoning, value, reason):
    assert format_reward(completion, HALF, require_reasoning=require_reasoning) == Reward(value, reason)


def test_format_reward_engine_targets():
    record = _record("distance")
    assert format_reward(record["cot"], record) == Reward(1.0)
    assert format_reward(record["cot_mc"], record) == Reward(1.0)


LENGTH_CASES = [
    ("", {}, 0.0, None),
    ("a" * 512, {}, 0.0, None),
    ("a" * 513, {}, -1 / 512, "too_long"),
    ("a" * 768, {}, -0.5, "too_long"),
    ("a" * 1024, {}, -1.0, "too_long"),
    ("a" * 5000, {}, -1.0, "too_long"),
    ("a" * 15, {"max_chars": 10, "penalty": 0.5}, -0.25, "too_long"),
    ("é" * 10, {"max_chars": 10}, 0.0, None),  # characters, not bytes
]


@pytest.mark.parametrize("completion,options,value,reason", LENGTH_CASES)
def test_length_penalty(completion, options, value, reason):
    assert length_penalty(completion, HALF, **options) == Reward(value, reason)


def test_length_penalty_rejects_nonpositive_max():
    with pytest.raises(ValueError, match="max_chars=0"):
        length_penalty("abc", HALF, max_chars=0)


def test_registry_and_reward_type():
    # other tests may register rewards of their own in the same process
    assert set(REWARDS) <= set(registry.names("reward"))
    assert registry.get("reward", "correct") is correct_reward
    assert registry.get("reward", "format") is format_reward
    assert registry.get("reward", "length") is length_penalty
    with pytest.raises(dataclasses.FrozenInstanceError):
        Reward(1.0).value = 0.0


def test_score_completions_totals_values_and_reasons():
    completions = ["Step 1: halve 165.\nThe answer is 82.5.",  # correct, formatted, 38 chars
                   "The answer is 80.",                        # wrong, no reasoning
                   "I pick C, sure, C, definitely option C!"]  # no answer line, 39 chars
    records = [HALF, HALF, LETTERS]
    terms = [{"name": "correct", "weight": 1.0}, {"name": "format", "weight": 0.5},
             {"name": "length", "weight": 2.0, "max_chars": 20}]
    totals, values, counts = score_completions(completions, records, terms)
    assert values == {"correct": [1.0, 0.0, 0.0], "format": [1.0, 0.0, 0.0],
                      "length": [-0.9, 0.0, -0.95]}
    assert totals == pytest.approx([1.0 + 0.5 - 1.8, 0.0, -1.9], abs=1e-12)
    assert counts == {"correct/wrong_answer": 1, "correct/no_answer_line": 1, "format/no_reasoning": 1,
                      "format/no_answer_line": 1, "length/too_long": 2}


def test_score_completions_options_and_default_weight():
    totals, values, counts = score_completions(["The answer is 82.5."] * 2, [HALF, LETTERS],
                                               [{"name": "format", "require_reasoning": False},
                                                {"name": "correct", "weight": 3.0}])
    assert values == {"format": [1.0, 1.0], "correct": [1.0, 0.0]}
    assert totals == [4.0, 1.0]
    assert counts == {"correct/no_option": 1}
    assert score_completions([], [], [{"name": "correct"}]) == ([], {"correct": []}, {})


def test_score_completions_errors():
    with pytest.raises(ValueError, match="unknown reward 'accuracy'.*correct, format, length"):
        score_completions(["x"], [HALF], [{"name": "accuracy", "weight": 1.0}])
    with pytest.raises(ValueError, match="unknown reward None"):
        score_completions(["x"], [HALF], [{"weight": 1.0}])
    with pytest.raises(ValueError, match="2 completions but 1 records"):
        score_completions(["x", "y"], [HALF], [{"name": "correct"}])
    with pytest.raises(ValueError, match="'length' appears twice"):
        score_completions(["x"], [HALF], [{"name": "length"}, {"name": "length", "max_chars": 4}])


def test_module_imports_no_jax_or_numpy():
    source = open(rewards.__file__, encoding="utf-8").read()
    top = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top if "jax" in line or "numpy" in line or "mathvlm.data" in line]
