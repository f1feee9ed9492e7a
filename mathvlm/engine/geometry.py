"""Plane geometry: multi-hop figures built edge by edge, problems by backward deduction.

The figure is a chain of shapes S0 → S1 → … → Sk; shape i+1 is attached outside shape i along one of its
edges, so that edge is shared. The problem is deduced backwards: pick a target quantity of the last shape
(area, perimeter, arc length, a side from similar triangles, …); its formula needs the shared edge, which a formula of the previous shape
yields from that shape's own conditions, and so on back to S0, whose first edge is given. The
chain-of-thought is the same chain read forwards, one formula per step. Everything is exact (sympy).

Complexity level = min(3, number of shapes - 1): one shape is level 0 (one formula), four shapes level 3.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from mathvlm.engine import similar
from mathvlm.engine.common import article, fmt, overlaps

TRIG_ANGLES = [30, 45, 60]
SHAPES_MID = ["square", "rectangle", "right_triangle", "isosceles_triangle", "parallelogram", "rhombus",
              "equilateral_triangle"]
SHAPES_END = SHAPES_MID + ["sector", "semicircle", "trapezoid", "inscribed_circle"] + list(similar.KINDS)


def _rad(deg):
    return sp.pi * sp.Integer(deg) / 180


def _arc_pts(centre, start_vec, degrees, n=24):
    angles = np.linspace(0.0, np.radians(degrees), n)
    c, s = np.cos(angles), np.sin(angles)
    x, y = start_vec
    return [tuple(centre + np.array([x * ci - y * si, x * si + y * ci])) for ci, si in zip(c, s)]


class _Builder:
    """Accumulates vertices (letter → coordinates), primitives and the deduction chain."""

    def __init__(self, rng):
        self.rng = rng
        start = int(rng.integers(26))
        self.letters = [chr(65 + (start + i) % 26) for i in range(26)]
        self.points: dict[str, np.ndarray] = {}
        self.prims: list[dict] = []
        self.givens: list[tuple[str, list]] = []
        self.description: list[str] = []
        self.caption: list[str] = []
        self.steps: list[str] = []
        self.shapes: list[dict] = []

    def new_point(self, xy) -> str:
        name = self.letters[len(self.points)]
        self.points[name] = np.asarray(xy, dtype=float)
        return name

    def given(self, sentence: str, label: str, at, direction):
        layer = f"given:{len(self.givens)}"
        self.givens.append((sentence, [{"kind": "text", "pt": tuple(at), "text": label, "dir": direction,
                                        "layer": layer, "accent": True}]))

    def side_label(self, a: str, b: str, value_text: str, centroid):
        p, q = self.points[a], self.points[b]
        mid = (p + q) / 2
        normal = mid - centroid
        normal = normal / (np.linalg.norm(normal) + 1e-9)
        self.given(f"{a}{b} = {value_text}", value_text, mid, tuple(normal))

    def angle_label(self, vertex: str, a: str, b: str, degrees: int):
        v = self.points[vertex]
        d = (self.points[a] - v) / np.linalg.norm(self.points[a] - v) + \
            (self.points[b] - v) / np.linalg.norm(self.points[b] - v)
        d = d / (np.linalg.norm(d) + 1e-9)
        scale = min(np.linalg.norm(self.points[a] - v), np.linalg.norm(self.points[b] - v))
        self.given(f"∠{a}{vertex}{b} = {degrees}°", f"{degrees}°", v + d * 0.28 * scale, (0, 0))

    def right_mark(self, vertex: str, a: str, b: str):
        v = self.points[vertex]
        u1 = (self.points[a] - v) / np.linalg.norm(self.points[a] - v)
        u2 = (self.points[b] - v) / np.linalg.norm(self.points[b] - v)
        k = 0.12 * min(np.linalg.norm(self.points[a] - v), np.linalg.norm(self.points[b] - v))
        self.prims.append({"kind": "line", "pts": [tuple(v + k * u1), tuple(v + k * (u1 + u2)),
                                                   tuple(v + k * u2)], "layer": "base"})


def _attach(b: _Builder, kind: str, u: str, v: str, s):
    """Attach shape ``kind`` on edge u→v (interior to its left). Returns the shape record or None."""
    if kind in similar.KINDS:  # similar-triangle configurations live in their own module
        return similar.attach(b, kind, u, v, s)
    rng = b.rng
    U, V = b.points[u], b.points[v]
    sv = float(s)
    e = (V - U) / np.linalg.norm(V - U)
    n = np.array([-e[1], e[0]])
    rec = {"kind": kind, "in": (u, v), "in_len": s, "out": None, "targets": []}
    if kind in ("square", "rectangle", "rhombus", "parallelogram"):
        if kind == "square":
            w, ang = s, 90
        elif kind == "rectangle":
            w, ang = sp.Integer(int(rng.integers(3, 16))), 90
        elif kind == "rhombus":
            w, ang = s, int(rng.choice([30, 45, 60, 120, 135, 150]))
        else:
            w, ang = sp.Integer(int(rng.integers(3, 16))), int(rng.choice([30, 45, 60, 120, 135, 150]))
        d = np.cos(np.radians(ang)) * e + np.sin(np.radians(ang)) * n
        P, Q = V + float(w) * d, U + float(w) * d
        poly = [U, V, P, Q]
        rec["poly"] = poly
        rec["params"] = {"side2": int(w), "angle": ang}
        if overlaps(poly, [sh["poly"] for sh in b.shapes]):
            return None
        p, q = b.new_point(P), b.new_point(Q)
        name = f"{u}{v}{p}{q}"
        cen = np.mean(poly, axis=0)
        b.description.append(f"{name} is {article(kind)}")
        b.caption.append(f"{name} is {article(kind)} attached to edge {u}{v}")
        if kind in ("rectangle", "parallelogram"):
            b.side_label(v, p, fmt(w), cen)
        if kind in ("rhombus", "parallelogram"):
            b.angle_label(u, v, q, ang)
        else:
            b.right_mark(v, u, p)
        area = s * w * sp.sin(_rad(ang))
        sine = "" if ang == 90 else f" · sin({ang}°)"
        rec["targets"] = [
            ("area", f"the area of {name}", area,
             f"The area of {kind} {name} is {u}{v} · {v}{p}{sine} = {fmt(s)} · {fmt(w)}{sine} = {fmt(area)}.",
             [s * w if ang != 90 else s * w / 2, 2 * (s + w), s * w * sp.cos(_rad(ang)) or s + w]),
            ("perimeter", f"the perimeter of {name}", 2 * (s + w),
             f"The perimeter of {name} is 2 · ({u}{v} + {v}{p}) = 2 · ({fmt(s)} + {fmt(w)}) = {fmt(2 * (s + w))}.",
             [s + w, s * w, 4 * s if w != s else 2 * s + w]),
        ]
        if ang == 90:
            diag = sp.sqrt(s**2 + w**2)
            rec["targets"].append(("diagonal", f"the length of diagonal {u}{p}", diag,
                                   f"By Pythagoras, {u}{p} = √({fmt(s)}² + {fmt(w)}²) = {fmt(diag)}.",
                                   [s + w, s**2 + w**2, sp.sqrt(abs(s**2 - w**2)) or s * 2]))
        rec["out"] = ((q, p), s, f"Opposite sides of {kind} {name} are equal, so {q}{p} = {u}{v} = {fmt(s)}.")
        return rec
    if kind in ("right_triangle", "isosceles_triangle", "equilateral_triangle"):
        if kind == "right_triangle":
            theta = int(rng.choice(TRIG_ANGLES))
            W = V + (sv / np.tan(np.radians(theta))) * n
        else:
            apex = 60 if kind == "equilateral_triangle" else int(rng.choice([30, 45, 60, 90, 120]))
            r = np.radians(apex)
            back = U - V
            W = V + np.array([back[0] * np.cos(-r) - back[1] * np.sin(-r), back[0] * np.sin(-r) + back[1] * np.cos(-r)])
        poly = [U, V, W]
        rec["poly"] = poly
        rec["params"] = {"theta": theta} if kind == "right_triangle" else {"apex": apex}
        if overlaps(poly, [sh["poly"] for sh in b.shapes]):
            return None
        w_ = b.new_point(W)
        name = f"{u}{v}{w_}"
        cen = np.mean(poly, axis=0)
        if kind == "right_triangle":
            b.right_mark(v, u, w_)
            b.angle_label(w_, u, v, theta)
            b.description.append(f"{name} is a right triangle with the right angle at {v}")
            b.caption.append(f"right triangle {name} with the right angle at {v} attached to edge {u}{v}")
            hyp = s / sp.sin(_rad(theta))
            leg = s / sp.tan(_rad(theta))
            rec["targets"] = [
                ("hypotenuse", f"the length of {u}{w_}", hyp,
                 f"In right triangle {name}, {u}{w_} = {u}{v} / sin({theta}°) = {fmt(s)} / {fmt(sp.sin(_rad(theta)))} = {fmt(hyp)}.",
                 [s * sp.sin(_rad(theta)), s / sp.cos(_rad(theta)), s * sp.cos(_rad(theta))]),
                ("leg", f"the length of {v}{w_}", leg,
                 f"In right triangle {name}, {v}{w_} = {u}{v} / tan({theta}°) = {fmt(leg)}.",
                 [s * sp.tan(_rad(theta)), s / sp.sin(_rad(theta)), s * sp.cos(_rad(theta))]),
                ("area", f"the area of triangle {name}", s * leg / 2,
                 f"{v}{w_} = {u}{v} / tan({theta}°) = {fmt(leg)}, so the area is {u}{v} · {v}{w_} / 2 = {fmt(s * leg / 2)}.",
                 [s * leg, s * s * sp.tan(_rad(theta)) / 2, s * hyp / 2]),
            ]
            rec["out"] = ((w_, u), hyp, f"In right triangle {name}, {u}{w_} = {u}{v} / sin({theta}°) = {fmt(hyp)}.")
        else:
            if kind == "equilateral_triangle":
                b.description.append(f"{name} is an equilateral triangle")
                b.caption.append(f"equilateral triangle {name} attached to edge {u}{v}")
            else:
                b.angle_label(v, u, w_, apex)
                b.description.append(f"{name} is an isosceles triangle with {v}{u} = {v}{w_}")
                b.caption.append(f"isosceles triangle {name} with apex {v} attached to edge {u}{v}")
            area = s**2 * sp.sin(_rad(apex)) / 2
            base = 2 * s * sp.sin(_rad(apex) / 2)
            rec["targets"] = [
                ("area", f"the area of triangle {name}", area,
                 f"The area of {name} is {v}{u} · {v}{w_} · sin({apex}°) / 2 = {fmt(area)}.",
                 [s**2 * sp.sin(_rad(apex)), s**2 / 2, s**2 * sp.cos(_rad(apex)) / 2 or s**2]),
                ("base", f"the length of {u}{w_}", base,
                 f"The base is {u}{w_} = 2 · {v}{u} · sin({apex}°/2) = {fmt(base)}.",
                 [s * sp.sin(_rad(apex) / 2), 2 * s * sp.cos(_rad(apex) / 2), s * sp.sin(_rad(apex))]),
            ]
            which = "equilateral" if kind == "equilateral_triangle" else f"isosceles with {v}{u} = {v}{w_}"
            rec["out"] = ((v, w_), s, f"{name} is {which}, so {v}{w_} = {v}{u} = {fmt(s)}.")
        return rec
    # terminal round shapes and the trapezoid: attached, never extended
    if kind == "inscribed_circle":  # a square with its inscribed circle; the corners are shaded
        P, Q = V + sv * n, U + sv * n
        poly = [U, V, P, Q]
        rec["poly"], rec["params"] = poly, {}
        if overlaps(poly, [sh["poly"] for sh in b.shapes]):
            return None
        p, q = b.new_point(P), b.new_point(Q)
        name = f"{u}{v}{p}{q}"
        b.prims.append({"kind": "poly", "pts": [tuple(x) for x in poly], "layer": "base"})
        centre, r = (U + P) / 2, sv / 2
        t = np.linspace(0, 2 * np.pi, 72)
        b.prims.append({"kind": "poly", "pts": [tuple(centre + r * np.array([np.cos(a), np.sin(a)])) for a in t],
                        "fill": False, "layer": "base"})
        b.right_mark(v, u, p)
        b.description.append(f"{name} is a square with an inscribed circle")
        b.caption.append(f"square {name} on edge {u}{v}, with a circle inscribed in it")
        circle, shaded = sp.pi * s**2 / 4, s**2 - sp.pi * s**2 / 4
        rec["targets"] = [
            ("circle_area", "the area of the inscribed circle", circle,
             f"The circle's diameter equals the side {u}{v} = {fmt(s)}, so its area is π · ({fmt(s)}/2)² = {fmt(circle)}.",
             [sp.pi * s**2, sp.pi * s, sp.pi * s**2 / 2]),
            ("circumference", "the circumference of the inscribed circle", sp.pi * s,
             f"The circle's diameter equals the side {u}{v} = {fmt(s)}, so its circumference is π · {fmt(s)} = {fmt(sp.pi * s)}.",
             [2 * sp.pi * s, sp.pi * s / 2, sp.pi * s**2 / 4]),
            ("shaded_area", f"the area of {name} outside the circle", shaded,
             (f"The square's area is {fmt(s)}² = {fmt(s**2)} and the circle's is π · ({fmt(s)}/2)² = {fmt(circle)}; "
              f"the difference is {fmt(shaded)}."),
             [s**2 - sp.pi * s**2, s**2 - sp.pi * s, sp.pi * s**2 / 4]),
        ]
        rec["drawn"] = True
        return rec
    if kind == "sector":
        phi = int(rng.choice([30, 45, 60, 90, 120, 150]))
        arc = _arc_pts(U, V - U, phi)
        poly = [U] + [np.array(p) for p in arc]
        rec["poly"] = poly
        rec["params"] = {"phi": phi}
        if overlaps(poly, [sh["poly"] for sh in b.shapes]):
            return None
        w_ = b.new_point(arc[-1])
        name = f"{v}{u}{w_}"
        b.prims.append({"kind": "poly", "pts": [tuple(p) for p in poly], "layer": "base"})
        b.angle_label(u, v, w_, phi)
        b.description.append(f"{name} is a sector with centre {u}")
        b.caption.append(f"sector {name} centred at {u} with radius {u}{v}")
        arc_len, area = s * _rad(phi), sp.pi * s**2 * phi / 360
        rec["targets"] = [
            ("arc_length", f"the length of arc {v}{w_}", arc_len,
             f"Arc {v}{w_} = {u}{v} · {phi}° · π / 180 = {fmt(arc_len)}.",
             [2 * s * _rad(phi), sp.pi * s**2 * phi / 360, s * phi]),
            ("area", f"the area of sector {name}", area,
             f"The sector's area is π · {u}{v}² · {phi} / 360 = {fmt(area)}.",
             [sp.pi * s * phi / 360 * 2, sp.pi * s**2 * phi / 180, sp.pi * s**2]),
        ]
        rec["drawn"] = True
        return rec
    if kind == "semicircle":
        arc = _arc_pts((U + V) / 2, (V - U) / 2, 180)
        poly = [np.array(p) for p in arc]
        rec["poly"] = poly
        rec["params"] = {}
        if overlaps(poly, [sh["poly"] for sh in b.shapes]):
            return None
        b.prims.append({"kind": "poly", "pts": [tuple(p) for p in poly], "layer": "base"})
        b.description.append(f"a semicircle has diameter {u}{v}")
        b.caption.append(f"a semicircle drawn outward on diameter {u}{v}")
        arc_len, area = sp.pi * s / 2, sp.pi * s**2 / 8
        rec["targets"] = [
            ("arc_length", "the length of the semicircle's arc", arc_len,
             f"The arc is half a circle of diameter {u}{v}: π · {fmt(s)} / 2 = {fmt(arc_len)}.",
             [sp.pi * s, sp.pi * s / 4, sp.pi * s**2 / 2]),
            ("area", "the area of the semicircle", area,
             f"The radius is {fmt(s)}/2, so the area is π · ({fmt(s)}/2)² / 2 = {fmt(area)}.",
             [sp.pi * s**2 / 2, sp.pi * s**2 / 4, sp.pi * s / 2]),
        ]
        rec["drawn"] = True
        return rec
    # right trapezoid on base u→v: right angle at u, top side t parallel to uv, height h
    t, h = sp.Integer(int(rng.integers(2, max(3, int(sv))))), sp.Integer(int(rng.integers(3, 13)))
    P, Q = U + float(h) * n + float(t) * e, U + float(h) * n
    poly = [U, V, P, Q]
    rec["poly"] = poly
    rec["params"] = {"top": int(t), "height": int(h)}
    if overlaps(poly, [sh["poly"] for sh in b.shapes]):
        return None
    p, q = b.new_point(P), b.new_point(Q)
    name = f"{u}{v}{p}{q}"
    cen = np.mean(poly, axis=0)
    b.right_mark(u, v, q)
    b.side_label(p, q, fmt(t), cen)
    b.side_label(q, u, fmt(h), cen)
    b.description.append(f"{name} is a right trapezoid with {q}{p} ∥ {u}{v}")
    b.caption.append(f"right trapezoid {name} on edge {u}{v}")
    area = (s + t) * h / 2
    rec["targets"] = [("area", f"the area of trapezoid {name}", area,
                       f"The trapezoid's area is ({u}{v} + {q}{p}) · {q}{u} / 2 = ({fmt(s)} + {fmt(t)}) · {fmt(h)} / 2 = {fmt(area)}.",
                       [(s + t) * h, s * h, (s - t) * h / 2 or s * t])]
    return rec


def generate(rng: np.random.Generator) -> dict:
    """One plane-geometry problem (see :mod:`mathvlm.engine.common` for the dict layout)."""
    num_shapes = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.3, 0.3, 0.15]))
    b = _Builder(rng)
    s0 = sp.Integer(int(rng.integers(3, 16)))
    u, v = b.new_point((0.0, 0.0)), b.new_point((float(s0), 0.0))
    edge, s, pending_step = (u, v), s0, None
    for hop in range(num_shapes):
        last = hop == num_shapes - 1
        pool = SHAPES_END if last else SHAPES_MID
        rec = None
        for _ in range(6):  # a shape that would overlap an earlier one is redrawn
            rec = _attach(b, str(pool[rng.integers(len(pool))]), edge[0], edge[1], s)
            if rec is not None and rec["targets"]:
                break
        if rec is None:
            break
        b.shapes.append(rec)
        if pending_step:  # the edge this shape stands on was deduced from the previous shape
            b.steps.append(pending_step)
        if not rec.get("drawn"):
            b.prims.append({"kind": "poly", "pts": [tuple(p) for p in rec["poly"]], "layer": "base"})
        if last or rec["out"] is None:
            break
        (a, c), s, pending_step = rec["out"]
        edge = (c, a)  # next shape's base runs the other way so its interior lies outside this one
    first = b.shapes[0]
    fu, fv = first["in"]
    b.given(f"{fu}{fv} = {fmt(s0)}", fmt(s0), (b.points[fu] + b.points[fv]) / 2,
            tuple(-np.array([0.0, 1.0])))
    b.givens.insert(0, b.givens.pop())  # the seed length reads first
    # relabel layers after the reorder so given:i matches the sentence order
    for i, (_, prims) in enumerate(b.givens):
        for p in prims:
            p["layer"] = f"given:{i}"
    target = b.shapes[-1]["targets"][rng.integers(len(b.shapes[-1]["targets"]))]
    key, phrase, value, step, mistakes = target
    b.steps.append(step)
    for name, xy in b.points.items():
        cen = np.mean([p for sh in b.shapes for p in sh["poly"]], axis=0)
        d = xy - cen
        b.prims.append({"kind": "text", "pt": tuple(xy), "text": name,
                        "dir": tuple(d / (np.linalg.norm(d) + 1e-9)), "layer": "base"})
    pts = np.array([p for sh in b.shapes for p in sh["poly"]])
    spec = {"first_edge": int(s0),
            "shapes": [{"kind": sh["kind"], "edge": list(sh["in"]), "params": sh["params"], "poly": np.round(np.array(sh["poly"]), 6).tolist()}
                       for sh in b.shapes],
            "points": {k: np.round(p, 6).tolist() for k, p in b.points.items()},
            "givens": [g for g, _ in b.givens], "target": key, "target_shape": b.shapes[-1]["kind"]}
    return {
        "family": "plane_geometry", "skill": f"{b.shapes[-1]['kind']}_{key}",
        "complexity": min(3, len(b.shapes) - 1), "spec": spec,
        "description": b.description, "givens": b.givens,
        "question": f"What is {phrase}?", "cot": b.steps,
        "answer": sp.sympify(value), "mistakes": mistakes,
        "scene": {"box": (pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()), "prims": b.prims},
        "caption_facts": b.caption,
    }
