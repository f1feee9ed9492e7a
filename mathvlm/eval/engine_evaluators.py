"""The data engine's evaluators (registry kind "evaluator"): ``engine_heldout`` (generated held-out
problems in every MathVerse-style version, answered by the model) and ``engine_retrieval`` (diagram ↔
caption retrieval for dual encoders). Moved out of :mod:`mathvlm.eval.evaluators`, which re-exports
them; no JAX here either: the model lives behind predict_fn or its embedding methods."""

from __future__ import annotations

from collections.abc import Iterable

from mathvlm import registry
from mathvlm.eval import common
from mathvlm.eval.base import ResponseEvaluator, load_image, write_responses


@registry.register("evaluator", "engine_heldout")
class EngineHeldoutEvaluator(ResponseEvaluator):
    """The data engine's held-out split (seed ``seed + HELDOUT_OFFSET``, never trained on): the first
    ``num_examples`` problems, each asked in every one of ``versions`` (MathVerse-style: same problem,
    information moved between text and image). Accuracy overall and per version, family and complexity.

    Config: ``{"name": "engine_heldout", "num_examples": 64, "versions": ("text_dominant", ...),
    "families": None, "image_size": 64, "seed": 0, "multiple_choice": True}``. ``records`` (dicts with
    the fields of ``make_record(kind="instruct")``) replaces the generated set, e.g. a fixed file.

    Prompts and answer extraction are :mod:`mathvlm.data.engine_prompts`, the same as the engine
    training rows use: the question (``question_mc`` listing the options for multiple choice) with the
    image, answered by a chain of thought whose last line is ``The answer is X[, which is option L].``.
    ``blind=True`` (or ``"zeros"``) replaces every picture by zeros (image tokens kept): the gap to the
    normal run is what the model reads from the image. A black canvas is far from any training picture,
    so two controls keep the picture in distribution: ``"blank"`` (a white canvas) and ``"shuffled"``
    (the picture of the next held-out problem in the same version: a real diagram that says nothing about
    this question). Besides accuracy it logs ``answered``, the fraction of responses with an answer it
    could read, and with a workdir writes every response to ``<name>_responses.jsonl`` (with the
    record's id, version, family, complexity, question, answer, the extracted answer and the verdict).
    ``seed`` picks the problems; the sampling seed (with ``temperature`` > 0) is ``sample_seed``.
    """

    BLIND_MODES = ("zeros", "blank", "shuffled")

    name = "engine"
    sample_seed_option = "sample_seed"
    FIELDS = ("question", "answer", "version", "family", "complexity")

    def __init__(self, predict_fn, *, num_examples: int = 64, versions=("text_dominant", "text_lite",
                 "vision_intensive", "vision_dominant", "vision_only"), families=None,
                 image_size: int = 64, seed: int = 0, multiple_choice: bool = True,
                 records: Iterable[dict] | None = None, workdir: str | None = None, batch_size: int = 8,
                 name: str = "engine", blind: bool | str = False, max_new_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 sample_seed: int | None = None, stop=None):
        self.name = name
        self.setup_generation(predict_fn, batch_size=batch_size, workdir=workdir,
                              max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              top_k=top_k, seed=sample_seed, stop=stop)
        self.num_examples, self.seed, self.image_size = int(num_examples), int(seed), image_size
        self.versions = (versions,) if isinstance(versions, str) else tuple(versions)
        self.families = tuple(families) if families else None
        self.multiple_choice = bool(multiple_choice)
        self.blind = ("zeros" if blind is True else blind) or None
        if self.blind not in (None,) + self.BLIND_MODES:
            raise ValueError(f"engine_heldout: blind={blind!r}; modes: {self.BLIND_MODES} (True = zeros)")
        self._records = None if records is None else list(records)
        self._stand_ins = None

    def records(self) -> list[dict]:
        """The held-out records, made once (rendering images costs ~ms each)."""
        if self._records is None:
            # Imported here: mathvlm.data pulls grain (and with it JAX), which this package avoids.
            from mathvlm.engine import wording
            from mathvlm.engine.common import FAMILIES, HELDOUT_OFFSET
            from mathvlm.engine.core import make_record

            unknown = sorted(set(self.versions) - set(wording.VERSIONS))
            if unknown or not self.versions:
                raise ValueError(f"engine_heldout: versions {unknown or '()'} unknown; choose from {wording.VERSIONS}")
            self._records = [make_record(self.seed + HELDOUT_OFFSET, index, kind="instruct", version=version,
                                         image_size=self.image_size, families=self.families or FAMILIES)
                             for version in self.versions for index in range(self.num_examples)]
        fields = self.FIELDS + (("question_mc", "choices", "answer_mc") if self.multiple_choice else ())
        for index, record in enumerate(self._records):
            common.require(record, fields, "engine_heldout records",
                           record.get("id", index) if isinstance(record, dict) else index)
        return self._records

    def _picture(self, record: dict):
        from mathvlm.data import engine_prompts

        image = engine_prompts.engine_image(record, self.multiple_choice)
        return load_image(image) if isinstance(image, str) else image

    def image(self, record: dict, stand_in: dict | None = None):
        """The record's picture for predict_fn (None when it shows none: text_only), or its blind
        stand-in; ``stand_in`` is the record whose picture ``"shuffled"`` shows instead."""
        image = self._picture(record)
        if self.blind is None or image is None:
            return image
        import numpy as np

        if self.blind == "shuffled":
            other = self._picture(stand_in) if stand_in is not None else None
            return other if other is not None and other.shape == image.shape else np.zeros_like(image)
        return np.full_like(image, 255 if self.blind == "blank" else 0)

    def num_items(self) -> int:
        return len(self.records())

    def stand_ins(self) -> dict[int, dict]:
        """``"shuffled"``: each question sees the picture of the next problem asked in the same version."""
        if self._stand_ins is not None:
            return self._stand_ins
        records = self.records()
        same_version: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            same_version.setdefault(record["version"], []).append(index)
        stand_in = {}
        for indices in same_version.values():
            for k, index in enumerate(indices):
                stand_in[index] = records[indices[(k + 1) % len(indices)]]
        self._stand_ins = stand_in
        return stand_in

    def inputs(self, indices):
        from mathvlm.data import engine_prompts

        records = self.records()
        stand_in = self.stand_ins() if self.blind == "shuffled" else {}
        prompts = [engine_prompts.engine_prompt(records[i], self.multiple_choice) for i in indices]
        images = [self.image(records[i], stand_in.get(i)) for i in indices]
        return prompts, images

    def finish(self, responses):
        from mathvlm.data import engine_prompts

        records = self.records()
        tally, answered, rows = common.Tally(), 0, []
        for record, response in zip(records, responses, strict=True):
            correct = engine_prompts.is_correct(record, response, self.multiple_choice)
            extraction = engine_prompts.extract_answer(response)
            answered += extraction is not None
            tally.add(correct, {k: record[k] for k in ("version", "family", "complexity")})
            rows.append({"id": record.get("id"), "version": record["version"], "family": record["family"],
                         "complexity": record["complexity"],
                         "question": engine_prompts.engine_prompt(record, self.multiple_choice),
                         "answer": record["answer_mc"] if self.multiple_choice else record["answer"],
                         "response": response, "extraction": extraction, "correct": bool(correct),
                         "answered": extraction is not None})
        if self.workdir:
            common.write_tables(tally.to_dict(), self.workdir, self.name)
            write_responses(self.workdir, self.name, rows, jsonl=True)
        yield from tally.metrics(self.name)
        yield f"{self.name}/answered", answered / max(1, len(records))


@registry.register("evaluator", "engine_retrieval")
class EngineRetrievalEvaluator:
    """Diagram ↔ caption retrieval on held-out engine captions, for dual encoders (MAVIS CLIP-Math):
    among ``num_examples`` held-out pairs, R@1 / R@5 of the right caption for each diagram (``i2t``)
    and of the right diagram for each caption (``t2i``), by cosine similarity of the model's
    ``image_embeds`` / ``text_embeds``. Rows are built by the training source (``engine_captions``) from
    the run's ``data_config`` on the held-out seed range, so preprocessing and tokens are the training
    ones; chance R@1 is ``1 / num_examples``. The model lives behind its two methods: no JAX here."""

    name = "retrieval"

    def __init__(self, predict_fn, *, data_config, num_examples: int = 100, batch_size: int = 50,
                 seed: int = 0, name: str = "retrieval"):
        del predict_fn  # retrieval compares embeddings; nothing is generated
        self.data_config, self.num_examples, self.batch_size = data_config, num_examples, batch_size
        self.seed, self.name = seed, name
        self._rows = None

    def rows(self) -> dict:
        if self._rows is None:
            import numpy as np
            from ml_collections import ConfigDict

            from mathvlm.data.sources import EngineCaptionSource
            from mathvlm.data.tokenization import load_tokenizer

            config = ConfigDict({**self.data_config.to_dict(), "split": "heldout"})
            source = EngineCaptionSource(config, seed=self.seed,
                                         tokenizer=load_tokenizer(config.get("tokenizer", "bytes")))
            rows = [source[i] for i in range(self.num_examples)]
            self._rows = {k: np.stack([r[k] for r in rows]) for k in ("images", "tokens", "attention_mask")}
        return self._rows

    def run(self, model):
        import numpy as np

        rows, n = self.rows(), self.num_examples
        image, text = [], []
        for start in range(0, n, self.batch_size):
            chunk = slice(start, start + self.batch_size)
            image.append(np.asarray(model.image_embeds(rows["images"][chunk]), np.float32))
            text.append(np.asarray(model.text_embeds(rows["tokens"][chunk], rows["attention_mask"][chunk]),
                                   np.float32))
        image, text = np.concatenate(image), np.concatenate(text)
        image /= np.linalg.norm(image, axis=-1, keepdims=True)
        text /= np.linalg.norm(text, axis=-1, keepdims=True)
        similarity = image @ text.T
        results = {}
        for direction, scores in (("i2t", similarity), ("t2i", similarity.T)):
            # Rank of the right partner: how many candidates score strictly higher.
            rank = np.sum(scores > np.diag(scores)[:, None], axis=1)
            for k in (1, 5):
                results[f"{direction}_r@{k}"] = float(np.mean(rank < k))
        for key, value in results.items():
            yield f"{self.name}/{key}", value
