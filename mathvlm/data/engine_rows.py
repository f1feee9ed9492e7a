"""Training rows from the data engine for the vision-language stages, generated on the fly.

One source, ``engine_vlm``, three tasks (``data.task``), each a stage of the papers:

* ``caption`` — MAVIS stage 2 / LLaVA alignment: ``<image>`` then the diagram's caption, caption
  supervised (use the ``plain`` template).
* ``instruct`` — MAVIS stage 3 / Math-LLaVA / Math-PUMA stage 3: the question of one MathVerse version
  (``data.version``: one version, a tuple of versions drawn per example, or "mixed") with its image,
  answered by the chain-of-thought that ends in the answer line. ``data.multiple_choice`` is the fraction
  of examples asked in multiple-choice form (their CoT ends by naming the option letter).
* ``pairs`` — Math-PUMA stage 2: the text-rich (``strong_``) and vision-rich (``weak_``) member of each
  problem, same answer, same CoT (see :func:`mathvlm.data.sources.join_members`).

Rows come from the on-the-fly engine or, with ``data.path``, from a dataset the engine's TFDS builder
wrote (``python -m mathvlm.engine build --kind ... --out DIR``; ``data.path`` is the builder's
version folder, e.g. ``DIR/math_engine_instruct/1.0.0``), read by random access from its ArrayRecord
files. Built instruct records keep the version drawn at build time.

The user turn is the same text the held-out evaluator asks (:mod:`mathvlm.data.engine_prompts`), so
training and evaluation prompts cannot drift apart. The source exposes ``levels`` (complexity
0–3 per index) for ``data.complexity_ratio``.
"""

from __future__ import annotations

import numpy as np

from mathvlm import registry
from mathvlm.data import engine_prompts
from mathvlm.engine import core
from mathvlm.engine.wording import VERSIONS
from mathvlm.data.sources import RowBuilder, join_members

TASKS = ("caption", "instruct", "pairs")
# Computing levels means generating every problem (no rendering); beyond this, ask for a smaller
# num_examples instead of silently spending minutes at start-up.
MAX_LEVEL_SCAN = 200_000


def parse_versions(spec) -> tuple[str, ...]:
    """``data.version``: "mixed" (every version), one version, or several (a tuple, or comma-separated)."""
    if isinstance(spec, str):
        spec = VERSIONS if spec == "mixed" else tuple(v.strip() for v in spec.split(",") if v.strip())
    versions = tuple(spec)
    unknown = [v for v in versions if v not in VERSIONS]
    if unknown:
        raise ValueError(f"data.version has unknown versions {unknown}; versions: {VERSIONS} or 'mixed'")
    return versions


def instruct_form(seed: int, index: int, versions, multiple_choice: float) -> tuple[str, bool]:
    """The version and the multiple-choice flag of example ``index``: a pure function of the seed and
    index, so the DPO pair builder (:mod:`mathvlm.tools.dpo_pairs`) asks exactly what training showed."""
    version = versions[int(np.random.default_rng([seed, index, 17, 0]).integers(len(versions)))]
    draw = int(np.random.default_rng([seed, index, 17, 1]).integers(1_000_000))
    return version, draw < multiple_choice * 1_000_000


def _pair_member(record: dict, side: str) -> dict:
    """The instruct-record view of one side of a pair record: its question and multiple-choice form,
    as the engine wrote them (the evaluator asks the same forms)."""
    key = side + "_question_mc"
    if key not in record:
        raise KeyError(f"pair record {record.get('id', '?')} has no {key!r}: a pairs dataset built before "
                       "engine version 1.1.0; rebuild it with python -m mathvlm.engine build --kind pairs")
    return {"id": f"{record['id']}/{side}", "question": record[side + "_question"], "has_image": 1,
            "question_mc": record[key],
            "cot": record["cot"], "cot_mc": record["cot_mc"], "answer_mc": record["answer_mc"]}


@registry.register("source", "engine_vlm")
class EngineVLMSource:
    """Tokenised engine rows (see module docstring). Config keys besides the pipeline's (``seq_len``,
    ``template``, ``image_size``, ``image_preprocess``, ``num_image_tokens``): ``task``, ``version``,
    ``multiple_choice`` (0–1), ``answer`` (``cot`` or ``short``: the answer line alone), ``families``, ``split`` (train/heldout), ``num_examples``,
    ``render_size`` (engine canvas in px before preprocessing; default 224), ``path`` (a built dataset).
    Pair rows are built in two steps, :meth:`pair_members` then :meth:`pair_row`, so a row transform
    (``data.row_transforms``, :mod:`mathvlm.data.pipeline`) can change a member before tokenisation."""

    def __init__(self, data_config, *, seed: int, tokenizer):
        get = data_config.get
        if get("weak_label_noise", 0.0):  # a config written before label noise became a row transform
            raise ValueError("data.weak_label_noise is no longer read by the engine_vlm source: set "
                             "data.row_transforms = ({'name': 'weak_label_noise', 'fraction': F},) instead")
        self.task = get("task", "instruct")
        if self.task not in TASKS:
            raise ValueError(f"data.task={self.task!r}; tasks: {TASKS}")
        self.versions = parse_versions(get("version", "mixed"))
        self.multiple_choice = float(get("multiple_choice", 0.0))
        self.answer = get("answer", "cot")
        if self.answer not in engine_prompts.ANSWER_FORMS:
            raise ValueError(f"data.answer={self.answer!r}; forms: {engine_prompts.ANSWER_FORMS} (chain of "
                             "thought, or the answer line alone)")
        if not 0.0 <= self.multiple_choice <= 1.0:
            raise ValueError(f"data.multiple_choice={self.multiple_choice} must be a fraction in [0, 1]")
        if not get("image_size", 0):
            raise ValueError("source engine_vlm needs data.image_size (the model's input resolution)")
        engine_config = {"kind": "caption" if self.task == "caption" else self.task,
                         "families": get("families", None), "split": get("split", "train"),
                         "num_examples": get("num_examples", 1_000_000),
                         "image_size": get("render_size", 224)}
        self.engine = core.EngineSource(type(data_config)(engine_config), seed=seed)
        self.built = BuiltRecords(get("path"), get("split", "train")) if get("path", None) else None
        self.build = RowBuilder(data_config, tokenizer, default_template="plain")
        self._levels = None

    def __len__(self) -> int:
        return len(self.built) if self.built is not None else len(self.engine)

    def _record(self, index: int) -> dict:
        return self.built[index] if self.built is not None else self.engine[index]

    @property
    def levels(self) -> np.ndarray:
        if self._levels is None:
            if len(self) > MAX_LEVEL_SCAN:
                raise ValueError(f"data.complexity_ratio on engine_vlm scans every problem for its level; "
                                 f"set data.num_examples ≤ {MAX_LEVEL_SCAN} (now {len(self)})")
            e = self.engine
            if self.built is not None:
                self._levels = np.asarray([self.built[i]["complexity"] for i in range(len(self))], np.int32)
            else:
                self._levels = np.asarray([core.make_problem(e.seed, i, e.families)["complexity"]
                                           for i in range(len(self))], np.int32)
        return self._levels

    def problem(self, index: int) -> dict:
        """The instruct record of example ``index`` as training asks it: its version, and
        ``multiple_choice`` (bool) added. RL rollouts ask and score exactly this."""
        if self.task != "instruct":
            raise ValueError(f"data.task={self.task!r}: problems to ask come from data.task='instruct'")
        e = self.engine
        version, mc = instruct_form(e.seed, int(index), self.versions, self.multiple_choice)
        if self.built is not None:
            record = self.built[int(index)]
        else:
            record = core.make_record(e.seed, int(index), kind="instruct", version=version,
                                      image_size=e.image_size, families=e.families)
        return {**record, "multiple_choice": bool(mc)}

    def pair_members(self, index: int) -> tuple[dict, bool, dict[str, dict]]:
        """Pair ``index``: its record, whether it is asked in multiple-choice form, and the instruct
        records of its text-rich and vision-rich members (``{"strong": ..., "weak": ...}``)."""
        if self.task != "pairs":
            raise ValueError(f"data.task={self.task!r}: pair members come from data.task='pairs'")
        record = self._record(int(index))
        _, mc = instruct_form(self.engine.seed, int(index), self.versions, self.multiple_choice)
        return record, mc, {side: _pair_member(record, side) for side in ("strong", "weak")}

    def pair_row(self, record: dict, mc: bool, sides: dict[str, dict]) -> dict:
        """The tokenised pair row of :meth:`pair_members`' output (members as given)."""
        members = {side: self.build({
            "id": f"{record['id']}/{side}", "images": [record[side + "_image"]],
            "conversation": engine_prompts.engine_conversation(member, mc, answer=self.answer)})
            for side, member in sides.items()}
        return join_members(members) | {"level": np.int32(record["complexity"])}

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if self.task == "caption":
            record = self._record(index)
            row = self.build({"id": record["id"], "images": [record["image"]], "conversation": [
                {"role": "user", "content": engine_prompts.IMAGE_MARK},
                {"role": "assistant", "content": record["caption"]}]})
            return row | {"level": np.int32(record["complexity"])}
        if self.task == "pairs":
            return self.pair_row(*self.pair_members(index))
        record = self.problem(index)
        mc = record["multiple_choice"]
        image = engine_prompts.engine_image(record, mc)
        row = self.build({"id": record["id"], "images": [] if image is None else [image],
                          "conversation": engine_prompts.engine_conversation(record, mc, answer=self.answer)})
        return row | {"level": np.int32(record["complexity"])}


class BuiltRecords:
    """Random access to a dataset the engine's TFDS builder wrote (ArrayRecord, no TensorFlow needed):
    records as the on-the-fly engine makes them (text as str, images as uint8 arrays)."""

    def __init__(self, path: str, split: str):
        import os

        import tensorflow_datasets as tfds

        if not os.path.isfile(os.path.join(path, "dataset_info.json")):
            raise FileNotFoundError(f"data.path={path!r} is not a built engine dataset (no dataset_info.json); "
                                    "give the builder's version folder, e.g. DIR/math_engine_instruct/1.0.0")
        self.path = path
        self.source = tfds.builder_from_directory(path).as_data_source(split=split)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        raw = self.source[int(index)]
        return {k: v.decode("utf-8") if isinstance(v, bytes) else np.asarray(v) if hasattr(v, "shape") else v
                for k, v in raw.items()}
