"""Similar-triangle shapes of the plane-geometry formula library (terminal shapes of a chain).

``similar_parallel``: triangle U V W on the deduced edge UV, with D on WU and E on WV such that DE ∥ UV.
Triangles WDE and WUV share the angle at W and have equal corresponding angles at D/U and E/V, so they are
similar with ratio WD / WU. Given WD and DU (and the angle at U), the targets are DE, the area of WDE
(the similarity ratio squared times the area of WUV) and, when the triangle is the whole figure, the area
ratio of WDE to the trapezoid DUVE.

``similar_altitude``: right triangle U V W with the right angle at W and hypotenuse UV (the deduced edge),
and the altitude WD onto UV. Triangles UDW and UWV share the angle at U and both have a right angle, so
UD / UW = UW / UV (and likewise for the other parts). Given UW, the targets are UD, DV and the altitude WD.

Both are drawn to scale, so the answers can be re-measured from the coordinates (tests/data/engine).
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from mathvlm.engine.common import fmt, overlaps

KINDS = ("similar_parallel", "similar_altitude")


def _rad(deg):
    return sp.pi * sp.Integer(deg) / 180


def attach(b, kind: str, u: str, v: str, s):
    """Attach ``kind`` on edge u→v (interior to its left) of builder ``b``; None when it does not fit."""
    U, V = b.points[u], b.points[v]
    sv = float(s)
    e = (V - U) / np.linalg.norm(V - U)
    n = np.array([-e[1], e[0]])
    if kind == "similar_parallel":
        return _parallel(b, u, v, s, sv, U, V, e, n)
    return _altitude(b, u, v, s, sv, U, V, e, n)


def _parallel(b, u, v, s, sv, U, V, e, n):
    rng = b.rng
    alpha = int(rng.choice([45, 60, 75, 90]))
    # WU comparable to UV so the triangle is neither a sliver nor a spike; WD and DU are whole numbers
    total = max(3, int(round(sv * rng.uniform(0.7, 1.3))))
    # D between 30 % and 75 % of the way down WU, so its letter and labels clear the vertices
    m = int(rng.integers(max(1, int(np.ceil(0.3 * total))), max(2, int(np.floor(0.75 * total))) + 1))  # WD
    m = min(m, total - 1)
    k = total - m  # DU
    a = np.radians(alpha)
    W = U + total * (np.cos(a) * e + np.sin(a) * n)
    poly = [U, V, W]
    if overlaps(poly, [sh["poly"] for sh in b.shapes]):
        return None
    r = m / total
    w = b.new_point(W)
    d = b.new_point(W + r * (U - W))
    e_ = b.new_point(W + r * (V - W))
    name = f"{u}{v}{w}"
    cen = np.mean(poly, axis=0)
    b.prims.append({"kind": "line", "pts": [tuple(b.points[d]), tuple(b.points[e_])], "layer": "base"})
    b.side_label(w, d, str(m), cen)
    b.side_label(d, u, str(k), cen)
    b.angle_label(u, v, w, alpha)
    b.description.append(f"{name} is a triangle with {d} on {w}{u}, {e_} on {w}{v} and {d}{e_} ∥ {u}{v}")
    b.caption.append(f"triangle {name} on edge {u}{v}, cut by segment {d}{e_} parallel to {u}{v}")
    M, K, L = sp.Integer(m), sp.Integer(k), sp.Integer(total)
    ratio = M / L
    similar = (f"{d}{e_} ∥ {u}{v}, so triangle {w}{d}{e_} ~ triangle {w}{u}{v} (common angle {w}, "
               f"corresponding angles at {d} and {u} are equal); {w}{u} = {w}{d} + {d}{u} = {m} + {k} = {total}, "
               f"so the ratio is {w}{d} / {w}{u} = {fmt(ratio)}.")
    de = s * ratio
    big = s * L * sp.sin(_rad(alpha)) / 2
    small = big * ratio**2
    targets = [
        ("segment", f"the length of {d}{e_}", de,
         similar + f" Hence {d}{e_} = {u}{v} · {w}{d} / {w}{u} = {fmt(s)} · {m} / {total} = {fmt(de)}.",
         [s * M / K, s * K / L, s * L / M]),
        ("area", f"the area of triangle {w}{d}{e_}", small,
         f"The area of {w}{u}{v} is {u}{v} · {u}{w} · sin({alpha}°) / 2 = {fmt(s)} · {total} · "
         f"{fmt(sp.sin(_rad(alpha)))} / 2 = {fmt(big)}. " + similar +
         f" Areas of similar triangles scale with the square of the ratio: {fmt(big)} · ({fmt(ratio)})² = {fmt(small)}.",
         [big * ratio, big - small, big * (M / K) ** 2]),
    ]
    if not b.shapes:  # alone in the figure the ratio question uses every given; in a chain it would skip them
        area_ratio = M**2 / (L**2 - M**2)
        targets.append(
            ("area_ratio", f"the ratio of the area of triangle {w}{d}{e_} to the area of trapezoid {d}{u}{v}{e_}",
             area_ratio,
             similar + f" So area({w}{d}{e_}) / area({w}{u}{v}) = ({fmt(ratio)})² = {fmt(ratio**2)}, and the "
             f"trapezoid is the rest: {fmt(ratio**2)} / (1 - {fmt(ratio**2)}) = {fmt(area_ratio)}.",
             [ratio**2, M / K, M**2 / K**2]))
    return {"kind": "similar_parallel", "in": (u, v), "in_len": s, "out": None, "poly": poly,
            "params": {"apex": w, "d": d, "e": e_, "wd": m, "du": k, "angle": alpha}, "targets": targets}


def _altitude(b, u, v, s, sv, U, V, e, n):
    rng = b.rng
    lo, hi = int(np.ceil(0.5 * sv)), int(np.floor(0.85 * sv))  # the foot D stays clear of U and V
    if hi < max(lo, 1):
        return None
    a = int(rng.integers(max(lo, 1), hi + 1))  # UW, a leg shorter than the hypotenuse UV
    theta = np.arccos(a / sv)
    W = U + a * (np.cos(theta) * e + np.sin(theta) * n)
    poly = [U, V, W]
    if overlaps(poly, [sh["poly"] for sh in b.shapes]):
        return None
    w = b.new_point(W)
    d = b.new_point(U + (a * a / sv) * e)
    name = f"{u}{v}{w}"
    cen = np.mean(poly, axis=0)
    b.prims.append({"kind": "line", "pts": [tuple(W), tuple(b.points[d])], "layer": "base"})
    b.right_mark(w, u, v)
    b.right_mark(d, w, v)
    b.side_label(u, w, str(a), cen)
    b.description.append(f"{name} is a right triangle with the right angle at {w}, and {w}{d} ⊥ {u}{v}")
    b.caption.append(f"right triangle {name} with hypotenuse {u}{v} and the altitude {w}{d} onto it")
    A = sp.Integer(a)
    ud, dv = A**2 / s, s - A**2 / s
    leg = sp.sqrt(s**2 - A**2)
    wd = A * leg / s
    similar = (f"Triangles {u}{d}{w} and {u}{w}{v} share the angle at {u} and have right angles at {d} and {w}, "
               f"so they are similar: {u}{d} / {u}{w} = {u}{w} / {u}{v}.")
    ud_step = f"{u}{d} = {u}{w}² / {u}{v} = {a}² / {fmt(s)} = {fmt(ud)}."
    targets = [
        ("projection", f"the length of {u}{d}", ud, similar + " Hence " + ud_step,
         [dv, A / s, s**2 / A]),
        ("rest", f"the length of {d}{v}", dv, similar + " Hence " + ud_step +
         f" Then {d}{v} = {u}{v} - {u}{d} = {fmt(s)} - {fmt(ud)} = {fmt(dv)}.",
         [ud, s - A, leg]),
        ("altitude", f"the length of {w}{d}", wd,
         f"By Pythagoras, {w}{v} = √({u}{v}² - {u}{w}²) = √({fmt(s**2)} - {a**2}) = {fmt(leg)}. "
         f"Triangles {w}{d}{u} and {v}{w}{u} share the angle at {u} and have right angles at {d} and {w}, so "
         f"{w}{d} / {v}{w} = {u}{w} / {u}{v}, and {w}{d} = {u}{w} · {w}{v} / {u}{v} = {a} · {fmt(leg)} / {fmt(s)} = {fmt(wd)}.",
         [ud, A * s / leg, leg / 2]),
    ]
    return {"kind": "similar_altitude", "in": (u, v), "in_len": s, "out": None, "poly": poly,
            "params": {"apex": w, "d": d, "uw": a}, "targets": targets}
