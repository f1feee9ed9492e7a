"""Every answer recomputed from the stored spec, by a route independent of the generator:
plane geometry from the drawn coordinates (figures are to scale), analytic geometry with fractions,
functions numerically (finite differences, quadrature, grid search) from the stored expression."""

import json
import math
import re
from fractions import Fraction

import numpy as np
import pytest
import sympy as sp

from mathvlm.engine import core

N = 240


def _records(family):
    return [core.make_record(101, i, families=(family,), image_size=64) for i in range(N)]


def _shoelace(p):
    p = np.asarray(p, float)
    x, y = p[:, 0], p[:, 1]
    return abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


def _dist(a, b):
    return float(np.hypot(*(np.asarray(a, float) - np.asarray(b, float))))


def _similar_value(spec, last, poly, target):
    """Similar-triangle targets measured on the drawn points, after checking the figure is what the text
    claims (DE ∥ UV with D, E on the sides; WD ⊥ UV with the right angle at W; given lengths to scale)."""
    pts = {k: np.asarray(v, float) for k, v in spec["points"].items()}
    prm = last["params"]
    U, V, W, D = poly[0], poly[1], pts[prm["apex"]], pts[prm["d"]]
    assert np.allclose(W, poly[2])

    def cross(a, b):
        return a[0] * b[1] - a[1] * b[0]

    tol = 1e-5 * _dist(U, V) ** 2  # the spec rounds coordinates to 6 decimals
    if last["kind"] == "similar_parallel":
        E = pts[prm["e"]]
        assert abs(cross(E - D, V - U)) < tol  # DE ∥ UV
        assert abs(cross(D - W, U - W)) < tol and abs(cross(E - W, V - W)) < tol  # D, E on the sides
        assert _dist(W, D) == pytest.approx(prm["wd"]) and _dist(D, U) == pytest.approx(prm["du"])
        small, big = _shoelace([W, D, E]), _shoelace([W, U, V])
        return {"segment": _dist(D, E), "area": small, "area_ratio": small / (big - small)}[target]
    assert abs(np.dot(U - W, V - W)) < tol  # right angle at W
    assert abs(np.dot(W - D, V - U)) < tol and abs(cross(D - U, V - U)) < tol  # foot of the altitude on UV
    assert _dist(U, W) == pytest.approx(prm["uw"])
    return {"projection": _dist(U, D), "rest": _dist(D, V), "altitude": _dist(W, D)}[target]


def _geometry_value(spec):
    last = spec["shapes"][-1]
    kind, poly, target = last["kind"], np.asarray(last["poly"], float), spec["target"]
    if kind.startswith("similar_"):
        return _similar_value(spec, last, poly, target)
    if kind == "sector":
        r = _dist(poly[0], poly[1])
        a, b = poly[1] - poly[0], poly[-1] - poly[0]
        angle = math.atan2(a[0] * b[1] - a[1] * b[0], a @ b)
        return r * angle if target == "arc_length" else r * r * angle / 2
    if kind == "semicircle":
        d = _dist(poly[0], poly[-1])
        return math.pi * d / 2 if target == "arc_length" else math.pi * d * d / 8
    if kind == "inscribed_circle":
        side = _dist(poly[0], poly[1])
        return {"circle_area": math.pi * side**2 / 4, "circumference": math.pi * side,
                "shaded_area": side**2 - math.pi * side**2 / 4}[target]
    if target == "area":
        return _shoelace(poly)
    if target == "perimeter":
        return sum(_dist(poly[i], poly[(i + 1) % len(poly)]) for i in range(len(poly)))
    if target in ("diagonal",):
        return _dist(poly[0], poly[2])
    if target == "hypotenuse":
        return _dist(poly[0], poly[2])
    if target == "leg":
        return _dist(poly[1], poly[2])
    if target == "base":
        return _dist(poly[0], poly[2])
    raise AssertionError(target)


def test_plane_geometry_answers_match_the_drawn_figure():
    kinds = set()
    for rec in _records("plane_geometry"):
        kinds.add(json.loads(rec["spec"])["target_shape"])
        spec = json.loads(rec["spec"])
        pts = spec["points"]
        u, v = spec["shapes"][0]["edge"]
        assert _dist(pts[u], pts[v]) == pytest.approx(spec["first_edge"], rel=1e-6)
        assert rec["answer_value"] == pytest.approx(_geometry_value(spec), rel=1e-4), rec["id"]
        # each shape stands on an edge of the previous one: both end points are vertices of both
        for a, b in zip(spec["shapes"], spec["shapes"][1:]):
            shared = {tuple(np.round(pts[name], 4)) for name in b["edge"]}
            assert shared <= {tuple(np.round(p, 4)) for p in a["poly"]}, rec["id"]
            assert shared <= {tuple(np.round(p, 4)) for p in b["poly"]}, rec["id"]
    assert {"similar_parallel", "similar_altitude"} <= kinds  # the sample covers the similar triangles


def test_similar_triangle_targets_are_all_recomputed():
    """Every similar-triangle target (not only the ones the shared sample happens to draw)."""
    seen = set()
    for i in range(3000):
        problem = core.make_problem(202, i, ("plane_geometry",))
        spec = problem["spec"]
        if not spec["target_shape"].startswith("similar_"):
            continue
        spec = json.loads(json.dumps(spec, default=str))
        seen.add(spec["target"])
        assert float(problem["answer"]) == pytest.approx(_geometry_value(spec), rel=1e-6), i
        if len(seen) == 6:
            break
    assert seen == {"segment", "area", "area_ratio", "projection", "rest", "altitude"}


def _frac_point(text):
    x, y = text.strip("()").split(", ")
    return Fraction(x), Fraction(y)


def test_analytic_geometry_answers():
    for rec in _records("analytic_geometry"):
        spec = json.loads(rec["spec"])
        skill, figs = spec["skill"], spec["figures"]
        if skill in ("distance", "slope", "midpoint"):
            (x1, y1), (x2, y2) = spec["points"]
            if skill == "distance":
                assert rec["answer_value"] == pytest.approx(math.hypot(x2 - x1, y2 - y1))
            elif skill == "slope":
                assert rec["answer_value"] == pytest.approx((y2 - y1) / (x2 - x1))
            else:
                assert _frac_point(rec["answer"]) == (Fraction(x1 + x2, 2), Fraction(y1 + y2, 2))
        elif skill == "area":
            fig = figs[spec["figure"]]
            want = math.pi * fig["radius"] ** 2 if fig["kind"] == "circle" else _shoelace(fig["points"])
            assert rec["answer_value"] == pytest.approx(want)
        elif skill == "intersection":
            (p1, p2), (p3, p4) = spec["lines"]
            a = [[Fraction(p2[1] - p1[1]), Fraction(p1[0] - p2[0])], [Fraction(p4[1] - p3[1]), Fraction(p3[0] - p4[0])]]
            c = [a[0][0] * p1[0] + a[0][1] * p1[1], a[1][0] * p3[0] + a[1][1] * p3[1]]
            det = a[0][0] * a[1][1] - a[0][1] * a[1][0]
            if det == 0:
                assert rec["answer"] in ("they are parallel", "they coincide")
            else:
                want = ((c[0] * a[1][1] - a[0][1] * c[1]) / det, (a[0][0] * c[1] - c[0] * a[1][0]) / det)
                assert _frac_point(rec["answer"]) == want, rec["id"]
        else:
            def centre_y(f):
                return f["centre"][1] if f["kind"] == "circle" else Fraction(sum(p[1] for p in f["points"]), len(f["points"]))
            top = max(figs, key=centre_y)
            assert "".join(top["names"]) in rec["answer"].replace("centred at ", ""), rec["id"]


def _parse(text):
    text = text.replace("√", "sqrt").replace("π", "pi").replace("·", "*").replace("^", "**").replace("ln(", "log(")
    return float(sp.sympify(text.replace("sqrt", "sqrt").replace(")(", ")*(")))


def test_function_answers_numerically():
    x = sp.Symbol("x", real=True)
    for rec in _records("function"):
        spec = json.loads(rec["spec"])
        expr = sp.sympify(spec["expr"])
        f = sp.lambdify(x, expr, "numpy")
        kind, skill = spec["kind"], spec["skill"]
        if skill in ("extremum", "zeros"):
            grid = np.linspace(-30, 30, 240_001) if kind != "log" else np.linspace(-9, 40, 240_001)
            with np.errstate(all="ignore"):
                ys = np.asarray(f(grid), float) * np.ones_like(grid)
            ok = np.isfinite(ys)
        value = rec["answer_value"]
        if skill in ("value", "derivative"):
            x0 = float(sp.sympify(spec["x0"]))
        if skill == "value":
            assert value == pytest.approx(float(f(x0)), rel=1e-9, abs=1e-9)
        elif skill == "derivative":
            h = 1e-5
            assert value == pytest.approx((f(x0 + h) - f(x0 - h)) / (2 * h), rel=1e-4, abs=1e-4), rec["id"]
        elif skill == "integral":
            a, b = spec["bounds"]
            xs = np.linspace(a, b, 200_001)
            assert value == pytest.approx(np.trapezoid(f(xs) * np.ones_like(xs), xs), rel=1e-5, abs=1e-5), rec["id"]
        elif skill == "extremum":
            extreme = ys[ok].max() if "maximum" in rec["question_text_dominant"] else ys[ok].min()
            assert value == pytest.approx(extreme, abs=1e-3), rec["id"]
        elif skill == "zeros":
            listed = [] if rec["answer"] == "no zeros" else [_parse(z.split("=")[1]) for z in rec["answer"].split(", ")]
            for z in listed:
                assert abs(f(z)) < 1e-9, rec["id"]
            crossings = np.sum((np.sign(ys[:-1]) * np.sign(ys[1:]) < 0) & ok[:-1] & ok[1:]) + np.sum(ys[ok] == 0)
            assert crossings >= len(listed) > 0 or not listed
        elif skill == "symmetry":
            h = _parse(rec["answer"].split("=")[1])
            for t in (0.7, 1.9, 3.3):
                assert f(h + t) == pytest.approx(f(h - t)), rec["id"]
        elif skill == "monotonic":
            lo, hi = rec["answer"].strip("()").split(", ")
            inside = _parse(hi) - 1.5 if lo.startswith("-") and "∞" in lo else _parse(lo) + 1.5
            assert f(inside + 1e-3) > f(inside), rec["id"]
        elif skill == "period":
            for x0 in (0.3, 1.1):
                assert f(x0 + value) == pytest.approx(f(x0), abs=1e-9)
                assert f(x0 + value / 2) != pytest.approx(f(x0), abs=1e-6)
        else:
            assert skill == "identify" and math.isnan(value)
            # the two given points lie on the graph and rule out every distractor option
            points = [(float(sp.sympify(a)), float(sp.sympify(b))) for a, b in spec["points"]]
            assert len(points) == 2
            for px, py in points:
                assert float(f(px)) == pytest.approx(py, abs=1e-9), rec["id"]
            wrong = [-expr, expr.subs(x, -x), expr + 1, expr - 1, 2 * expr]
            for w in wrong:
                g = sp.lambdify(x, w, "numpy")
                with np.errstate(all="ignore"):
                    vals = [complex(g(px)) for px, _ in points]
                same = all(abs(v - py) < 1e-9 for v, (_, py) in zip(vals, points))
                equal_function = all(abs(complex(g(t)) - float(f(t))) < 1e-9 for t in (0.37, 1.21, 2.53))
                assert not same or equal_function, (rec["id"], w)


_EXACT_KINDS = {"tan", "log", "sin", "cos"}


def test_function_answers_and_options_are_well_formed():
    """Value answers at nice inputs are exact algebraic numbers (no tan(1), no ln in a value), and no answer
    or option carries sympy internals (Piecewise, zoo, nan, I, **, *)."""
    checked = set()
    for i in range(400):
        rec = core.make_record(303, i, families=("function",), image_size=32)
        spec = json.loads(rec["spec"])
        texts = [rec["answer"]] + rec["choices"].split("\n")
        for t in texts:
            assert not re.search(r"Piecewise|zoo|nan|\bI\b|\*|\blog\(|True|False", t), (rec["id"], t)
        if spec["skill"] == "value" and spec["kind"] in _EXACT_KINDS:
            checked.add(spec["kind"])
            exact = rec["answer"].split(" ≈ ")[0].split(" = ")[0]
            assert not re.search(r"tan|sin|cos|ln", exact), (rec["id"], rec["answer"])
            assert float(sp.sympify(_parse_expr(exact))) == pytest.approx(rec["answer_value"])
    assert checked == _EXACT_KINDS


def _parse_expr(text):
    """The engine's display form back to sympy syntax: 3√2/2 → 3*sqrt(2)/2, 2π/3 → 2*pi/3."""
    text = re.sub(r"√(\d+)", r"sqrt(\1)", text).replace("√", "sqrt").replace("π", "pi")
    text = re.sub(r"(\d|\))(sqrt|pi)", r"\1*\2", text)
    return text.replace("·", "*").replace("^", "**").replace("ln(", "log(")
