"""Function plots: polynomial, sin, cos, tan, log, |x|, piecewise polynomial with random coefficients.

The expression is the given condition (stated in the text, or written on the plot in vision versions);
zeros and extrema are optionally marked with red dots when the question is not about them. Inputs x0 of
value/derivative questions are "nice" (special angles, whole powers of the log base) so answers are exact
and readable. For "which expression" the expression is the answer, so the givens are two marked points that
rule out every distractor. Questions:
value, zeros, extremum, monotonic interval, symmetry axis, period, derivative value, integral value and
identifying the expression. Complexity: value/identify 0, zeros/symmetry/period 1, extremum/monotonic/
derivative 2, integral 3.
"""

from __future__ import annotations

import re

import numpy as np
import sympy as sp

from mathvlm.engine.common import article, fmt

X = sp.Symbol("x", real=True)
KINDS = ("polynomial", "sin", "cos", "tan", "log", "abs", "piecewise")
_KIND_NAMES = {"abs": "absolute value", "sin": "sine", "cos": "cosine", "tan": "tangent", "log": "logarithmic"}
LEVEL = {"value": 0, "identify": 0, "zeros": 1, "symmetry": 1, "period": 1, "extremum": 2, "monotonic": 2,
         "derivative": 2, "integral": 3}


def _nz(rng, lo, hi):
    v = 0
    while v == 0:
        v = int(rng.integers(lo, hi + 1))
    return v


def make_expression(rng, kind):
    """(sympy expression, properties used by the questions) — coefficients small so the plot reads."""
    if kind == "polynomial":
        if rng.random() < 0.7:  # quadratic from integer roots: exact zeros, vertex and axis
            r1, r2 = sorted(int(v) for v in rng.choice(np.arange(-5, 6), size=2, replace=False))
            a = sp.Rational(_nz(rng, -2, 2), int(rng.choice([1, 2])))
            return sp.expand(a * (X - r1) * (X - r2)), {"roots": [r1, r2], "a": a}
        r = sorted(int(v) for v in rng.choice(np.arange(-4, 5), size=3, replace=False))
        a = sp.Rational(_nz(rng, -1, 1), int(rng.choice([2, 4, 8])))
        return sp.expand(a * (X - r[0]) * (X - r[1]) * (X - r[2])), {"roots": r}
    if kind in ("sin", "cos"):
        a, b, d = _nz(rng, -3, 3), sp.Rational(int(rng.choice([1, 2, 1])), int(rng.choice([1, 2]))), int(rng.integers(-2, 3))
        f = {"sin": sp.sin, "cos": sp.cos}[kind]
        return a * f(b * X) + d, {"amplitude": abs(a), "b": b, "d": d}
    if kind == "tan":
        b = sp.Rational(1, int(rng.choice([1, 2])))
        return _nz(rng, -2, 2) * sp.tan(b * X), {"b": b}
    if kind == "log":
        c = int(rng.integers(-3, 4))
        base = int(rng.choice([2, 3, 10]))
        return _nz(rng, -3, 3) * sp.log(X + c, base), {"c": c, "base": base}
    if kind == "abs":
        h, k = int(rng.integers(-4, 5)), int(rng.integers(-4, 3))
        return _nz(rng, -2, 2) * sp.Abs(X - h) + k, {"h": h, "k": k}
    t = int(rng.integers(-2, 3))
    left = sp.expand(_nz(rng, -2, 2) * (X - t) + int(rng.integers(-3, 4)))
    right = left.subs(X, t) + sp.Rational(_nz(rng, -2, 2), 2) * (X - t) ** 2
    return sp.Piecewise((left, X < t), (sp.expand(right), True)), {"t": t}


def _domain(kind, props):
    if kind == "log":  # base 10 reaches x + c = 10, so one more whole power of the base is on the plot
        return -props["c"] + 0.05, -props["c"] + (11.0 if props["base"] == 10 else 8.0)
    if kind == "tan":
        return -6.0, 6.0
    return -7.0, 7.0


def _sample(expr, lo, hi):
    f = sp.lambdify(X, expr, modules="numpy")
    xs = np.linspace(lo, hi, 400)
    with np.errstate(all="ignore"):
        ys = np.broadcast_to(np.asarray(f(xs), dtype=float), xs.shape)
    return xs, ys


def _questions(kind, expr, props):
    q = ["value", "derivative", "identify"]
    if kind == "polynomial":
        q += ["zeros", "integral"] + (["extremum", "symmetry", "monotonic"] if len(props["roots"]) == 2 else [])
    if kind in ("sin", "cos"):
        q += ["extremum", "period", "integral"]
    if kind == "tan":
        q += ["period"]
    if kind == "abs":
        q += ["extremum", "symmetry", "zeros"]
    if kind == "log":
        q += ["zeros"]
    if kind == "piecewise":
        q += ["integral"]
    return q


# Arguments of sin/cos/tan with exact values: f(x0) at x0 = 1 would be tan(1), transcendental, unreadable
# as an exact answer and useless as a typical-mistake option.
_TRIG_ARGS = [k * sp.pi / q for q in (6, 4, 3, 2) for k in range(-2 * q, 2 * q + 1)]


def nice_xs(kind, props, lo, hi) -> list:
    """Inputs where f has an exact, readable value: integers for polynomials, |x| and piecewise (not at
    the kink: no derivative there), special angles for sin/cos/tan (tan away from its asymptotes), and
    x + c a whole power of the base for log. Sorted, within [lo, hi]."""
    if kind == "log":
        powers = [props["base"] ** k for k in range(3)]
        xs = [sp.Integer(p - props["c"]) for p in powers]
    elif kind in ("sin", "cos", "tan"):
        args = [t for t in set(_TRIG_ARGS) if kind != "tan" or abs(float(t)) < np.pi / 2 - 0.1]
        xs = [t / props["b"] for t in args]
    else:
        kink = props.get("h", props.get("t")) if kind in ("abs", "piecewise") else None
        xs = [sp.Integer(v) for v in range(-4, 5) if v != kink]
    return sorted({x for x in xs if lo <= float(x) <= hi}, key=float)


def _pick_x(rng, kind, props, lo, hi):
    xs = nice_xs(kind, props, lo, min(hi, 6.5))
    return xs[rng.integers(len(xs))]


def generate(rng: np.random.Generator) -> dict:
    kind = KINDS[rng.integers(len(KINDS))]
    expr, props = make_expression(rng, kind)
    lo, hi = _domain(kind, props)
    skills = _questions(kind, expr, props)
    skill = skills[rng.integers(len(skills))]
    return _problem(rng, kind, expr, props, lo, hi, skill)


# Curves whose orientation reads off the picture as two coarse features: which way they open (the sign
# of the leading coefficient) and on which side of the y-axis the vertex lies.
ORIENTATION_KINDS = ("polynomial", "abs")
ORIENTATIONS = ("f(x)", "-f(x)", "f(-x)", "-f(-x)")


def _orientation_base(rng, kind):
    """A quadratic or |x| curve with its vertex off the y-axis, turned to open upward with the vertex on
    the right: its four orientations are then up-right, down-right, up-left and down-left."""
    for _ in range(50):
        expr, props = make_expression(rng, kind)
        vertex = sp.Rational(sum(props.get("roots", [])), 2) if kind == "polynomial" else props["h"]
        if kind == "polynomial" and len(props["roots"]) != 2 or vertex == 0:
            continue
        if sp.limit(expr, X, sp.oo) == -sp.oo:  # opens downward: flip it
            expr = -expr
        if vertex < 0:
            expr, props = sp.expand(expr.subs(X, -X)), _mirrored_props(kind, props)
        return expr, props
    raise RuntimeError(f"no {kind} curve with its vertex off the y-axis")  # pragma: no cover


def _mirrored_props(kind, props):
    """The properties of f(-x): vertex, roots and kink move to the other side."""
    props = dict(props)
    if "h" in props:
        props["h"] = -props["h"]
    if "t" in props:
        props["t"] = -props["t"]
    if "roots" in props:
        props["roots"] = sorted(-r for r in props["roots"])
    return props


def generate_orientation(rng: np.random.Generator) -> dict:
    """"Which expression matches the graph?" with one curve's four orientations as the options, always
    listed in the same order — A opens up with its vertex right of the y-axis, B down-right, C up-left,
    D down-left — and the drawn one uniform among them. Without the picture (or the given) nothing tells
    the answer (25%); with it the letter is two coarse visual features that show at any resolution: the
    visual-grounding probe of the toy experiments (family ``function_orientation``). The given, stated
    in the text versions and boxed on the plot in the others, is the drawn expression: text-rich and
    vision-rich twins (Math-PUMA) that differ in where the answer can be read."""
    kind = ORIENTATION_KINDS[rng.integers(len(ORIENTATION_KINDS))]
    base, props = _orientation_base(rng, kind)
    variants = [base, -base, base.subs(X, -X), -base.subs(X, -X)]
    drawn = int(rng.integers(4))
    if drawn >= 2:
        props = _mirrored_props(kind, props)
    lo, hi = _domain(kind, props)
    others = [v for i, v in enumerate(variants) if i != drawn]
    problem = _problem(rng, kind, variants[drawn], props, lo, hi, "identify", identify_options=others,
                       with_points=False)
    problem["family"], problem["skill"] = "function_orientation", f"{kind}_orientation"
    problem["spec"]["orientation"] = ORIENTATIONS[drawn]
    problem["ordered_options"] = [f"f(x) = {_pretty(v)}" for v in variants]
    f_text = problem["answer"]
    problem["cot"] = [f"The plotted curve opens {'downward' if drawn % 2 else 'upward'} and its vertex lies "
                      f"{'left' if drawn >= 2 else 'right'} of the y-axis.",
                      f"Of the options, only {f_text} has that shape."]
    return problem


# The curve kinds of ``function_shape``, in the order its options list them (A line … D sine wave).
SHAPES = ("line", "parabola", "abs", "sine")


def _shape_variants(a, h, k):
    """``a·g(x − h) + k`` for g = identity, square, |·| and sin: one set of numbers, four curve kinds."""
    u = X - h
    return [a * u + k, a * u ** 2 + k, a * sp.Abs(u) + k, a * sp.sin(u) + k]


def generate_shape(rng: np.random.Generator) -> dict:
    """"Which expression matches the graph?" with the options ``a·g(x − h) + k`` for one ``(a, h, k)`` and
    g a line, a parabola, |x| and a sine wave, always in that order, the drawn one uniform among them. The
    question names no kind ("a function f"), so without the picture (or the given) a model scores 25%;
    with it the letter is the kind of curve, which every stretch of the curve shows (a straight run, a
    bend, a corner, a wave) wherever it lies on the plot — a feature a small image tower pools easily,
    unlike ``function_orientation``'s, which lives in where the vertex sits. The visual-grounding probe of
    the toy experiments (family ``function_shape``); the given, stated in the text versions and boxed on
    the plot in the others, is the drawn expression."""
    a = sp.Integer(_nz(rng, -2, 2))
    h, k = int(rng.integers(-3, 4)), int(rng.integers(-3, 4))
    variants = _shape_variants(a, h, k)
    drawn = int(rng.integers(len(SHAPES)))
    kind, props = {"line": ("polynomial", {"roots": []}),
                   "parabola": ("polynomial", {"roots": [h, h]}),
                   "abs": ("abs", {"h": h, "k": k}),
                   "sine": ("sin", {"amplitude": abs(int(a)), "b": sp.Integer(1), "d": k})}[SHAPES[drawn]]
    others = [v for i, v in enumerate(variants) if i != drawn]
    problem = _problem(rng, kind, variants[drawn], props, -7.0, 7.0, "identify", identify_options=others,
                       with_points=False)
    problem["family"], problem["skill"] = "function_shape", f"{SHAPES[drawn]}_shape"
    problem["spec"]["shape"] = SHAPES[drawn]
    problem["description"] = ["the graph of a function f is drawn"]
    problem["ordered_options"] = [f"f(x) = {_pretty(v)}" for v in variants]
    shape_words = {"line": "a straight line", "parabola": "a parabola", "abs": "a V with a sharp corner",
                   "sine": "a wave"}
    problem["cot"] = [f"The plotted curve is {shape_words[SHAPES[drawn]]}.",
                      f"Of the options, only {problem['answer']} has that shape."]
    return problem


def _expression_given(f_text, x_lo, y_hi):
    """``f(x) = ...`` as a given: stated in the text versions, boxed in the plot's corner in the others."""
    return (f_text, [{"kind": "text", "pt": (x_lo, y_hi), "text": f_text, "dir": (0.0, -1.0), "boxed": True,
                      "layer": "given:0", "accent": True, "small": True}])


def _problem(rng, kind, expr, props, lo, hi, skill, identify_options=None, with_points=True) -> dict:
    """The problem asking ``skill`` about the graph of ``expr`` on [lo, hi]; ``identify_options`` replaces
    the usual distractors of "which expression" (sign flip, mirror image, shifts, stretch).
    ``with_points=False``: "which expression" keeps the expression itself as its given (the probe
    families, whose options differ in a shape the plot shows) instead of two marked points."""
    spec = {"kind": kind, "expr": sp.srepr(expr), "skill": skill}
    f_text = f"f(x) = {_pretty(expr)}"
    x0 = _pick_x(rng, kind, props, lo, hi)
    marks = []
    if skill == "value":
        answer = _exact(expr.subs(X, x0))
        question = f"What is the value of f({fmt(x0)})?"
        cot = [f"Substitute x = {fmt(x0)}: f({fmt(x0)}) = {_pretty(expr).replace('x', f'({fmt(x0)})')} = {fmt(answer)}."]
        mistakes = [expr.subs(X, -x0), sp.diff(expr, X).subs(X, x0), answer + 1]
        spec["x0"] = sp.sstr(x0)
    elif skill == "derivative":
        d = sp.diff(expr, X)
        answer = _exact(d.subs(X, x0))
        question = f"What is the value of the derivative f'({fmt(x0)})?"
        cot = [f"Differentiate: f'(x) = {_pretty(d)}.", f"So f'({fmt(x0)}) = {fmt(answer)}."]
        mistakes = [expr.subs(X, x0), -answer, sp.diff(d, X).subs(X, x0)]
        spec["x0"] = sp.sstr(x0)
    elif skill == "integral":
        a, b = sorted(int(v) for v in rng.choice(np.arange(-3, 4), size=2, replace=False))
        F = sp.integrate(expr, X)
        answer = sp.simplify(sp.integrate(expr, (X, a, b)))
        question = f"What is the value of the integral of f(x) from x = {a} to x = {b}?"
        cot = [f"An antiderivative is F(x) = {_pretty(sp.simplify(F))}.", f"F({b}) - F({a}) = {fmt(answer)}."]
        mistakes = [-answer, expr.subs(X, b) - expr.subs(X, a), answer * 2]
        spec["bounds"] = [a, b]
    elif skill == "zeros":
        zeros = sorted(sp.solve(sp.Eq(expr, 0), X), key=float) if kind != "abs" else \
            sorted(sp.solve(sp.Eq(expr.rewrite(sp.Piecewise), 0), X), key=float)
        zeros = [z for z in zeros if z.is_real]
        answer = ", ".join(f"x = {fmt(z)}" for z in zeros) if zeros else "no zeros"
        question = "What are the zeros of f(x)?"
        cot = [f"Solve {_pretty(expr)} = 0.", f"The solutions are: {answer}."]
        mistakes = [", ".join(f"x = {fmt(-z)}" for z in zeros) or "x = 0", "x = 0", "no zeros"]
        # when those collapse (no zeros, or a zero at 0), a zero off by one is the next typical slip
        mistakes += [", ".join(f"x = {fmt(z + d)}" for z in zeros) or f"x = {d}" for d in (1, -1, 2)]
    elif skill in ("extremum", "symmetry", "monotonic"):
        if kind == "polynomial":
            h = sp.Rational(sum(props["roots"]), 2)
        else:
            h = sp.Integer(props.get("h", 0))
        k = sp.simplify(expr.subs(X, h))
        opens_up = sp.limit(expr, X, sp.oo) == sp.oo if kind != "sin" and kind != "cos" else None
        if skill == "symmetry":
            answer = f"x = {fmt(h)}"
            question = "What is the axis of symmetry of the graph of f?"
            cot = [f"The graph is symmetric about its vertex ({fmt(h)}, {fmt(k)}).", f"So the axis is {answer}."]
            mistakes = [f"x = {fmt(-h)}", f"y = {fmt(k)}", f"x = {fmt(k)}"]
        elif skill == "monotonic":
            answer = f"({fmt(h)}, ∞)" if opens_up else f"(-∞, {fmt(h)})"
            question = "On which interval is f increasing?"
            cot = [f"The vertex is at x = {fmt(h)} and the graph opens {'upward' if opens_up else 'downward'}.",
                   f"So f increases on {answer}."]
            mistakes = [f"(-∞, {fmt(h)})" if opens_up else f"({fmt(h)}, ∞)", f"({fmt(-h)}, ∞)", "(-∞, ∞)"]
        elif kind in ("sin", "cos"):
            answer = props["amplitude"] + props["d"]
            answer = sp.Integer(answer)
            question = "What is the maximum value of f(x)?"
            cot = [f"The amplitude is {props['amplitude']} and the vertical shift is {props['d']}.",
                   f"Maximum = {props['amplitude']} + ({props['d']}) = {answer}."]
            mistakes = [sp.Integer(props["amplitude"]), sp.Integer(props["d"] - props["amplitude"]), 2 * answer]
        else:
            answer = k
            question = f"What is the {'minimum' if opens_up else 'maximum'} value of f(x)?"
            cot = [f"The vertex is at x = {fmt(h)}.", f"f({fmt(h)}) = {fmt(k)}, the {'minimum' if opens_up else 'maximum'}."]
            mistakes = [h, -k, expr.subs(X, 0)]
    elif skill == "period":
        b = expr.atoms(sp.sin, sp.cos, sp.tan).pop().args[0].coeff(X)
        base = sp.pi if kind == "tan" else 2 * sp.pi
        answer = base / b
        question = "What is the smallest positive period of f?"
        cot = [f"The inner coefficient of x is {fmt(b)}.", f"Period = {fmt(base)} / {fmt(b)} = {fmt(answer)}."]
        mistakes = [base * b, 2 * base / b if kind == "tan" else sp.pi / b, base]
    else:
        answer = f_text
        question = "Which expression matches the graph of f?"
        # sign flip, mirror image, vertical shifts, stretch; those equal to f (a mirrored cos) are dropped
        cands = identify_options or [-expr, expr.subs(X, -X), expr + 1, expr - 1, 2 * expr]
        table = sp.lambdify(X, [expr] + cands, "numpy")  # one lambdify for all: each costs ~4 ms
        wrong_rows = [j + 1 for j in range(len(cands)) if not _same_function(table, j + 1)]
        wrong = [cands[r - 1] for r in wrong_rows]
        mistakes = [f"f(x) = {_pretty(w)}" for w in wrong]
        cot = []  # filled in once the two marked points are chosen (they need the visible range)
    # optional red dots with value labels (MAVIS function diagrams), never on what the question asks
    vertex = None
    if kind == "abs" or (kind == "polynomial" and len(props["roots"]) == 2):
        h = sp.Integer(props["h"]) if kind == "abs" else sp.Rational(sum(props["roots"]), 2)
        vertex = (h, sp.simplify(expr.subs(X, h)))
        if skill not in ("extremum", "symmetry", "monotonic", "identify") and rng.random() < 0.6:
            marks.append((vertex, (0.0, 1.0)))
    if kind == "polynomial" and skill not in ("zeros", "identify") and rng.random() < 0.6:
        marks += [((sp.Integer(z), sp.Integer(0)), (0.4, -1.0)) for z in props["roots"]]
    xs, ys = _sample(expr, lo, hi)
    finite = ys[np.isfinite(ys)]
    y_lo, y_hi = np.percentile(finite, [2, 98]) if finite.size else (-5, 5)
    # a steep curve may leave the frame, but the marked points and vertex stay visible
    keep = [float(vertex[1])] if vertex else []
    y_lo = min([max(y_lo, -12.0)] + keep)
    y_hi = max([min(y_hi, 12.0)] + keep)
    y_lo, y_hi = int(np.floor(min(y_lo, -1))) - 1, int(np.ceil(max(y_hi, 1))) + 1
    x_lo, x_hi = int(np.floor(min(lo, -1))), int(np.ceil(max(hi, 1)))
    prims = _curve(xs, ys, (y_lo, y_hi))
    for (mx, my), direction in marks:
        pt = (float(mx), float(my))
        prims.append({"kind": "dot", "pt": pt, "layer": "base"})
        prims.append({"kind": "text", "pt": pt, "text": f"({fmt(mx)}, {fmt(my)})", "dir": direction,
                      "small": True, "layer": "base", "accent": True})
    givens = [_expression_given(f_text, x_lo, y_hi)]
    if skill == "identify" and with_points:
        # The expression is the answer, so the conditions are two points of the graph chosen to tell it
        # apart from every distractor; like any given they are stated in the text versions and drawn (dot and
        # coordinates) in the vision versions, so the versions differ as they do for the other questions.
        points = _identify_points(rng, kind, props, expr, wrong_rows, table, lo, hi, (y_lo, y_hi))
        givens, names = [], []
        for i, (px_, py_) in enumerate(points):
            label = f"({fmt(px_)}, {fmt(py_)})"
            names.append(label)
            pt = (float(px_), float(py_))
            givens.append((f"the graph passes through {label}", [
                {"kind": "dot", "pt": pt, "layer": f"given:{i}"},
                {"kind": "text", "pt": pt, "text": label, "dir": (0.0, 1.0), "small": True,
                 "layer": f"given:{i}", "accent": True}]))
        spec["points"] = [[sp.sstr(a), sp.sstr(b)] for a, b in points]
        cot = [f"The graph passes through {' and '.join(names)}.",
               f"For {f_text}: " + ", ".join(f"f({fmt(a)}) = {fmt(b)}" for a, b in points) + ", both match.",
               "Each other option misses at least one of the points, so the graph is " + f_text + "."]
    return {
        "family": "function", "skill": f"{kind}_{skill}", "complexity": LEVEL[skill], "spec": spec,
        "description": [f"the graph of {article(_KIND_NAMES.get(kind, kind))} function f is drawn"],
        "givens": givens, "question": question, "cot": cot, "answer": answer, "mistakes": mistakes,
        "scene": {"frame": ((x_lo, x_hi), (y_lo, y_hi)), "prims": prims},
        "caption_facts": [f"the graph of {f_text} is plotted for x from {round(lo, 2):g} to {x_hi}",
                          f"the visible y-range is about {y_lo} to {y_hi}"],
    }


def _value(expr, x):
    """Exact value, or None when undefined or not real (a log of a negative number, a tan asymptote).
    Special angles evaluate on substitution; only log quotients (log(8)/log(2)) need simplify, which is
    slow, so it runs only on them."""
    v = _exact(expr.subs(X, x))
    return v if v.is_real and v.is_finite else None


def _exact(v):
    """Special angles evaluate on substitution (sin(π/6) → 1/2); only log quotients (log(8)/log(2)) and
    piecewise leftovers need ``simplify``, which costs tens of ms, so it runs only on them."""
    return sp.simplify(v) if v.has(sp.log, sp.Piecewise, sp.Abs) else v


# sample points where the distractors are compared with f numerically (a symbolic simplify of a Piecewise
# difference costs ~0.2 s, a third of the whole record budget)
_PROBES = (0.37, 1.21, 2.53, 3.9, -0.83)


def _same_function(table, j, i=0) -> bool:
    """Row ``j`` of the lambdified ``table`` equals row ``i`` (f) at every probe where f is defined."""
    with np.errstate(all="ignore"):
        rows = [[complex(v) for v in table(t)] for t in _PROBES]
    return all(abs(r[j] - r[i]) < 1e-9 or not np.isfinite(r[i]) for r in rows)


def _identify_points(rng, kind, props, expr, wrong_rows, table, lo, hi, y_range):
    """Two nice points of the graph, inside the plot, that every wrong expression misses at least once.
    At most 10 candidate inputs (drawn with ``rng``) get an exact value: each costs a sympy substitution."""
    xs = nice_xs(kind, props, lo, hi)
    xs = [xs[k] for k in sorted(rng.permutation(len(xs))[:10])]
    cands = [(x, _value(expr, x)) for x in xs]
    cands = [(x, y) for x, y in cands if y is not None and y_range[0] + 0.5 < float(y) < y_range[1] - 0.5]
    pairs = [(a, b) for i, a in enumerate(cands) for b in cands[i + 1:] if abs(float(a[0] - b[0])) >= 1]
    order = rng.permutation(len(pairs)) if pairs else []
    misses = {}  # (distractor, x) → the distractor's value differs from f's there (or is undefined)
    with np.errstate(all="ignore"):
        rows = {x: [complex(v) for v in table(float(x))] for x, _ in cands}
    for k in order:
        pair = pairs[k]
        for j in range(len(wrong_rows)):
            for x, y in pair:
                if (j, x) not in misses:
                    v = rows[x][wrong_rows[j]]
                    misses[(j, x)] = not np.isfinite(v) or abs(v - float(y)) > 1e-9
        if all(any(misses[(j, x)] for x, _ in pair) for j in range(len(wrong_rows))):
            return list(pair)
    return list(pairs[order[0]]) if pairs else cands[:2]


def _pretty(expr) -> str:
    expr = sp.piecewise_fold(expr)  # -Piecewise(...) and Piecewise(...) + 1 become one Piecewise
    if isinstance(expr, sp.Piecewise):
        (a, cond), (b, _) = expr.args[0], expr.args[1]
        # a mirrored piece reads -x < t, which sympy turns into x > -t: print the side it really covers
        x_less = isinstance(cond, sp.StrictLessThan) == (cond.lhs == X)
        t = cond.rhs if cond.lhs == X else cond.lhs
        first, rest = ("<", "≥") if x_less else (">", "≤")
        return f"{fmt(a)} for x {first} {fmt(t)}, {fmt(b)} for x {rest} {fmt(t)}"
    text = re.sub(r"Abs\(([^()]*)\)", r"|\1|", fmt(expr))
    return re.sub(r"ln\(([^()]*)\)/ln\((\d+)\)", r"log_\2(\1)", text)


def _curve(xs, ys, y_range):
    """Polylines of the curve inside the visible band, split at jumps (tan asymptotes) and gaps."""
    lo, hi = y_range
    ok = np.isfinite(ys) & (ys >= lo) & (ys <= hi)
    jump = np.abs(np.diff(ys, prepend=ys[0])) > (hi - lo) * 0.5
    prims, run = [], []
    for x, y, good, j in zip(xs, ys, ok, jump):
        if good and not (j and run):
            run.append((float(x), float(y)))
            continue
        if len(run) > 1:
            prims.append({"kind": "line", "pts": run, "layer": "base", "accent": True})
        run = [(float(x), float(y))] if good else []
    if len(run) > 1:
        prims.append({"kind": "line", "pts": run, "layer": "base", "accent": True})
    return prims
