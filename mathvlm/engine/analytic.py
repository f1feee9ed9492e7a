"""Analytic geometry: 1–3 non-overlapping figures with integer vertices in a Cartesian frame.

Figures are triangles, rectangles, circles (centre + radius) and segments; their bounding boxes (grown by
one unit) never intersect. Questions: distances, slopes, areas, perimeters, midpoints, line intersections
and spatial relations. Complexity level = number of figures - 1, plus one for a two-figure question
(intersection, relation), capped at 3.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from mathvlm.engine.common import fmt

KINDS = ("triangle", "rectangle", "circle", "segment")


def _place(rng, kind, half, boxes):
    for _ in range(30):
        if kind == "circle":
            r = int(rng.integers(2, 4))  # radius 1 leaves no room for the centre's labels
            c = rng.integers(-half + r, half - r + 1, size=2)
            pts, box = [tuple(int(v) for v in c)], (c[0] - r, c[1] - r, c[0] + r, c[1] + r)
            fig = {"kind": kind, "centre": pts[0], "radius": r}
        else:
            n = {"triangle": 3, "segment": 2}.get(kind, 2)
            lo = rng.integers(-half, half - 2, size=2)
            size = rng.integers(2, min(7, half), size=2)
            hi = np.minimum(lo + size, half)
            if kind == "rectangle":
                pts = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
            else:
                pts = [tuple(rng.integers(lo, hi + 1)) for _ in range(n)]
                if kind == "triangle":
                    (a, b), (c, d), (e, f) = pts
                    if (c - a) * (f - b) - (d - b) * (e - a) == 0:
                        continue
                    if (c - a) * (f - b) - (d - b) * (e - a) < 0:
                        pts = [pts[0], pts[2], pts[1]]
                if min(np.hypot(p[0] - q[0], p[1] - q[1]) for i, p in enumerate(pts) for q in pts[:i]) < 2.5:
                    continue  # labels of nearly coincident points would collide
            pts = [(int(x), int(y)) for x, y in pts]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            box = (min(xs), min(ys), max(xs), max(ys))
            fig = {"kind": kind, "points": pts}
        if all(box[2] + 1 <= o[0] or o[2] + 1 <= box[0] or box[3] + 1 <= o[1] or o[3] + 1 <= box[1] for o in boxes):
            fig["box"] = [int(v) for v in box]
            return fig
    return None


def _area(fig):
    if fig["kind"] == "circle":
        return sp.pi * fig["radius"] ** 2
    p = fig["points"]
    s = sum(sp.Integer(p[i][0] * p[(i + 1) % len(p)][1] - p[(i + 1) % len(p)][0] * p[i][1]) for i in range(len(p)))
    return abs(s) / 2


def generate(rng: np.random.Generator) -> dict:
    half = int(rng.integers(6, 11))
    n_figs = int(rng.integers(1, 4))
    figs, boxes = [], []
    for _ in range(n_figs):
        fig = _place(rng, KINDS[rng.integers(len(KINDS))], half, boxes)
        if fig is not None:
            figs.append(fig)
            boxes.append(fig["box"])
    if not figs:
        figs = [{"kind": "segment", "points": [(0, 0), (3, 4)], "box": [0, 0, 3, 4]}]
    start = int(rng.integers(26))
    letters = iter(chr(65 + (start + i) % 26) for i in range(26))
    prims, givens, names, caption = [], [], [], []
    for fig in figs:
        pts = [fig["centre"]] if fig["kind"] == "circle" else fig["points"]
        fig["names"] = [next(letters) for _ in pts]
        if fig["kind"] == "circle":
            t = np.linspace(0, 2 * np.pi, 64)
            c, r = fig["centre"], fig["radius"]
            prims.append({"kind": "poly", "pts": [(c[0] + r * np.cos(a), c[1] + r * np.sin(a)) for a in t],
                          "fill": False, "layer": "base"})
            names.append(f"the circle centred at {fig['names'][0]}")
            caption.append(f"a circle with centre {fig['names'][0]}{tuple(c)} and radius {r}")
        elif fig["kind"] == "segment":
            prims.append({"kind": "line", "pts": pts, "layer": "base"})
            names.append(f"segment {''.join(fig['names'])}")
            caption.append(f"segment {''.join(fig['names'])} from {tuple(pts[0])} to {tuple(pts[1])}")
        else:
            prims.append({"kind": "poly", "pts": pts, "layer": "base", "fill": True})
            names.append(f"{fig['kind']} {''.join(fig['names'])}")
            caption.append(f"{fig['kind']} {''.join(fig['names'])} with vertices " +
                           ", ".join(f"{n}{tuple(p)}" for n, p in zip(fig["names"], pts)))
        centre = np.mean(np.array(pts, dtype=float), axis=0)
        for name, p in zip(fig["names"], pts):
            prims.append({"kind": "dot", "pt": p, "layer": "base"})
            d = np.array(p, dtype=float) - centre
            d = d / np.linalg.norm(d) if np.linalg.norm(d) > 0 else np.array([0.7, 0.7])
            prims.append({"kind": "text", "pt": p, "text": name, "dir": tuple(d), "layer": "base"})
            layer = f"given:{len(givens)}"
            givens.append((f"{name} = {tuple(p)}".replace("'", ""), [
                {"kind": "text", "pt": p, "text": f"({p[0]}, {p[1]})", "dir": tuple(d), "small": True, "gap": 0.9,
                 "layer": layer, "accent": True}]))
        if fig["kind"] == "circle":
            layer = f"given:{len(givens)}"
            givens.append((f"the circle's radius is {fig['radius']}", [
                {"kind": "text", "pt": (fig["centre"][0], fig["centre"][1] + fig["radius"]), "text": f"r = {fig['radius']}",
                 "dir": (0, 1), "small": True, "layer": layer, "accent": True}]))
    return _ask(rng, figs, names, prims, givens, caption, half)


def _ask(rng, figs, names, prims, givens, caption, half):
    lines = [f for f in figs if f["kind"] != "circle"]
    solids = [f for f in figs if f["kind"] != "segment"]  # a segment has no area
    options = (["area"] if solids else []) + (["distance", "slope", "midpoint"] if lines else [])
    if len(lines) >= 2:
        options.append("intersection")
    heights = sorted(_centre(f)[1] for f in figs)
    if len(figs) >= 2 and heights[-1] != heights[-2]:  # a tie would make "highest" ambiguous
        options.append("relation")
    skill = options[rng.integers(len(options))]
    spec = {"figures": [{k: v for k, v in f.items() if k != "box"} for f in figs], "skill": skill}
    extra = 0
    if skill in ("distance", "slope", "midpoint"):
        fig = lines[rng.integers(len(lines))]
        if skill == "slope" and all(fig["points"][i][0] == fig["points"][i + 1][0] for i in range(len(fig["points"]) - 1)):
            skill = "distance"
        i = next(i for i in range(len(fig["points"]) - 1)
                 if skill != "slope" or fig["points"][i][0] != fig["points"][i + 1][0])
        (x1, y1), (x2, y2) = fig["points"][i], fig["points"][i + 1]
        a, b = fig["names"][i], fig["names"][i + 1]
        spec.update(skill=skill, points=[[x1, y1], [x2, y2]])
        dx, dy = sp.Integer(x2 - x1), sp.Integer(y2 - y1)
        if skill == "distance":
            answer = sp.sqrt(dx**2 + dy**2)
            question, cot = f"What is the distance between {a} and {b}?", [
                f"{a} = ({x1}, {y1}) and {b} = ({x2}, {y2}).",
                f"|{a}{b}| = √(({fmt(dx)})² + ({fmt(dy)})²) = √{fmt(dx**2 + dy**2)} = {fmt(answer)}."]
            mistakes = [abs(dx) + abs(dy), dx**2 + dy**2, sp.sqrt(abs(dx**2 - dy**2))]
        elif skill == "slope":
            answer = dy / dx
            question, cot = f"What is the slope of line {a}{b}?", [
                f"{a} = ({x1}, {y1}) and {b} = ({x2}, {y2}).", f"slope = Δy / Δx = {fmt(dy)} / {fmt(dx)} = {fmt(answer)}."]
            mistakes = [dx / dy if dy else -answer + 1, -answer, dy]
        else:
            mx, my = sp.Rational(x1 + x2, 2), sp.Rational(y1 + y2, 2)
            answer = f"({fmt(mx)}, {fmt(my)})"
            question, cot = f"What are the coordinates of the midpoint of {a}{b}?", [
                f"The midpoint averages the coordinates: (({x1} + {x2})/2, ({y1} + {y2})/2) = {answer}."]
            mistakes = [f"({fmt(dx / 2)}, {fmt(dy / 2)})", f"({x1 + x2}, {y1 + y2})", f"({fmt(my)}, {fmt(mx)})"]
    elif skill == "area":
        fig = solids[rng.integers(len(solids))]
        answer = _area(fig)
        idx = figs.index(fig)
        spec["figure"] = idx
        question = f"What is the area of {names[idx]}?"
        if fig["kind"] == "circle":
            cot = [f"The radius is {fig['radius']}.", f"Area = π r² = {fmt(answer)}."]
            mistakes = [2 * sp.pi * fig["radius"], sp.pi * fig["radius"], sp.Integer(fig["radius"]) ** 2]
        else:
            cot = ["Vertices: " + ", ".join(f"{n}{tuple(p)}" for n, p in zip(fig["names"], fig["points"])) + ".",
                   f"By the shoelace formula the area is {fmt(answer)}."]
            mistakes = [2 * answer, answer / 2 if fig["kind"] == "rectangle" else answer * 4, answer + 1]
        extra = 1 if fig["kind"] == "triangle" else 0
    elif skill == "intersection":
        extra = 1
        f1, f2 = rng.permutation(len(lines))[:2]
        f1, f2 = lines[f1], lines[f2]
        (p1, p2), (p3, p4) = f1["points"][:2], f2["points"][:2]
        x, y = sp.symbols("x y")
        l1 = (p2[1] - p1[1]) * (x - p1[0]) - (p2[0] - p1[0]) * (y - p1[1])
        l2 = (p4[1] - p3[1]) * (x - p3[0]) - (p4[0] - p3[0]) * (y - p3[1])
        sol = sp.solve([l1, l2], [x, y], dict=True)
        n1, n2 = "".join(f1["names"][:2]), "".join(f2["names"][:2])
        spec.update(lines=[[list(p1), list(p2)], [list(p3), list(p4)]])
        question = f"Where do line {n1} and line {n2} intersect?"
        if len(sol) == 1 and len(sol[0]) == 2:
            answer = f"({fmt(sol[0][x])}, {fmt(sol[0][y])})"
            mistakes = [f"({fmt(sol[0][y])}, {fmt(sol[0][x])})", f"({fmt(-sol[0][x])}, {fmt(sol[0][y])})", "they are parallel"]
        else:
            answer = "they are parallel" if not sol else "they coincide"
            mistakes = ["(0, 0)", "they coincide" if answer != "they coincide" else "they are parallel", "(1, 1)"]
        cot = [f"Line {n1}: {sp.sstr(sp.expand(l1))} = 0.", f"Line {n2}: {sp.sstr(sp.expand(l2))} = 0.",
               f"Solving both equations gives {answer}."]
    else:
        extra = 1
        highest = max(range(len(figs)), key=lambda k: (_centre(figs[k])[1], -k))
        answer = names[highest]
        question = "Which figure's centre lies highest (largest y-coordinate)?"
        cot = [f"The centre of {names[k]} is at y = {fmt(_centre(figs[k])[1])}." for k in range(len(figs))] + [
            f"So {answer} lies highest."]
        mistakes = [names[k] for k in range(len(figs)) if k != highest] + ["they are at the same height"]
    return {
        "family": "analytic_geometry", "skill": skill, "complexity": min(3, len(figs) - 1 + extra),
        "spec": spec, "description": [f"the figure shows {', '.join(names)} in a coordinate plane"],
        "givens": givens, "question": question, "cot": cot, "answer": answer, "mistakes": mistakes,
        # equal_aspect: one unit is as long along x as along y, also when the vision-only question band
        # shortens the canvas (circles must stay round, distances and slopes must read true)
        "scene": {"frame": ((-half - 1, half + 1), (-half - 1, half + 1)), "prims": prims, "equal_aspect": True},
        "caption_facts": ["the coordinate plane spans from " + f"{-half - 1} to {half + 1} on both axes"] + caption,
    }


def _centre(fig):
    if fig["kind"] == "circle":
        return [sp.Integer(v) for v in fig["centre"]]
    p = fig["points"]
    return [sp.Rational(sum(q[0] for q in p), len(p)), sp.Rational(sum(q[1] for q in p), len(p))]
