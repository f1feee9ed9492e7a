"""Rendering: equal x/y scale in analytic geometry, collision-free labels, the drawn vision-only question."""

import numpy as np
import pytest

from mathvlm.engine import core, layout, wording
from mathvlm.engine.common import FAMILIES


def _style(i, size):
    return core.random_style(np.random.default_rng(i), size)


@pytest.mark.parametrize("version", ["text_dominant", "vision_dominant", "vision_only"])
def test_analytic_unit_lengths_are_equal_along_x_and_y(version):
    for i in range(6):
        problem = core.make_problem(61, i, ("analytic_geometry",))
        canvas = core.draw(problem, version, _style(i, 224 + 56 * (i % 3)))
        ux, uy = canvas.unit_px()
        assert ux == pytest.approx(uy, rel=1e-9), (i, ux, uy)
        # and the drawn transform agrees: a unit step right and a unit step up span the same pixels
        o, x, y = (np.asarray(p) for p in canvas.px([(0, 0), (1, 0), (0, 1)]))
        assert np.linalg.norm(x - o) == pytest.approx(np.linalg.norm(y - o))


def test_analytic_circle_is_drawn_round():
    """Measured on the pixels: the circle's ink spans as many columns as rows."""
    for i in range(200):
        problem = core.make_problem(62, i, ("analytic_geometry",))
        circles = [f for f in problem["spec"]["figures"] if f["kind"] == "circle"]
        if len(problem["spec"]["figures"]) == 1 and circles:
            break
    else:
        raise AssertionError("no single-circle figure in the sample")
    style = {**_style(0, 336), "grid": False, "background": (255, 255, 255), "ink": (0, 0, 0)}
    scene = {**problem["scene"], "prims": [p for p in problem["scene"]["prims"] if p["kind"] == "poly"]}
    image, _ = core.render_scene(scene, style, {"base"}, question_text="What is the area of the circle? " * 3)
    canvas = core.draw_scene(scene, style, {"base"}, "What is the area of the circle? " * 3)
    (cx, cy), r = circles[0]["centre"], circles[0]["radius"]
    (x0, y0), (x1, y1) = canvas.px([(cx - r, cy + r), (cx + r, cy - r)])
    # crop to the circle's box (in output px) and measure the ink (anything not white, axes excluded by mask)
    k = 2  # SUPERSAMPLE
    box = image[int(y0 / k) - 2:int(y1 / k) + 3, int(x0 / k) - 2:int(x1 / k) + 3]
    ink = (box.sum(axis=2) < 600)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    assert rows.size and cols.size
    assert abs((rows[-1] - rows[0]) - (cols[-1] - cols[0])) <= 2


def _boxes_overlap(boxes):
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            if layout.boxes_overlap(boxes[a], boxes[b]):
                return boxes[a], boxes[b]
    return None


@pytest.mark.parametrize("family", FAMILIES)
def test_no_two_text_labels_overlap(family):
    for i in range(40):
        problem = core.make_problem(63, i, (family,))
        size = (224, 336, 448)[i % 3]
        for version in ("vision_dominant", "vision_only"):
            canvas = core.draw(problem, version, _style(i, size), options=["1", "2", "3", "4"])
            clash = _boxes_overlap(canvas.label_boxes)
            assert clash is None, (family, i, version, clash)
            for x0, y0, x1, y1 in canvas.label_boxes:
                assert 0 <= x0 <= x1 <= size and 0 <= y0 <= y1 <= size


def test_layout_moves_a_colliding_label_and_drops_a_colliding_tick():
    from PIL import ImageFont
    f = ImageFont.load_default()
    size = (0, 0, 30, 10)

    def label(priority, optional=False):
        return layout.Label((100.0, 100.0), "x", f, (0, 0, 0), (1.0, 0.0), 20.0, size, priority=priority,
                            optional=optional)

    first, second, tick = label(2.0), label(1.0), label(0.0, optional=True)
    kept = layout.place([tick, second, first], [], 400)
    assert tick not in kept and {id(k) for k in kept} == {id(first), id(second)}
    assert not layout.boxes_overlap(first.box, second.box)


def test_vision_only_image_draws_the_options_when_multiple_choice():
    for i in range(12):
        rec = core.make_record(64, i, version="vision_only", image_size=224)
        options = rec["choices"].split("\n")
        # the MC text leaves the options to the image; the free-form image has none of them
        assert not any(f"{'ABCD'[k]}. {o}" in rec["question_mc"] for k, o in enumerate(options))
        assert rec["question_mc"].startswith(wording.VISION_ONLY_INSTRUCTION)
        assert not np.array_equal(rec["image"], rec["image_mc"])
        problem = core.make_problem(64, i)
        style = core.random_style(core.rng_for(64, i, "style"), 224)
        drawn = "\n".join(core.draw(problem, "vision_only", style, options).texts)
        for k, o in enumerate(options):
            assert f"{'ABCD'[k]}. {o}" in drawn.replace("\n", " ") or f"{'ABCD'[k]}." in drawn, (i, o)
        plain = "\n".join(core.draw(problem, "vision_only", style).texts)
        assert "A. " not in plain
    rec = core.make_record(64, 0, version="vision_dominant", image_size=64)
    assert np.array_equal(rec["image"], rec["image_mc"])  # only vision-only draws the options
