"""Labelled images for Math-LLaVA's two image classifiers, source ``engine_images``.

Math-LLaVA labelled 10K images with GPT-4V for *clarity* (0 blurred/poor, 1 clear) and *comprehension
complexity* (0–3) and trained a ViT classifier for each; neither the labels nor the classifiers were
released. Here the labels come for free:

* ``data.label: complexity`` — the engine's own complexity level of the problem (0–3), the image being
  the problem's diagram in one MathVerse version (``data.version``, default ``mixed``: any version that
  shows an image).
* ``data.label: clarity`` — half of the engine images (a fixed coin per index) are degraded by blur,
  noise and/or downscaling (label 0); the rest are clean (label 1). Degradation strengths are set in
  pixels of the *model's* input (``data.image_size``), so they survive the resize to it.
* ``data.path`` — user labels instead of the engine: a JSON list or JSONL of ``{"image": path,
  "label": int}`` (optional ``id``), paths relative to ``data.image_root``.

Rows: ``images`` [S, S, 3] float32 (``data.image_preprocess``, default ``clip``), ``label`` () int32,
``level`` () int32 (the complexity, for the trainer's level counts; engine only) and ``skip_reason``.
The source exposes ``levels`` for ``data.complexity_ratio`` (e.g. ``(1, 1, 1, 1)`` balances the classes).
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging
from PIL import Image, ImageFilter

from mathvlm import registry
from mathvlm.data import images as image_ops
from mathvlm.data import readers
from mathvlm.engine import core, wording
from mathvlm.engine.common import FAMILIES
from mathvlm.data.sources import SKIP_REASONS

LABELS = {"complexity": 4, "clarity": 2}   # label kind → number of classes
IMAGE_VERSIONS = tuple(v for v in wording.VERSIONS if v != "text_only")
DEGRADATIONS = ("blur", "noise", "downscale")
# Streams of np.random.default_rng([seed, index, stream]) beyond the engine's own (core._STREAM).
_CLARITY_STREAM, _DEGRADE_STREAM = 29, 31
MAX_LEVEL_SCAN = 200_000   # as engine_vlm: levels mean generating every problem (no rendering)


def num_classes(label: str) -> int:
    if label not in LABELS:
        raise ValueError(f"data.label={label!r}; labels: {sorted(LABELS)}")
    return LABELS[label]


def clarity_label(seed: int, index: int) -> int:
    """1 (clear) or 0 (degraded) for example ``index``: a fair coin fixed by ``(seed, index)``."""
    return int(np.random.default_rng([int(seed), int(index), _CLARITY_STREAM]).random() < 0.5)


def degrade(image: np.ndarray, rng: np.random.Generator, *, model_size: int,
            kinds: tuple[str, ...] | None = None) -> np.ndarray:
    """A poor-quality copy of a uint8 [H, W, 3] image: a non-empty random subset of blur, noise and
    downscaling (or exactly ``kinds``). Strengths are in pixels of a ``model_size`` input."""
    height, width = image.shape[:2]
    scale = max(1.0, max(height, width) / model_size)   # image pixels per model pixel
    if kinds is None:
        kinds = tuple(k for k in DEGRADATIONS if rng.random() < 0.5) or (DEGRADATIONS[rng.integers(3)],)
    unknown = set(kinds) - set(DEGRADATIONS)
    if unknown:
        raise ValueError(f"unknown degradations {sorted(unknown)}; known: {DEGRADATIONS}")
    out = Image.fromarray(image)
    if "downscale" in kinds:
        factor = rng.uniform(0.25, 0.5) / scale          # to ¼–½ of the model's resolution
        small = (max(4, int(width * factor)), max(4, int(height * factor)))
        resample = Image.Resampling.NEAREST if rng.random() < 0.3 else Image.Resampling.BILINEAR
        out = out.resize(small, Image.Resampling.BILINEAR).resize((width, height), resample)
    if "blur" in kinds:
        out = out.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1.0, 2.5) * scale))
    pixels = np.asarray(out, np.float32)
    if "noise" in kinds:
        # Noise drawn per model pixel and enlarged: finer grain would average away in the resize.
        grid = (max(1, int(round(height / scale))), max(1, int(round(width / scale))), 3)
        noise = rng.normal(0.0, rng.uniform(15.0, 40.0), grid).astype(np.float32)
        rows = np.minimum((np.arange(height) / scale).astype(int), grid[0] - 1)
        cols = np.minimum((np.arange(width) / scale).astype(int), grid[1] - 1)
        pixels = pixels + noise[rows][:, cols]
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def engine_image(seed: int, index: int, *, version: str = "mixed", render_size: int = 224,
                 families=FAMILIES) -> tuple[np.ndarray, int]:
    """``(uint8 image, complexity)`` of engine problem ``index``: its diagram in ``version`` (``mixed``:
    a version that shows an image, drawn per index), without the texts an instruct record also builds."""
    problem = core.make_problem(seed, index, families)
    if version == "mixed":
        version = IMAGE_VERSIONS[core.rng_for(seed, index, "version").integers(len(IMAGE_VERSIONS))]
    style = core.random_style(core.rng_for(seed, index, "style"), core.image_size_for(seed, index, render_size))
    image, _ = core.render(problem, version, style)
    return image, int(problem["complexity"])


def read_labels(path: str, image_root: str | None, classes: int, max_bad_fraction: float) -> list[dict]:
    """``[{"id", "image", "label"}]`` of a user label file; bad rows are skipped and counted."""
    skips = readers.SkipCounter()
    rows = readers.read_rows(path, skips)
    out = []
    for where, row in rows:
        if not isinstance(row, dict) or "image" not in row or "label" not in row:
            skips.skip("missing_field", where, 'each row needs "image" and "label"')
            continue
        try:
            label = int(row["label"])
        except (TypeError, ValueError):
            label = -1
        if not 0 <= label < classes:
            skips.skip("bad_label", where, f"label {row['label']!r} is not in 0..{classes - 1}")
            continue
        image = str(row["image"])
        if image_root and not os.path.isabs(image):
            image = os.path.join(image_root, image)
        out.append({"id": str(row.get("id", where)), "image": image, "label": label})
    skips.check(path, skips.total, len(rows), max_bad_fraction)
    if not out:
        raise ValueError(f"{path}: no usable labelled images (rows need \"image\" and \"label\")")
    return out


@registry.register("source", "engine_images")
class EngineImageSource:
    """Labelled images (see the module docstring). Config keys: ``label`` (complexity | clarity),
    ``image_size`` (model input, required), ``image_preprocess``, ``render_size`` (engine canvas, default
    224), ``version``, ``families``, ``split`` (train | heldout), ``num_examples``; or ``path`` /
    ``image_root`` for user labels."""

    def __init__(self, data_config, *, seed: int, tokenizer=None):
        del tokenizer  # images only
        get = data_config.get
        self.label = get("label", "complexity")
        self.num_classes = num_classes(self.label)
        self.image_size = int(get("image_size", 0) or 0)
        if not self.image_size:
            raise ValueError("source engine_images needs data.image_size (the classifier's input size)")
        self.preprocess_kind = get("image_preprocess", "clip")
        self.records = None
        if get("path", ""):
            self.records = read_labels(get("path"), get("image_root", None), self.num_classes,
                                       get("max_bad_fraction", 0.1))
            self.size = len(self.records)
            return
        self.seed, self.families = core.split_seed_and_families(data_config, seed)
        self.version = get("version", "mixed")
        if self.version != "mixed" and self.version not in IMAGE_VERSIONS:
            raise ValueError(f"data.version={self.version!r}: 'mixed' or one of {IMAGE_VERSIONS} "
                             "(text_only shows no image)")
        self.render_size = int(get("render_size", 224))
        self.size = int(get("num_examples", 1_000_000))
        self._levels = None

    def __len__(self) -> int:
        return self.size

    @property
    def levels(self) -> np.ndarray:
        """Complexity level per index (for ``data.complexity_ratio``)."""
        if self._levels is None:
            if self.records is not None:
                if self.label != "complexity":
                    raise ValueError("data.complexity_ratio on user clarity labels: the file has no "
                                     "complexity levels; drop complexity_ratio")
                self._levels = np.asarray([r["label"] for r in self.records], np.int32)
            else:
                if self.size > MAX_LEVEL_SCAN:
                    raise ValueError(f"data.complexity_ratio on engine_images scans every problem for its "
                                     f"level; set data.num_examples ≤ {MAX_LEVEL_SCAN} (now {self.size})")
                self._levels = np.asarray([core.make_problem(self.seed, i, self.families)["complexity"]
                                           for i in range(self.size)], np.int32)
        return self._levels

    def _pixels(self, image) -> np.ndarray:
        return image_ops.preprocess(image, self.preprocess_kind, self.image_size)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(index)
        if self.records is not None:
            return self._user_row(self.records[index])
        image, level = engine_image(self.seed, index, version=self.version, render_size=self.render_size,
                                    families=self.families)
        label = level
        if self.label == "clarity":
            label = clarity_label(self.seed, index)
            if label == 0:
                rng = np.random.default_rng([self.seed, index, _DEGRADE_STREAM])
                image = degrade(image, rng, model_size=self.image_size)
        return {"images": self._pixels(image), "label": np.int32(label), "level": np.int32(level),
                "skip_reason": np.int32(0)}

    def _user_row(self, record: dict) -> dict:
        try:
            pixels, reason = self._pixels(record["image"]), "ok"
        except FileNotFoundError:
            reason = "missing_image"
        except ValueError as e:
            logging.warning("labelled image %s: %s", record["id"], e)
            reason = "corrupt_image"
        if reason != "ok":  # a blank row keeps the batch shape; the loss leaves it out
            pixels = np.zeros((self.image_size, self.image_size, 3), np.float32)
        return {"images": pixels, "label": np.int32(record["label"]),
                "skip_reason": np.int32(SKIP_REASONS.index(reason))}
