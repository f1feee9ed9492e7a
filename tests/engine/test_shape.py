"""The opt-in ``function_shape`` family: one ``(a, h, k)`` written as a line, a parabola, |x| and a sine
wave, always in that order, the drawn kind uniform among them, so only the picture (or the stated given)
tells the answer."""

import collections
import json

import numpy as np
import sympy as sp

from mathvlm.data import engine_prompts
from mathvlm.engine import core
from mathvlm.engine.common import FAMILIES
from mathvlm.engine.functions import SHAPES, X
from tests.engine.test_orientation import _expression  # option text → sympy

FAMILY = ("function_shape",)


def _records(n, seed=0, image_size=64):
    return [core.make_record(seed, i, kind="instruct", version="vision_dominant", image_size=image_size,
                             families=FAMILY) for i in range(n)]


def test_options_are_one_curve_in_four_kinds_and_the_drawn_kind_is_uniform():
    records = _records(120)
    drawn = collections.Counter(json.loads(r["spec"])["shape"] for r in records)
    assert set(drawn) == set(SHAPES)
    assert all(12 <= n <= 48 for n in drawn.values()), drawn  # 4 outcomes in 120 draws
    for r in records:
        shape = json.loads(r["spec"])["shape"]
        assert r["answer_mc"] == "ABCD"[SHAPES.index(shape)] and r["family"] == "function_shape"
        exprs = [_expression(o) for o in engine_prompts.choice_list(r)]
        # the options share (a, h, k): A - k is a·(x - h), and B, C, D are a·g(x - h) + k of that same u
        a_line = sp.diff(exprs[0], X)
        k = exprs[1].subs(X, sp.solve(sp.diff(exprs[1], X), X)[0])
        h = sp.solve(sp.Eq(exprs[0], k), X)[0]
        u = X - h
        expected = [a_line * u + k, a_line * u ** 2 + k, a_line * sp.Abs(u) + k, a_line * sp.sin(u) + k]
        for got, want in zip(exprs, expected):
            assert all(abs(float((got - want).subs(X, x))) < 1e-9 for x in (-6.3, -1.1, 0.7, 5.2)), (got, want)
        # the text-rich versions state the drawn expression, the vision-rich ones leave it to the plot
        drawn_option = engine_prompts.choice_list(r)["ABCD".index(r["answer_mc"])]
        assert drawn_option in r["question_text_dominant"]
        assert all(o not in r["question_vision_dominant"] for o in engine_prompts.choice_list(r))


def test_vision_dominant_text_is_one_question_for_every_kind():
    questions = {r["question_vision_dominant"] for r in _records(40)}
    assert questions == {"The graph of a function f is drawn. Which expression matches the graph of f?"}


def test_the_drawn_curve_is_the_answers_kind():
    """Measured on the drawn polyline (plot coordinates): straight for a line, one bend whose slope turns
    smoothly for a parabola, two straight arms for |x|, slopes changing sign again and again for a sine."""
    for i in range(40):
        problem = core.make_problem(5, i, families=FAMILY)
        shape = problem["spec"]["shape"]
        runs = [np.asarray(p["pts"]) for p in problem["scene"]["prims"] if p["kind"] == "line"]
        per_run = [np.diff(r[:, 1]) / np.diff(r[:, 0]) for r in runs]
        slopes = np.concatenate(per_run)
        turns = np.concatenate([np.abs(np.diff(s)) for s in per_run])
        sign_changes = int(np.sum(np.diff(np.sign(slopes[np.abs(slopes) > 1e-6])) != 0))
        if shape == "line":
            assert np.ptp(slopes) < 1e-6, problem["id"]
        elif shape == "abs":  # two constant slopes of opposite sign (the segment over the corner between)
            values, counts = np.unique(np.round(slopes, 6), return_counts=True)
            assert counts.sum() - np.sort(counts)[-2:].sum() <= 1 and sign_changes <= 2, problem["id"]
            assert np.prod(values[np.argsort(counts)[-2:]]) < 0, problem["id"]
        elif shape == "parabola":  # slope changes by the same small step everywhere, one sign change
            assert np.ptp(turns) < 1e-6 * turns.max() + 1e-9 and turns.max() > 0 and sign_changes <= 1, \
                (problem["id"], turns.min(), turns.max())
        else:
            assert sign_changes >= 3, (problem["id"], sign_changes)


def test_family_is_opt_in():
    default = {core.make_problem(0, i)["family"] for i in range(60)}
    assert default == set(FAMILIES) and "function_shape" not in default
