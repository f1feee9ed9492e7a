"""Benchmark evaluators (registry kind "evaluator"): build prompts per protocol, call the model in
batches, score with the official rules, yield per-category metrics and write tables to ``workdir``.

``predict_fn(state, prompts: list[str], images: list[np.ndarray | None]) -> list[str]``: one generated
response per prompt; ``images[i]`` is the item's HxWx3 uint8 picture, or None when the item has none or
the file is absent (the text-only slices). ``state`` is passed through untouched (model, params, ...).
No JAX here: the model lives entirely behind predict_fn.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from mathvlm import registry
from mathvlm.eval import (
    common,
    geoqa,
    local_extraction,
    math_v,
    mathverse,
    mathvista,
    we_math,
)


def load_image(path: str | None):
    """HxWx3 uint8 array, or None if there is no such file (text-only slices)."""
    if not path or not os.path.exists(path):
        return None
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class BenchmarkEvaluator:
    """Shared loop: subclasses provide ``items()`` -> [(prompt, image_path, item)] and ``score()``."""

    name = "benchmark"

    def __init__(self, predict_fn, *, data_dir: str, workdir: str | None = None, batch_size: int = 8,
                 max_examples: int | None = None, load_images: bool = True):
        self.predict_fn = predict_fn
        self.data_dir = data_dir
        self.workdir = workdir
        self.batch_size = batch_size
        self.max_examples = max_examples
        self.load_images = load_images

    def items(self) -> list[tuple[str, str | None, Any]]:
        raise NotImplementedError

    def score(self, items: list, responses: list[str]) -> tuple[common.Tally, dict]:
        raise NotImplementedError

    def generate(self, state, items) -> list[str]:
        responses: list[str] = []
        for batch in common.batched(items, self.batch_size):
            prompts = [prompt for prompt, _, _ in batch]
            images = [load_image(path) if self.load_images else None for _, path, _ in batch]
            out = list(self.predict_fn(state, prompts, images))
            if len(out) != len(prompts):
                raise ValueError(f"predict_fn returned {len(out)} responses for {len(prompts)} prompts")
            responses += out
        return responses

    def run(self, state) -> Iterable[tuple[str, float]]:
        items = self.items()[: self.max_examples]
        responses = self.generate(state, items)
        tally, extra = self.score(items, responses)
        results = {**tally.to_dict(), **extra}
        if self.workdir:
            common.write_tables(results, self.workdir, self.name)
        yield from tally.metrics(self.name)
        for key, value in extra.items():
            if isinstance(value, (int, float)):
                yield f"{self.name}/{key}", value


@registry.register("evaluator", "mathvista")
class MathVistaEvaluator(BenchmarkEvaluator):
    """Official query (with choices) from query.json; local extraction, then the official normalisation."""

    name = "mathvista"

    def __init__(self, predict_fn, *, integer_rule: str = "truncate", **kwargs):
        super().__init__(predict_fn, **kwargs)
        self.integer_rule = integer_rule

    def items(self):
        problems = mathvista.load_testmini(self.data_dir)
        return [(p["query"], os.path.join(self.data_dir, p["image"]), p) for p in problems.values()]

    def score(self, items, responses):
        tally = common.Tally()
        for (_, _, problem), response in zip(items, responses):
            extraction = local_extraction.extract_for_mathvista(response, problem)
            tally.add(mathvista.is_correct(problem, extraction, integer_rule=self.integer_rule),
                      mathvista.categories(problem))
        return tally, {}


@registry.register("evaluator", "mathverse")
class MathVerseEvaluator(BenchmarkEvaluator):
    """A MathVerse JSON list (any versions); ``prompt_field`` is ``query_cot`` (MAVIS, Math-PUMA) or
    ``query_wo`` (upstream's primary no-CoT metric)."""

    name = "mathverse"

    def __init__(self, predict_fn, *, file: str = "testmini.json", prompt_field: str = "query_cot",
                 judge: Any = None, **kwargs):
        super().__init__(predict_fn, **kwargs)
        self.file = file
        self.prompt_field = prompt_field
        # Off by default. A ``mathvlm.eval.judge.Judge`` or its kwargs (base_url, model, cache_dir) switch
        # scoring to the papers' GPT-judge protocol on the extracted answer tail.
        if isinstance(judge, dict):
            from mathvlm.eval.judge import Judge
            judge = Judge(**judge)
        self.judge = judge

    def items(self):
        path = os.path.join(self.data_dir, self.file)
        problems = mathverse.load_problems(path)
        for p in problems:
            common.require(p, (self.prompt_field,), path, p["sample_index"])
        return [(p[self.prompt_field], os.path.join(self.data_dir, "images", p["image"]) if p.get("image") else None, p)
                for p in problems]

    def score(self, items, responses):
        problems = [p for _, _, p in items]
        if self.judge is None:
            return mathverse.score_responses(problems, responses), {}
        tally = common.Tally()
        for problem, response in zip(problems, responses):
            tally.add(self.judge.consistent(problem["question"], problem["answer"], mathverse.answer_tail(response)),
                      mathverse.categories(problem))
        return tally, {"judge_calls": self.judge.calls}


@registry.register("evaluator", "math_v")
class MathVisionEvaluator(BenchmarkEvaluator):
    """MATH-V prompt (question, lettered options, boxed final answer); official extraction and is_equal."""

    name = "math_v"

    def __init__(self, predict_fn, *, file: str = "testmini.jsonl", **kwargs):
        super().__init__(predict_fn, **kwargs)
        self.file = file

    @staticmethod
    def prompt(problem: dict) -> str:
        text = problem["question"]
        if problem["options"]:
            text += "\nOptions: " + " ".join(f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(problem["options"]))
            return text + "\nPlease answer with the option letter in \\boxed{}, e.g. \\boxed{A}."
        return text + "\nPlease put the final answer in \\boxed{}."

    def items(self):
        problems = math_v.load_problems(os.path.join(self.data_dir, self.file))
        return [(self.prompt(p), os.path.join(self.data_dir, p["image"]), p) for p in problems.values()]

    def score(self, items, responses):
        tally = common.Tally()
        for (_, _, problem), response in zip(items, responses):
            tally.add(math_v.is_correct(problem, math_v.extract_answer(response)), math_v.categories(problem))
        return tally, {}


@registry.register("evaluator", "geoqa")
class GeoQAEvaluator(BenchmarkEvaluator):
    """G-LLaVA's packaged prompt (asks for 'Answer: X'); the official regex scorer."""

    name = "geoqa"

    def items(self):
        problems = geoqa.load_problems(self.data_dir)
        return [(p["prompt"], os.path.join(self.data_dir, p["image"]) if p["image"] else None, p)
                for p in problems.values()]

    def score(self, items, responses):
        tally = common.Tally()
        for (_, _, problem), response in zip(items, responses):
            tally.add(geoqa.extract_choice(response) == problem["answer"])
        return tally, {}


@registry.register("evaluator", "we_math")
class WeMathEvaluator(BenchmarkEvaluator):
    """We-Math testmini; official option parsing and four-dimensional metrics."""

    name = "we_math"

    def items(self):
        records = we_math.load_problems(os.path.join(self.data_dir, "testmini.json"))
        return [(we_math.prompt(r), os.path.join(self.data_dir, r["image_path"]), r) for r in records]

    def score(self, items, responses):
        records = [{**record, "response": response} for (_, _, record), response in zip(items, responses)]
        metrics = we_math.four_dimensional_metrics(records)
        tally = common.Tally()
        for record in records:
            tally.add(we_math.parse_option(record["response"]) == record["answer"],
                      {"key": record["key"].split("_")[-1]})
        extra = {k: v for k, v in metrics.items() if k not in ("correct", "total", "accuracy")}
        return tally, extra


@registry.register("evaluator", "engine_heldout")
class EngineHeldoutEvaluator:
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
    could read, and with a workdir writes every response to ``<name>_predictions.jsonl``.
    """

    BLIND_MODES = ("zeros", "blank", "shuffled")

    name = "engine"
    FIELDS = ("question", "answer", "version", "family", "complexity")

    def __init__(self, predict_fn, *, num_examples: int = 64, versions=("text_dominant", "text_lite",
                 "vision_intensive", "vision_dominant", "vision_only"), families=None,
                 image_size: int = 64, seed: int = 0, multiple_choice: bool = True,
                 records: Iterable[dict] | None = None, workdir: str | None = None, batch_size: int = 8,
                 name: str = "engine", blind: bool | str = False):
        self.predict_fn = predict_fn
        self.num_examples, self.seed, self.image_size = int(num_examples), int(seed), image_size
        self.versions = (versions,) if isinstance(versions, str) else tuple(versions)
        self.families = tuple(families) if families else None
        self.multiple_choice = bool(multiple_choice)
        self.workdir, self.batch_size, self.name = workdir, batch_size, name
        self.blind = ("zeros" if blind is True else blind) or None
        if self.blind not in (None,) + self.BLIND_MODES:
            raise ValueError(f"engine_heldout: blind={blind!r}; modes: {self.BLIND_MODES} (True = zeros)")
        self._records = None if records is None else list(records)

    def records(self) -> list[dict]:
        """The held-out records, made once (rendering images costs ~ms each)."""
        if self._records is None:
            # Imported here: mathvlm.data pulls grain (and with it JAX), which this package avoids.
            from mathvlm.data.engine import text
            from mathvlm.data.engine.common import FAMILIES, HELDOUT_OFFSET
            from mathvlm.data.engine.core import make_record

            unknown = sorted(set(self.versions) - set(text.VERSIONS))
            if unknown or not self.versions:
                raise ValueError(f"engine_heldout: versions {unknown or '()'} unknown; choose from {text.VERSIONS}")
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

    def run(self, state):
        from mathvlm.data import engine_prompts

        records = self.records()
        # "shuffled": each question sees the picture of the next problem asked in the same version
        same_version = {}
        for index, record in enumerate(records):
            same_version.setdefault(record["version"], []).append(index)
        stand_in = {}
        for indices in same_version.values():
            for k, index in enumerate(indices):
                stand_in[index] = records[indices[(k + 1) % len(indices)]]
        tally, answered, rows = common.Tally(), 0, []
        for start, batch in zip(range(0, len(records), self.batch_size),
                                common.batched(records, self.batch_size)):
            prompts = [engine_prompts.engine_prompt(r, self.multiple_choice) for r in batch]
            images = [self.image(r, stand_in.get(start + k)) for k, r in enumerate(batch)]
            responses = self.predict_fn(state, prompts, images)
            for record, response in zip(batch, responses, strict=True):
                correct = engine_prompts.is_correct(record, response, self.multiple_choice)
                readable = engine_prompts.extract_answer(response) is not None
                answered += readable
                tally.add(correct, {k: record[k] for k in ("version", "family", "complexity")})
                rows.append({"id": record.get("id"), "version": record["version"], "response": response,
                             "correct": bool(correct), "answered": bool(readable)})
        if self.workdir:
            common.write_tables(tally.to_dict(), self.workdir, self.name)
            with open(os.path.join(self.workdir, f"{self.name}_predictions.jsonl"), "w",
                      encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
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
            from mathvlm.data.text import load_tokenizer

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
