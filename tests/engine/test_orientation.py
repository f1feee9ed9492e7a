"""The opt-in ``function_orientation`` family: four orientations of one curve as the options, the drawn
one uniform among them, so only the picture tells the answer."""

import collections
import json

import numpy as np
import pytest
import sympy as sp
from ml_collections import ConfigDict

from mathvlm.data import engine_prompts, engine_rows
from mathvlm.engine import core
from mathvlm.engine.common import FAMILIES
from mathvlm.engine.functions import X

FAMILY = ("function_orientation",)


def _records(n, seed=0):
    return [core.make_record(seed, i, kind="instruct", version="vision_dominant", image_size=64,
                             families=FAMILY) for i in range(n)]


def _expression(option: str):
    """Parse an option back to sympy (``f(x) = 2·|x - 1| - 2``; piecewise options are skipped)."""
    body = option.split("=", 1)[1].strip().replace("·", "*").replace("^", "**")
    if " for " in body:
        return None
    while "|" in body:  # innermost |...| pairs: the engine writes at most one level
        start = body.index("|")
        end = body.index("|", start + 1)
        body = f"{body[:start]}Abs({body[start + 1:end]}){body[end + 1:]}"
    return sp.sympify(body, locals={"x": X})


def test_options_are_the_four_orientations_and_the_drawn_one_is_uniform():
    records = _records(120)
    drawn = collections.Counter(json.loads(r["spec"])["orientation"] for r in records)
    letters = collections.Counter(r["answer_mc"] for r in records)
    assert set(drawn) == {"f(x)", "-f(x)", "f(-x)", "-f(-x)"}
    # the options are always listed in one order, so the letter is the orientation
    for r in records:
        assert "ABCD"["f(x) -f(x) f(-x) -f(-x)".split().index(json.loads(r["spec"])["orientation"])] == \
            r["answer_mc"]
    assert set(letters) == set("ABCD")
    # uniform: each of 4 outcomes in 120 draws lands in [12, 48] unless something is biased
    assert all(12 <= n <= 48 for n in drawn.values()), drawn
    assert all(12 <= n <= 48 for n in letters.values()), letters
    checked = 0
    for r in records:
        options = engine_prompts.choice_list(r)
        assert len(set(options)) == 4 and r["family"] == "function_orientation"
        exprs = [_expression(o) for o in options]
        if any(e is None for e in exprs):
            continue
        answer = exprs["ABCD".index(r["answer_mc"])]
        # every option is an orientation of the answer, ±answer(±x), compared at sample inputs
        orientations = [answer, -answer, answer.subs(X, -X), -answer.subs(X, -X)]
        values = lambda e: np.array([float(e.subs(X, x)) for x in (-9.7, -5.3, -0.9, 0.4, 4.6, 8.9)])
        targets = [values(v) for v in orientations]
        for e in exprs:
            assert sum(np.allclose(values(e), t) for t in targets) == 1, (e, answer)
        # the text-rich versions state the drawn expression, the vision-rich ones leave it to the plot
        drawn = options["ABCD".index(r["answer_mc"])]
        assert drawn in r["question_text_dominant"] and drawn in r["question_text_lite"]
        assert all(o not in r["question_vision_dominant"] for o in options)
        # A opens upward with its vertex right of the y-axis: larger far out than at 0, and falling at 0
        a = exprs[0]
        assert float(a.subs(X, 50)) > float(a.subs(X, 0)) and float(a.subs(X, -0.01)) > float(a.subs(X, 0.01))
        checked += 1
    assert checked >= 60


def test_the_text_of_vision_dominant_questions_does_not_tell_the_orientation():
    """The question text is the same for every orientation of a kind: only the picture differs."""
    by_kind = collections.defaultdict(set)
    for r in _records(60):
        by_kind[r["skill"]].add(r["question"])
    assert by_kind and all(len(questions) == 1 for questions in by_kind.values()), by_kind


def test_family_is_opt_in_and_short_answers_end_the_chain_of_thought():
    record = _records(1)[0]
    default = {core.make_problem(0, i)["family"] for i in range(60)}
    assert default == set(FAMILIES) and "function_orientation" not in default
    letter = engine_prompts.engine_target(record, True, answer="letter")
    assert letter == f"The answer is option {record['answer_mc']}."
    assert engine_prompts.extract_option(letter) == record["answer_mc"]
    assert engine_prompts.is_correct(record, letter, multiple_choice=True)
    assert engine_prompts.engine_target(record, False, answer="letter") == record["cot"].splitlines()[-1]
    short = engine_prompts.engine_target(record, True, answer="short")
    assert short == record["cot_mc"].splitlines()[-1] and short.startswith("The answer is")
    assert engine_prompts.is_correct(record, short, multiple_choice=True)
    with pytest.raises(ValueError, match="answer form"):
        engine_prompts.engine_target(record, True, answer="long")


def test_engine_vlm_rows_with_short_answers_and_several_versions():
    config = ConfigDict({"source": "engine_vlm", "task": "instruct", "families": FAMILY, "answer": "short",
                         "version": "vision_dominant, text_dominant", "multiple_choice": 1.0,
                         "tokenizer": "engine", "template": "plain", "seq_len": 400, "image_size": 64,
                         "num_image_tokens": 64, "render_size": 64})
    from mathvlm.data.tokenization import load_tokenizer

    source = engine_rows.EngineVLMSource(config, seed=0, tokenizer=load_tokenizer("engine"))
    row = source[0]
    assert row["skip_reason"] == 0
    target = np.asarray(row["targets"])[np.asarray(row["loss_mask"]) > 0]
    text = load_tokenizer("engine").decode([int(t) for t in target])
    assert text.startswith("The answer is") and "Step" not in text
    assert source.versions == ("vision_dominant", "text_dominant")
    with pytest.raises(ValueError, match="data.answer"):
        engine_rows.EngineVLMSource(ConfigDict({**config.to_dict(), "answer": "essay"}), seed=0,
                                    tokenizer=load_tokenizer("engine"))


def test_pair_rows_take_the_letter_answer_form():
    """Math-PUMA pairs: both members answer with the same letter line."""
    from mathvlm.data.tokenization import load_tokenizer

    config = ConfigDict({"source": "engine_vlm", "task": "pairs", "families": FAMILY, "answer": "letter",
                         "multiple_choice": 1.0, "tokenizer": "engine", "template": "plain", "seq_len": 400,
                         "image_size": 64, "num_image_tokens": 64, "render_size": 64})
    tokenizer = load_tokenizer("engine")
    row = engine_rows.EngineVLMSource(config, seed=0, tokenizer=tokenizer)[0]
    record = core.make_record(0, 0, kind="pairs", image_size=64, families=FAMILY)
    targets = {side: tokenizer.decode([int(t) for t in np.asarray(row[f"{side}_targets"])[
        np.asarray(row[f"{side}_loss_mask"]) > 0]]) for side in ("strong", "weak")}
    assert targets["strong"] == targets["weak"] == f"The answer is option {record['answer_mc']}."
