"""Problem → record, and the on-the-fly grain source registered as ``source: engine``.

Example ``index`` of seed ``seed`` is a pure function of ``(seed, index, kind, version, image_size,
families)``: every random draw comes from ``np.random.default_rng([seed, index, stream])`` with a fixed
stream per purpose (family choice, problem, style, texts), so any worker yields byte-identical records in any
order. Splits: ``train`` uses ``seed``, ``heldout`` uses ``seed + 10**6`` (see ``common.HELDOUT_OFFSET``).
"""

from __future__ import annotations

import json
import math

import numpy as np

from mathvlm import registry
from mathvlm.engine import analytic, functions, geometry, wording
from mathvlm.engine.common import ALL_FAMILIES, FAMILIES, HELDOUT_OFFSET, numeric
from mathvlm.engine.render import draw_scene, random_style, render_scene  # noqa: F401 (re-exported)

_GENERATORS = {"plane_geometry": geometry.generate, "analytic_geometry": analytic.generate,
               "function": functions.generate, "function_orientation": functions.generate_orientation,
               "function_shape": functions.generate_shape}
_STREAM = {"family": 0, "problem": 1, "style": 2, "text": 3, "version": 4, "pair_mc": 5}
KINDS = ("caption", "instruct", "pairs")
IMAGE_SIZES = (224, 280, 336, 384, 448)


def rng_for(seed: int, index: int, stream: str, extra: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), _STREAM[stream], extra])


def make_problem(seed: int, index: int, families=FAMILIES) -> dict:
    family = families[rng_for(seed, index, "family").integers(len(families))]
    problem = _GENERATORS[family](rng_for(seed, index, "problem", ALL_FAMILIES.index(family)))
    problem["id"] = f"engine/{seed}/{index}"
    return problem


def image_size_for(seed: int, index: int, image_size) -> int:
    """A fixed size, or (``image_size`` of 0/None) a size varied per example."""
    if image_size:
        return int(image_size)
    return int(IMAGE_SIZES[rng_for(seed, index, "style", 1).integers(len(IMAGE_SIZES))])


def _scene_and_text(problem: dict, version: str, options=None):
    layers, with_question = wording.version_layers(problem, version)
    scene = dict(problem["scene"])
    scene["prims"] = list(scene["prims"]) + [p for _, prims in problem["givens"] for p in prims]
    # vision-only: the whole vision-dominant text (facts + question) is drawn, since the text says nothing;
    # in multiple-choice form the options are drawn too (MathVerse puts the whole question in the image)
    drawn = None
    if with_question:
        drawn = wording.version_text(problem, "vision_dominant")
        if options:
            drawn += "\n" + wording.listed_options(options)
    return scene, layers, drawn


def render(problem: dict, version: str, style: dict, options=None) -> tuple[np.ndarray, list]:
    """(image, label boxes); ``options``: the MC options, drawn into the image by the vision-only version."""
    scene, layers, drawn = _scene_and_text(problem, version, options)
    return render_scene(scene, style, layers, drawn)


def draw(problem: dict, version: str, style: dict, options=None):
    """The finished :class:`render.Canvas` (transform, drawn texts, label boxes) — for tests and tools."""
    scene, layers, drawn = _scene_and_text(problem, version, options)
    return draw_scene(scene, style, layers, drawn)


def _answer_value(answer) -> float:
    if isinstance(answer, str):
        return math.nan
    return numeric(answer)


def _common_fields(problem: dict) -> dict:
    return {"id": problem["id"], "family": problem["family"], "skill": problem["skill"],
            "complexity": np.int32(problem["complexity"]),
            "spec": json.dumps(problem["spec"], sort_keys=True, default=str)}


def make_record(seed: int, index: int, *, kind: str = "instruct", version: str = "mixed",
                image_size=336, families=FAMILIES) -> dict:
    """Flat dict of numpy arrays and str for one example (keys in the module docstring of __init__)."""
    problem = make_problem(seed, index, families)
    style = random_style(rng_for(seed, index, "style"), image_size_for(seed, index, image_size))
    text_rng = rng_for(seed, index, "text")
    record = _common_fields(problem)
    record["caption"] = wording.caption(problem, text_rng)
    if kind == "caption":  # the caption describes the fully annotated figure
        record["image"], _ = render(problem, "vision_dominant", style)
        return record
    options, answer_index = wording.choices(problem, text_rng)
    letter = "ABCD"[answer_index]
    record.update({
        "answer": wording.answer_string(problem["answer"]), "answer_value": np.float64(_answer_value(problem["answer"])),
        "choices": "\n".join(options), "answer_index": np.int32(answer_index), "answer_mc": letter,
        "cot": wording.cot_text(problem), "cot_mc": wording.cot_text(problem, letter)})
    for v in wording.VERSIONS:
        record[f"question_{v}"] = wording.version_text(problem, v)
    if kind == "pairs":  # Math-PUMA stage 2: text-rich (strong) and vision-rich (weak), same answer and CoT
        record["strong_image"], _ = render(problem, "text_dominant", style)
        record["strong_question"] = record["question_text_dominant"]
        record["weak_image"], _ = render(problem, "vision_dominant", style)
        record["weak_question"] = record["question_vision_dominant"]
        # The multiple-choice form as instruct rows and the held-out evaluator ask it, with one
        # instruction drawn for both members: a pair differs only in where the information lives.
        for side in ("strong", "weak"):
            record[f"{side}_question_mc"] = wording.mc_question(record[f"{side}_question"], options,
                                                             rng_for(seed, index, "pair_mc"))
        return record
    if version == "mixed":
        version = wording.VERSIONS[rng_for(seed, index, "version").integers(len(wording.VERSIONS))]
    record["version"] = version
    record["question"] = record[f"question_{version}"]
    # vision-only MC: the options are in ``image_mc`` and the text lists none (only the instruction and prompt)
    record["question_mc"] = wording.mc_question(record["question"], options, text_rng,
                                             listed=version != "vision_only")
    if version == "text_only":
        record["image"] = np.zeros((style["size"], style["size"], 3), np.uint8)
        record["has_image"] = np.int32(0)
    else:
        record["image"], _ = render(problem, version, style)
        record["has_image"] = np.int32(1)
    record["image_mc"] = render(problem, version, style, options)[0] if version == "vision_only" else record["image"]
    return record


def split_seed_and_families(data_config, seed: int) -> tuple[int, tuple[str, ...]]:
    """The engine seed of ``data.split`` (train: ``seed``; heldout: ``seed + HELDOUT_OFFSET``) and the
    checked ``data.families`` (all when unset), shared by every source drawing from the engine."""
    split = data_config.get("split", "train")
    if split not in ("train", "heldout"):
        raise ValueError(f"data.split must be train or heldout, got {split!r}")
    families = tuple(data_config.get("families", None) or FAMILIES)
    unknown = set(families) - set(ALL_FAMILIES)
    if unknown:
        raise ValueError(f"data.families has unknown families {sorted(unknown)}; known: {ALL_FAMILIES}")
    return int(seed) + (HELDOUT_OFFSET if split == "heldout" else 0), families


@registry.register("source", "engine")
class EngineSource:
    """grain random-access source of engine records, generated on the fly (no files).

    Config keys (all optional): ``families`` (subset of plane_geometry/analytic_geometry/function),
    ``kind`` (caption/instruct/pairs), ``version`` (one of wording.VERSIONS or "mixed"), ``image_size``
    (0 = varied), ``split`` (train/heldout), ``num_examples``.
    """

    def __init__(self, data_config, *, seed: int, tokenizer=None):
        del tokenizer  # tokenisation and chat templates belong to the pipeline
        get = data_config.get
        self.seed, self.families = split_seed_and_families(data_config, seed)
        self.kind = get("kind", "instruct")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        self.version = get("version", "mixed")
        if self.version != "mixed" and self.version not in wording.VERSIONS:
            raise ValueError(f"version must be 'mixed' or one of {wording.VERSIONS}, got {self.version!r}")
        self.image_size = get("image_size", 336)
        self.size = int(get("num_examples", 1_000_000))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(index)
        return make_record(self.seed, index, kind=self.kind, version=self.version,
                           image_size=self.image_size, families=self.families)

    def __repr__(self) -> str:
        return f"EngineSource(seed={self.seed}, kind={self.kind}, version={self.version}, n={self.size})"
