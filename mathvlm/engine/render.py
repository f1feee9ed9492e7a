"""Fast diagram rendering with PIL: draw at 2x, then ``reduce(2)`` for anti-aliasing.

A new matplotlib figure per diagram costs ~80 ms; PIL ImageDraw on a 672 px canvas costs a few ms. Every
problem describes its picture as a *scene*: a list of primitives in world coordinates. Each primitive has a
``layer``: ``"base"`` is always drawn, ``"given:<i>"`` only when given condition ``i`` is shown in the image,
and ``"question"`` is the question text drawn into the vision-only version.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mathvlm.engine import layout

SUPERSAMPLE = 2
MAX_BAND = 0.42  # most of the canvas a drawn question (vision-only) may take
_FONT_FILES = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
               "DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf"]
_INKS = [(0, 0, 0), (20, 40, 110), (90, 20, 20), (30, 80, 40), (60, 60, 60)]
_FILLS = [None, (235, 242, 255), (255, 244, 230), (236, 250, 236), (248, 236, 250)]
_BACKGROUNDS = [(255, 255, 255), (252, 252, 246), (246, 249, 252)]
_ACCENTS = [(200, 30, 30), (20, 100, 200), (200, 110, 0), (130, 40, 170)]


@functools.cache
def _font_dir() -> str:
    import matplotlib  # only for the path of its bundled DejaVu fonts; no figure is ever created
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@functools.lru_cache(maxsize=128)
def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(os.path.join(_font_dir(), name), size)


def random_style(rng: np.random.Generator, image_size: int) -> dict:
    """Style variation so a model cannot key on one look: widths, fonts, colours, label offsets."""
    return {
        "size": int(image_size),
        "line_width": float(rng.uniform(1.4, 3.2)),
        "font": _FONT_FILES[rng.integers(len(_FONT_FILES))],
        "font_scale": float(rng.uniform(0.042, 0.056)),
        "ink": _INKS[rng.integers(len(_INKS))],
        "fill": _FILLS[rng.integers(len(_FILLS))],
        "background": _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))],
        "accent": _ACCENTS[rng.integers(len(_ACCENTS))],
        "label_offset": float(rng.uniform(0.9, 1.5)),
        "grid": bool(rng.random() < 0.8),
    }


class Canvas:
    """Supersampled PIL canvas with a world→pixel transform. Shapes are drawn at once; text labels are
    queued and placed together by :func:`layout.place` in :meth:`finish` (so they never collide)."""

    def __init__(self, style: dict, world_box, *, equal_aspect: bool, margin: float = 0.12, reserve: float = 0.0):
        self.style = style
        self.size = style["size"]
        s = self.size * SUPERSAMPLE
        self.image = Image.new("RGB", (s, s), style["background"])
        self.draw = ImageDraw.Draw(self.image)
        self.font = font(style["font"], max(8, int(style["font_scale"] * s)))
        self.small_font = font(style["font"], max(7, int(style["font_scale"] * s * 0.8)))
        self.line = max(1, round(style["line_width"] * SUPERSAMPLE))
        x0, y0, x1, y1 = world_box
        pad = margin * s
        height = s - 2 * pad - reserve * s  # ``reserve``: bottom band kept free for the drawn question
        sx, sy = (s - 2 * pad) / max(x1 - x0, 1e-9), height / max(y1 - y0, 1e-9)
        if equal_aspect:  # one world unit is the same length along x and y: circles stay round
            sx = sy = min(sx, sy)
        # centre the drawing in the free part of the canvas
        self._a = np.array([sx, -sy])
        self._b = np.array([s / 2 - sx * (x0 + x1) / 2, pad + height / 2 + sy * (y0 + y1) / 2])
        self.labels: list[layout.Label] = []
        self.fixed: list[tuple] = []  # boxes of the question block: placed first, never moved
        self.texts: list[str] = []  # every string drawn, in drawing order (tests read what the image says)
        self.label_boxes: list[tuple[float, float, float, float]] = []  # output-pixel boxes, after finish()

    def unit_px(self) -> tuple[float, float]:
        """Output pixels per world unit along x and along y."""
        return abs(self._a[0]) / SUPERSAMPLE, abs(self._a[1]) / SUPERSAMPLE

    def px(self, points) -> list[tuple[float, float]]:
        pts = np.asarray(points, dtype=float).reshape(-1, 2) * self._a + self._b
        return [tuple(p) for p in pts]

    def polygon(self, pts, fill=True, colour=None):
        p = self.px(pts)
        self.draw.polygon(p, fill=self.style["fill"] if fill else None)
        self.draw.line(p + [p[0]], fill=colour or self.style["ink"], width=self.line, joint="curve")

    def polyline(self, pts, colour=None, width=None):
        self.draw.line(self.px(pts), fill=colour or self.style["ink"], width=width or self.line, joint="curve")

    def dot(self, pt, colour=None, radius=None):
        (x, y), r = self.px(pt)[0], radius or self.line * 1.8
        self.draw.ellipse([x - r, y - r, x + r, y + r], fill=colour or self.style["accent"])

    def text(self, pt, text: str, *, direction=(0.0, 0.0), small=False, colour=None, gap=0.0, boxed=False,
             priority=1.0, optional=False):
        """Queue text near world point ``pt``, preferably pushed ``direction`` (unit, world) away; ``gap``
        (in font heights) asks for extra distance, e.g. a coordinate pair past its vertex letter."""
        f = self.small_font if small else self.font
        size = self.draw.textbbox((0, 0), text, font=f)
        w, h = size[2] - size[0], size[3] - size[1]
        d = np.asarray(direction, dtype=float)
        reach = 0.5 * (abs(d[0]) * w + abs(d[1]) * h) + 0.3 * f.size * self.style["label_offset"] + gap * f.size
        self.labels.append(layout.Label(self.px(pt)[0], text, f, colour or self.style["ink"], tuple(d),
                                        reach, size, boxed, priority, optional))

    def text_block(self, lines: list[str], f, top: float):
        """Pre-wrapped lines across the canvas (the question drawn into the vision-only image)."""
        h = int(round(f.size * 1.2))  # whole pixels: adjacent lines' boxes touch but never overlap
        x = self.size * SUPERSAMPLE * 0.03
        for i, ln in enumerate(lines):
            y = int(top) + i * h
            self.draw.text((x, y), ln, font=f, fill=self.style["ink"])
            self.fixed.append((x, y, x + self.draw.textlength(ln, font=f), y + h))
            self.texts.append(ln)

    def finish(self) -> np.ndarray:
        for label in layout.place(self.labels, self.fixed, self.size * SUPERSAMPLE):
            x0, y0, x1, y1 = label.box
            if label.boxed:  # a backing box keeps a long label readable over grid lines and curves
                self.draw.rectangle([x0, y0, x1, y1], fill=self.style["background"], outline=label.colour)
            f = layout.frame_pad(label)
            self.draw.text((x0 + f - label.size[0], y0 + f - label.size[1]), label.text, font=label.font,
                           fill=label.colour)
            self.texts.append(label.text)
            self.fixed.append(label.box)
        self.label_boxes = [tuple(v / SUPERSAMPLE for v in b) for b in self.fixed]
        return np.asarray(self.image.reduce(SUPERSAMPLE), dtype=np.uint8)


def wrap(draw, text: str, f, width: float) -> list[str]:
    """Greedy word wrap; a newline in ``text`` always starts a new line (one option per line)."""
    lines = []
    for para in text.split("\n"):
        line = ""
        for word in para.split():
            trial = (line + " " + word).strip()
            if draw.textlength(trial, font=f) > width and line:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _question_lines(style: dict, question_text: str):
    """(lines, font, band height as a fraction of the canvas): the font shrinks until the block fits in
    MAX_BAND, so a long question with four options still leaves most of the canvas to the figure."""
    s = style["size"] * SUPERSAMPLE
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max(7, int(style["font_scale"] * s * 0.8))
    while True:
        f = font(style["font"], size)
        lines = wrap(probe, question_text, f, s * 0.94)
        band = (len(lines) * round(f.size * 1.2) + 8) / s
        if band <= MAX_BAND or size <= 7:
            return lines, f, band
        size = max(7, int(size * 0.88))


def draw_axes(c: Canvas, xr, yr):
    """Cartesian frame: grid, axes through the origin (or the border), integer ticks and tick labels.
    Tick labels are optional and lowest priority: the layout drops one rather than let it cover a label."""
    (x0, x1), (y0, y1) = xr, yr
    step_x = max(1, int(np.ceil((x1 - x0) / 10)))
    step_y = max(1, int(np.ceil((y1 - y0) / 10)))
    grey = (215, 215, 215)
    ax_y = min(max(0, y0), y1)
    ax_x = min(max(0, x0), x1)
    for gx in range(int(np.ceil(x0)), int(np.floor(x1)) + 1):
        if gx % step_x == 0:
            if c.style["grid"]:
                c.polyline([(gx, y0), (gx, y1)], colour=grey, width=max(1, c.line // 2))
            if gx != 0:
                c.text((gx, ax_y), str(gx), direction=(0, -1), small=True, priority=0.0, optional=True)
    for gy in range(int(np.ceil(y0)), int(np.floor(y1)) + 1):
        if gy % step_y == 0:
            if c.style["grid"]:
                c.polyline([(x0, gy), (x1, gy)], colour=grey, width=max(1, c.line // 2))
            if gy != 0:
                c.text((ax_x, gy), str(gy), direction=(-1, 0), small=True, priority=0.0, optional=True)
    c.polyline([(x0, ax_y), (x1, ax_y)], width=max(1, c.line * 2 // 3))
    c.polyline([(ax_x, y0), (ax_x, y1)], width=max(1, c.line * 2 // 3))
    c.text((x1, ax_y), "x", direction=(0.3, 1), small=True, priority=0.5)
    c.text((ax_x, y1), "y", direction=(1, 0.3), small=True, priority=0.5)


# Label priorities: the conditions (accent labels) matter most, then vertex letters, then marks.
_PRIORITY = {"given": 3.0, "base": 2.0}


def draw_scene(scene: dict, style: dict, layers: set[str], question_text: str | None = None) -> Canvas:
    """Draw the primitives whose layer is in ``layers`` (and ``question_text`` in a bottom band); returns
    the finished canvas (``image``, ``label_boxes``, ``texts``, ``unit_px()``)."""
    frame = scene.get("frame")
    lines, qfont, reserve = _question_lines(style, question_text) if question_text else ([], None, 0.0)
    if frame is not None:
        (x0, x1), (y0, y1) = frame
        # analytic geometry keeps one unit equal along both axes (circles, distances, slopes read true);
        # a function plot may stretch y to fill the canvas, as plots usually do
        c = Canvas(style, (x0, y0, x1, y1), equal_aspect=scene.get("equal_aspect", False), margin=0.08,
                   reserve=reserve)
        draw_axes(c, (x0, x1), (y0, y1))
    else:
        c = Canvas(style, scene["box"], equal_aspect=True, margin=0.16, reserve=reserve)
    # shapes first: a filled polygon drawn after a right-angle mark or an inner segment would hide it
    prims = [p for p in scene["prims"] if p["layer"] in layers]
    for prim in sorted(prims, key=lambda p: p["kind"] != "poly"):
        kind = prim["kind"]
        if kind == "poly":
            c.polygon(prim["pts"], fill=prim.get("fill", True))
        elif kind == "line":
            colour = c.style["accent"] if prim.get("accent") else None
            c.polyline(prim["pts"], colour=colour)
        elif kind == "dot":
            c.dot(prim["pt"])
        elif kind == "text":
            priority = _PRIORITY["given" if prim["layer"].startswith("given") else "base"] - 0.5 * prim.get("small", False)
            c.text(prim["pt"], prim["text"], direction=prim.get("dir", (0, 0)), small=prim.get("small", False),
                   colour=c.style["accent"] if prim.get("accent") else None, gap=prim.get("gap", 0.0),
                   boxed=prim.get("boxed", False), priority=priority)
    if lines:
        s = c.size * SUPERSAMPLE
        c.text_block(lines, qfont, top=s * (1 - reserve) + 4)
    c.array = c.finish()
    return c


def render_scene(scene: dict, style: dict, layers: set[str], question_text: str | None = None):
    """(uint8 [H, W, 3], label boxes in output px) of :func:`draw_scene`."""
    c = draw_scene(scene, style, layers, question_text)
    return c.array, c.label_boxes
