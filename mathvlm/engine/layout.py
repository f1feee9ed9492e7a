"""Collision-free label placement: labels are queued while drawing and placed together at the end.

Placing labels one at a time in drawing order let a late label (a coordinate pair, "r = 3") land on an
earlier one (a tick label, a vertex letter). Here every label is a request with a priority; requests are
placed from the highest priority down, each at the first candidate position whose box (padded by ``PAD``)
meets no box placed before it. Candidates start at the preferred offset and fan out around the anchor
(rotated directions, then larger distances). Optional labels (tick labels) are dropped when every candidate
collides (they never move: a shifted tick label would mark the wrong value); a required label that cannot avoid all others takes its least-overlapping candidate.
Everything is in supersampled canvas pixels; the order of requests with equal priority is the drawing order,
so the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD = 2.0  # supersampled px kept free around each box, so touching labels still read as two
# (rotation in degrees, distance multiplier) in order of preference: near the wanted side first, then around
# the anchor, then further out; a label ends up on the opposite side only when its own side is full.
_FAN = ([(0, 1.0), (40, 1.0), (-40, 1.0), (0, 1.8), (80, 1.0), (-80, 1.0), (40, 1.8), (-40, 1.8),
         (125, 1.0), (-125, 1.0), (180, 1.0), (80, 1.8), (-80, 1.8)]
        + [(a, m) for m in (2.6, 3.4) for a in (0, 40, -40, 80, -80, 125, -125, 180)])
_FAN_R = np.radians([a for a, _ in _FAN])
_FAN_M = np.array([m for _, m in _FAN])
# centred labels (angle values inside a corner): the anchor itself, then a ring of growing radius
_RING = [(0.0, 0.0)] + [(np.cos(t) * m, np.sin(t) * m) for m in (0.6, 1.2, 2.0)
                        for t in np.radians(np.arange(0, 360, 45))]


@dataclass
class Label:
    anchor: tuple[float, float]  # px of the labelled point
    text: str
    font: object
    colour: tuple
    direction: tuple[float, float]  # world direction (y up), unit or zero
    reach: float  # distance from anchor to box centre along ``direction`` at multiplier 1
    size: tuple[float, float, float, float]  # textbbox (left, top, right, bottom) at origin
    boxed: bool = False
    priority: float = 1.0
    optional: bool = False
    box: tuple[float, float, float, float] | None = None  # placed box incl. backing frame, canvas px


def frame_pad(label: Label) -> float:
    return 4.0 if label.boxed else 0.0  # a backing box is drawn 4 px around the text


def candidates(label: Label, canvas_px: float) -> np.ndarray:
    """[K, 4] candidate boxes (x0, y0, x1, y1), clamped inside the canvas."""
    left, top, right, bottom = label.size
    w, h = right - left, bottom - top
    x, y = label.anchor
    d = np.asarray(label.direction, float)
    if np.any(d):
        ang = np.arctan2(d[1], d[0]) + _FAN_R
        ux, uy = np.cos(ang), np.sin(ang)
        # distance so the box just clears the anchor along each rotated direction
        reach = 0.5 * (np.abs(ux) * w + np.abs(uy) * h) + (label.reach - 0.5 * (abs(d[0]) * w + abs(d[1]) * h))
        cx, cy = x + ux * reach * _FAN_M, y - uy * reach * _FAN_M
    else:
        ring = np.array(_RING)
        cx, cy = x + ring[:, 0] * max(w, h), y - ring[:, 1] * max(w, h)
    f = frame_pad(label)
    edge = 2.0 + f
    x0 = np.clip(cx - w / 2, edge, canvas_px - w - edge)
    y0 = np.clip(cy - h / 2, edge, canvas_px - h - edge)
    return np.stack([x0 - f, y0 - f, x0 + w + f, y0 + h + f], axis=1)


def _overlap_area(boxes: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """[K] summed overlap area of each candidate (padded) with every placed box."""
    if not len(placed):
        return np.zeros(len(boxes))
    b = boxes[:, None, :]
    p = placed[None, :, :]
    wx = np.minimum(b[..., 2] + PAD, p[..., 2]) - np.maximum(b[..., 0] - PAD, p[..., 0])
    wy = np.minimum(b[..., 3] + PAD, p[..., 3]) - np.maximum(b[..., 1] - PAD, p[..., 1])
    return (np.clip(wx, 0, None) * np.clip(wy, 0, None)).sum(axis=1)


def place(labels: list[Label], fixed: list[tuple], canvas_px: float) -> list[Label]:
    """Assign ``box`` to each label that gets drawn; returns them in drawing order (low priority first)."""
    placed = [tuple(b) for b in fixed]
    kept = []
    order = sorted(range(len(labels)), key=lambda i: -labels[i].priority)  # stable: ties keep drawing order
    for i in order:
        label = labels[i]
        boxes = candidates(label, canvas_px)
        if label.optional:  # a tick label moved off its tick would misread the axis: its own spot or nothing
            boxes = boxes[:1]
        overlap = _overlap_area(boxes, np.asarray(placed, float).reshape(-1, 4))
        free = np.flatnonzero(overlap <= 0)
        if len(free):
            k = int(free[0])
        elif label.optional:
            continue
        else:
            k = int(np.argmin(overlap))
        label.box = tuple(float(v) for v in boxes[k])
        placed.append(label.box)
        kept.append(label)
    return sorted(kept, key=lambda lb: lb.priority)


def boxes_overlap(a, b) -> bool:
    """Strict overlap of two (x0, y0, x1, y1) boxes; shared edges do not count."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
