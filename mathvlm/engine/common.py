"""Shared helpers: exact-number formatting, convex overlap test, deterministic generators.

Every family's ``generate(rng)`` returns a *problem* dict:

``family``, ``skill``, ``complexity`` (0–3), ``spec`` (JSON-able: enough to recompute the answer),
``description`` (shape facts, shown as marks in the image), ``givens`` (list of (sentence, primitives):
the conditions, each drawable into the image), ``question`` (the ask), ``cot`` (forward steps),
``answer`` (sympy, exact), ``mistakes`` (sympy values of typical wrong solutions, used as distractors),
``scene`` (primitives for :mod:`render`), ``caption_facts`` (phrases for the caption).
"""

from __future__ import annotations

import re

import numpy as np
import sympy as sp

FAMILIES = ("plane_geometry", "analytic_geometry", "function")
# Opt-in families (``data.families``), never in the default mix: the visual-grounding probes of the toy
# experiments. ``function_orientation`` asks which of a curve's four orientations is drawn,
# ``function_shape`` which kind of curve (line, parabola, |x|, sine) is.
PROBE_FAMILIES = ("function_orientation", "function_shape")
ALL_FAMILIES = FAMILIES + PROBE_FAMILIES
# The seed range of each split: the train split uses ``seed``, held-out uses ``seed + HELDOUT_OFFSET``; with
# seeds below 10**6 the ranges never meet.
HELDOUT_OFFSET = 10**6


def fmt(value) -> str:
    """Exact value as readable text: ``8*sqrt(3)`` → ``8√3``, ``pi/2`` → ``π/2``."""
    e = sp.sympify(value) if not isinstance(value, sp.Basic) else value
    text = sp.sstr(sp.simplify(e) if e.count_ops() > 12 else e)
    # sympy's log is the natural log; "ln" keeps it apart from the log_b(...) of the function texts
    text = re.sub(r"\blog\(", "ln(", text)
    text = text.replace("sqrt", "√").replace("pi", "π").replace("**", "^")
    for a in "0123456789)":
        text = text.replace(f"{a}*√", f"{a}√").replace(f"{a}*π", f"{a}π")
    text = re.sub(r"√\((\d+)\)", r"√\1", text)
    return text.replace("*", "·")


def article(phrase: str) -> str:
    """``phrase`` with "a" or "an" by its first sound: "an absolute value", "a unit", "an 8", "an x-axis"."""
    word = phrase.split()[0].lower() if phrase.split() else ""
    vowel_sound = (word[:1] in "aeio" or (word[:1] == "u" and not word.startswith(("uni", "use", "usu")))
                   or word[:1] in "8" or (len(word) == 1 and word in "fhlmnrsx") or word.startswith(("hour", "honest")))
    return ("an " if vowel_sound and word else "a ") + phrase


def numeric(value) -> float:
    return float(sp.N(value, 15))


def answer_text(value) -> str:
    """Exact form plus its numeric value when they differ: ``8√3 ≈ 13.86``."""
    exact = fmt(value)
    num = numeric(value)
    if value.is_Integer:
        return exact
    if value.is_Rational:
        return f"{exact} = {num:.4g}"
    return f"{exact} ≈ {num:.2f}"


def _axes(poly):
    p = np.asarray(poly, dtype=float)
    edges = np.roll(p, -1, axis=0) - p
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    norms = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals[norms[:, 0] > 1e-9] / norms[norms[:, 0] > 1e-9]


def convex_overlap(a, b, tol: float = 1e-6) -> bool:
    """Separating-axis test for convex polygons; sharing an edge or a vertex does not count."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(np.ptp(a), np.ptp(b), 1.0)
    for axis in np.concatenate([_axes(a), _axes(b)]):
        pa, pb = a @ axis, b @ axis
        if pa.max() <= pb.min() + tol * scale or pb.max() <= pa.min() + tol * scale:
            return False
    return True


def overlaps(poly, others) -> bool:
    return any(convex_overlap(poly, o) for o in others)
