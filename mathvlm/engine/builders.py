"""TFDS builders (ArrayRecord, no TensorFlow) for the engine's caption, instruct and pair datasets.

Kept in an importable module: grain workers are spawned and must import the class by name. Images go in as
PNG bytes (a numpy image would need TF's encoder). Split ``train`` comes from ``seed``, ``heldout`` from
``seed + 10**6`` (disjoint as long as seeds stay below 10**6).

Builds are reproducible byte for byte: the same arguments write identical files in any process, and
:func:`dataset_digest` / ``<data_dir>/SHA256SUMS`` name them by sha256 (how two ablation arms check they saw
the same data). Each record is a ``tf.train.Example``, whose features are a protobuf ``map<string, Feature>``;
protobuf (upb) serialises a map in its hash-table order, which changes from process to process, so TFDS's
plain ``SerializeToString()`` wrote the same record as different bytes. The builders serialise with
``deterministic=True`` (map entries sorted by key) instead. The metadata TFDS writes (``dataset_info.json``,
``features.json``) holds no build time or absolute path, so the digest covers every file of the dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import utils as tfds_utils

from mathvlm.engine import core, wording
from mathvlm.engine.common import HELDOUT_OFFSET

_TEXT_KEYS = {
    "caption": ["id", "family", "skill", "spec", "caption"],
    "instruct": ["id", "family", "skill", "spec", "caption", "version", "question", "question_mc", "choices",
                 "answer", "answer_mc", "cot", "cot_mc"] + [f"question_{v}" for v in wording.VERSIONS],
    "pairs": ["id", "family", "skill", "spec", "caption", "strong_question", "weak_question",
              "strong_question_mc", "weak_question_mc", "choices", "answer", "answer_mc", "cot", "cot_mc"],
}
_IMAGE_KEYS = {"caption": ["image"], "instruct": ["image", "image_mc"], "pairs": ["strong_image", "weak_image"]}
_INT_KEYS = {"caption": ["complexity"], "instruct": ["complexity", "answer_index", "has_image"],
             "pairs": ["complexity", "answer_index"]}


SHA256SUMS = "SHA256SUMS"


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class DeterministicExampleSerializer(example_serializer.ExampleSerializer):
    """TFDS's ``tf.train.Example`` serialiser with map entries (the features) in sorted key order."""

    def serialize_example(self, example):
        return self.get_tf_example(example).SerializeToString(deterministic=True)


@contextlib.contextmanager
def _deterministic_serialization():
    # TFDS's split builder constructs ``example_serializer.ExampleSerializer`` itself, with no hook to pass
    # another; swap the class for the duration of our own split generation only.
    original = example_serializer.ExampleSerializer
    example_serializer.ExampleSerializer = DeterministicExampleSerializer
    try:
        yield
    finally:
        example_serializer.ExampleSerializer = original


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

    def _download_and_prepare(self, *args, **kwargs):
        with _deterministic_serialization():
            return super()._download_and_prepare(*args, **kwargs)

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


def _sha256_file(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256sum_lines(files: dict) -> str:
    """``sha256sum`` output for ``{name: hex}``, sorted by name."""
    return "".join(f"{files[name]}  {name}\n" for name in sorted(files))


def dataset_digest(data_dir) -> dict:
    """sha256 digests of a built TFDS dataset directory (``<out>/<name>/<version>``).

    Returns ``{"files": {name: hex}, "splits": {split: {"sha256", "num_examples", "files"}}, "sha256": hex,
    "num_examples": int, "sha256sums": str}``. ``files`` covers every file in ``data_dir`` except
    ``SHA256SUMS`` (record shards, ``dataset_info.json``, ``features.json``); ``sha256sums`` is their
    ``sha256sum`` listing (sorted by name), the content of ``SHA256SUMS``. A split's digest is the sha256 of the
    listing of its shards alone, the dataset's the sha256 of the full listing, so in ``data_dir``
    ``sha256sum <shards> | sha256sum`` and ``sha256sum SHA256SUMS`` recompute them.
    """
    data_dir = epath.Path(data_dir)
    files = {p.name: _sha256_file(p) for p in sorted(data_dir.iterdir()) if p.name != SHA256SUMS and p.is_file()}
    info = tfds.builder_from_directory(os.fspath(data_dir)).info
    splits = {}
    for name, split in info.splits.items():
        shards = {p.name: files[p.name] for p in split.filepaths}
        splits[name] = {"sha256": hashlib.sha256(_sha256sum_lines(shards).encode()).hexdigest(),
                        "num_examples": int(split.num_examples), "files": shards}
    listing = _sha256sum_lines(files)
    return {"files": files, "splits": splits, "sha256": hashlib.sha256(listing.encode()).hexdigest(),
            "num_examples": sum(s["num_examples"] for s in splits.values()), "sha256sums": listing}


def write_sha256sums(data_dir, digest: dict | None = None) -> dict:
    """Write ``<data_dir>/SHA256SUMS`` (``sha256sum -c SHA256SUMS`` in ``data_dir`` verifies it); returns the
    digest."""
    digest = dataset_digest(data_dir) if digest is None else digest
    (epath.Path(data_dir) / SHA256SUMS).write_text(digest["sha256sums"], encoding="utf-8")
    return digest


def digest_lines(digest: dict) -> list[str]:
    """``sha256 <split>: <hex> (N records, K files)`` per split, then the same for the whole dataset."""
    def plural(n, word):
        return f"{n} {word}{'' if n == 1 else 's'}"
    rows = [(name, s["sha256"], s["num_examples"], len(s["files"])) for name, s in digest["splits"].items()]
    rows.append(("dataset", digest["sha256"], digest["num_examples"], len(digest["files"])))
    return [f"sha256 {name}: {hex_} ({plural(n, 'record')}, {plural(k, 'file')})" for name, hex_, n, k in rows]


def build(kind: str, num: int, seed: int, out_dir: str, *, num_heldout=None, image_size=336, progress=None):
    """Write the dataset as ArrayRecord under ``out_dir``, and its ``SHA256SUMS``; returns the builder
    (``.data_dir`` is the path, ``.digest`` the :func:`dataset_digest`)."""
    builder = BUILDERS[kind](num_examples=num, seed=seed, num_heldout=num_heldout, image_size=image_size,
                             progress=progress, data_dir=out_dir, file_format="array_record")
    builder.download_and_prepare()
    builder.digest = write_sha256sums(builder.data_dir)
    return builder
