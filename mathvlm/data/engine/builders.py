"""TFDS builders (ArrayRecord, no TensorFlow) for the engine's caption, instruct and pair datasets.

Kept in an importable module: grain workers are spawned and must import the class by name. Images go in as
PNG bytes (a numpy image would need TF's encoder). Split ``train`` comes from ``seed``, ``heldout`` from
``seed + 10**6`` (disjoint as long as seeds stay below 10**6).
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from mathvlm.data.engine import core, text
from mathvlm.data.engine.common import HELDOUT_OFFSET

_TEXT_KEYS = {
    "caption": ["id", "family", "skill", "spec", "caption"],
    "instruct": ["id", "family", "skill", "spec", "caption", "version", "question", "question_mc", "choices",
                 "answer", "answer_mc", "cot", "cot_mc"] + [f"question_{v}" for v in text.VERSIONS],
    "pairs": ["id", "family", "skill", "spec", "caption", "strong_question", "weak_question",
              "strong_question_mc", "weak_question_mc", "choices", "answer", "answer_mc", "cot", "cot_mc"],
}
_IMAGE_KEYS = {"caption": ["image"], "instruct": ["image", "image_mc"], "pairs": ["strong_image", "weak_image"]}
_INT_KEYS = {"caption": ["complexity"], "instruct": ["complexity", "answer_index", "has_image"],
             "pairs": ["complexity", "answer_index"]}


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class _EngineBuilder(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    KIND = "instruct"

    # tfds locates a builder's source through ``importlib_resources`` (not installed) whenever the class lives
    # in a package; pointing it at this file directly avoids that lookup.
    @tfds_utils.classproperty
    @classmethod
    def code_path(cls):
        return epath.Path(__file__)

    def __init__(self, *, num_examples: int = 1000, seed: int = 0, num_heldout: int | None = None,
                 image_size: int = 336, progress=None, **kwargs):
        self._num, self._seed, self._image_size = int(num_examples), int(seed), image_size
        self._num_heldout = max(1, self._num // 10) if num_heldout is None else int(num_heldout)
        self._progress = progress
        super().__init__(**kwargs)

    def _info(self):
        features = {k: tfds.features.Text() for k in _TEXT_KEYS[self.KIND]}
        features.update({k: tfds.features.Image(shape=(None, None, 3)) for k in _IMAGE_KEYS[self.KIND]})
        features.update({k: tfds.features.Scalar(dtype=np.int32) for k in _INT_KEYS[self.KIND]})
        if self.KIND != "caption":
            features["answer_value"] = tfds.features.Scalar(dtype=np.float64)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                     description=f"mathvlm data engine, {self.KIND} records")

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(self._seed, self._num),
                "heldout": self._generate_examples(self._seed + HELDOUT_OFFSET, self._num_heldout)}

    def _generate_examples(self, seed: int, num: int):
        for index in range(num):
            record = core.make_record(seed, index, kind=self.KIND, image_size=self._image_size)
            out = {k: record[k] for k in _TEXT_KEYS[self.KIND] + _INT_KEYS[self.KIND]}
            for k in _IMAGE_KEYS[self.KIND]:
                image = record[k] if record.get("has_image", 1) else np.full((8, 8, 3), 255, np.uint8)
                out[k] = png_bytes(image)
            if self.KIND != "caption":
                out["answer_value"] = record["answer_value"]
            if self._progress is not None:
                self._progress.update(1)
            yield f"{seed}_{index}", out


class MathEngineCaption(_EngineBuilder):
    KIND = "caption"


class MathEngineInstruct(_EngineBuilder):
    KIND = "instruct"


class MathEnginePairs(_EngineBuilder):
    KIND = "pairs"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "strong_question_mc / weak_question_mc: each member's multiple-choice "
                              "question as the evaluator asks it (1.0.0 rows had none)."}


BUILDERS = {"caption": MathEngineCaption, "instruct": MathEngineInstruct, "pairs": MathEnginePairs}


def build(kind: str, num: int, seed: int, out_dir: str, *, num_heldout=None, image_size=336, progress=None):
    """Write the dataset as ArrayRecord under ``out_dir``; returns the builder (``.data_dir`` is the path)."""
    builder = BUILDERS[kind](num_examples=num, seed=seed, num_heldout=num_heldout, image_size=image_size,
                             progress=progress, data_dir=out_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder
