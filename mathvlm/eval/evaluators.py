"""Benchmark evaluators (registry kind "evaluator"): build prompts per protocol, call the model in
batches, score with the official rules, yield per-category metrics and write tables to ``workdir``.

``predict_fn(state, prompts: list[str], images: list[np.ndarray | None]) -> list[str]``: one generated
response per prompt; ``images[i]`` is the item's HxWx3 uint8 picture, or None when the item has none or
the file is absent (the text-only slices). ``state`` is passed through untouched (model, params, ...).
No JAX here: the model lives entirely behind predict_fn.

Every generating evaluator is a :class:`ResponseEvaluator`: its spec may carry its own decoding
settings (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed`` — ``sample_seed`` for
``engine_heldout`` and ``text_math``, whose ``seed`` picks the problems — ``stop``), handed to a
predict_fn that takes them (:class:`mathvlm.train.predict.Predictor`, marked
``takes_generation_options``) together with the items' indices (the sampling keys) and the evaluator's
``batch_size``. With a workdir each writes its per-item responses next to its tables, in the
benchmark's own output format (``<name>_responses.json`` / ``.jsonl``: what ``python -m
mathvlm.evaluate score`` and the official scorers read).

Splitting over processes: :meth:`ResponseEvaluator.respond` with ``shard=i, num_shards=n`` generates
the batches ``i::n`` of the items (the same batches as one process makes, so the same responses), and
:meth:`ResponseEvaluator.finish` scores the merged responses (``mathvlm.evaluate`` does the merging).
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


def _jsonable(value):
    """numpy scalars and arrays (engine records carry some) as plain JSON values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_responses(workdir: str, name: str, data: Any, jsonl: bool) -> str:
    """``<workdir>/<name>_responses.json`` (one JSON value) or ``.jsonl`` (one record a line)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"{name}_responses.json{'l' if jsonl else ''}")
    with open(path, "w", encoding="utf-8") as f:
        if jsonl:
            f.writelines(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n" for row in data)
        else:
            json.dump(data, f, indent=2, ensure_ascii=False, default=_jsonable)
    return path


class ResponseEvaluator:
    """One generated response per item, then scoring. Subclasses provide ``num_items()``,
    ``inputs(indices) -> (prompts, images or None)`` and ``finish(responses) -> [(metric, value)]``
    (which scores the responses of every item, in order, and writes the tables and responses file)."""

    name = "responses"
    sample_seed_option = "seed"  # the spec key of the sampling seed

    def setup_generation(self, predict_fn, *, batch_size: int, workdir: str | None, **generation):
        self.predict_fn, self.batch_size, self.workdir = predict_fn, int(batch_size), workdir
        if self.batch_size < 1:
            raise ValueError(f"{self.name}: batch_size={batch_size} (must be ≥ 1)")
        self.generation = {k: v for k, v in generation.items() if v is not None}

    def num_items(self) -> int:
        raise NotImplementedError

    def inputs(self, indices: list[int]) -> tuple[list[str], list | None]:
        raise NotImplementedError

    def finish(self, responses: list[str]) -> Iterable[tuple[str, float]]:
        raise NotImplementedError

    def batches(self, shard: int = 0, num_shards: int = 1) -> list[list[int]]:
        """The item indices of each batch this shard generates: batch ``b`` of the whole list holds
        items ``[b·batch_size, (b+1)·batch_size)``, and shard ``i`` of ``n`` takes batches ``i::n``."""
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard} of {num_shards}")
        n, size = self.num_items(), self.batch_size
        every = [list(range(start, min(start + size, n))) for start in range(0, n, size)]
        return every[shard::num_shards]

    def predict(self, state, indices: list[int]) -> list[str]:
        prompts, images = self.inputs(indices)
        if getattr(self.predict_fn, "takes_generation_options", False):
            out = self.predict_fn(state, prompts, images, indices=indices, batch_size=self.batch_size,
                                  **self.generation)
        elif self.generation:
            raise ValueError(f"{self.name}: generation settings {sorted(self.generation)} need a predict_fn "
                             "that takes them (mathvlm.train.predict.Predictor)")
        else:
            out = self.predict_fn(state, prompts) if images is None else self.predict_fn(state, prompts, images)
        out = list(out)
        if len(out) != len(prompts):
            raise ValueError(f"predict_fn returned {len(out)} responses for {len(prompts)} prompts")
        return out

    def respond(self, state, shard: int = 0, num_shards: int = 1) -> dict[int, str]:
        """``{item index: response}`` for the batches of shard ``shard`` of ``num_shards``."""
        responses: dict[int, str] = {}
        for indices in self.batches(shard, num_shards):
            responses.update(zip(indices, self.predict(state, indices)))
        return responses

    def run(self, state) -> Iterable[tuple[str, float]]:
        responses = self.respond(state)
        yield from self.finish([responses[i] for i in range(self.num_items())])


class BenchmarkEvaluator(ResponseEvaluator):
    """Shared loop: subclasses provide ``items()`` -> [(prompt, image_path, item)], ``score()`` and
    ``output(items, responses) -> (data, jsonl)``: the per-item responses in the benchmark's format."""

    name = "benchmark"

    def __init__(self, predict_fn, *, data_dir: str, workdir: str | None = None, batch_size: int = 8,
                 max_examples: int | None = None, load_images: bool = True, name: str | None = None,
                 max_new_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, seed: int | None = None, stop=None):
        if name:
            self.name = name
        self.setup_generation(predict_fn, batch_size=batch_size, workdir=workdir,
                              max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              top_k=top_k, seed=seed, stop=stop)
        self.data_dir = data_dir
        self.max_examples = max_examples
        self.load_images = load_images
        self._items = None

    def items(self) -> list[tuple[str, str | None, Any]]:
        raise NotImplementedError

    def selected(self) -> list[tuple[str, str | None, Any]]:
        """``items()[:max_examples]``, read once."""
        if self._items is None:
            self._items = self.items()[: self.max_examples]
        return self._items

    def num_items(self) -> int:
        return len(self.selected())

    def inputs(self, indices):
        items = self.selected()
        prompts = [items[i][0] for i in indices]
        images = [load_image(items[i][1]) if self.load_images else None for i in indices]
        return prompts, images

    def score(self, items: list, responses: list[str]) -> tuple[common.Tally, dict]:
        raise NotImplementedError

    def output(self, items: list, responses: list[str]) -> tuple[Any, bool]:
        raise NotImplementedError

    def finish(self, responses):
        items = self.selected()
        tally, extra = self.score(items, responses)
        results = {**tally.to_dict(), **extra}
        if self.workdir:
            common.write_tables(results, self.workdir, self.name)
            write_responses(self.workdir, self.name, *self.output(items, responses))
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
        return [(p["query"], os.path.join(self.data_dir, p["image"]), {**p, "pid": str(p.get("pid", pid))})
                for pid, p in problems.items()]

    def score(self, items, responses):
        tally = common.Tally()
        for (_, _, problem), response in zip(items, responses):
            extraction = local_extraction.extract_for_mathvista(response, problem)
            tally.add(mathvista.is_correct(problem, extraction, integer_rule=self.integer_rule),
                      mathvista.categories(problem))
        return tally, {}

    def output(self, items, responses):
        """The official results JSON: pid -> the problem with ``response``, ``extraction`` (ours, local),
        ``prediction`` (normalised) and ``true_false``, as ``calculate_score.py`` leaves it."""
        results = {}
        for (_, _, problem), response in zip(items, responses):
            extraction = local_extraction.extract_for_mathvista(response, problem)
            prediction = mathvista.normalize_extraction(
                extraction, problem["choices"], problem["question_type"], problem["answer_type"],
                problem["precision"], integer_rule=self.integer_rule)
            results[problem["pid"]] = {**problem, "response": response,
                "extraction": extraction, "prediction": prediction,
                "true_false": prediction is not None and prediction == problem["answer"]}
        return results, False


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

    def output(self, items, responses):
        """The official list of records with ``model_answer`` (what MathVerse's extract / score scripts
        read), plus our local ``extraction`` (the answer tail) and verdict."""
        return [{**problem, "model_answer": response, "extraction": mathverse.answer_tail(response),
                 "true_false": mathverse.is_correct(problem, response)}
                for (_, _, problem), response in zip(items, responses)], False


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

    def output(self, items, responses):
        """The official outputs jsonl: each record with ``response`` and the extracted ``model_answer``."""
        return [{**problem, "response": response, "model_answer": math_v.extract_answer(response)}
                for (_, _, problem), response in zip(items, responses)], True


@registry.register("evaluator", "geoqa")
class GeoQAEvaluator(BenchmarkEvaluator):
    """G-LLaVA's packaged prompt (asks for 'Answer: X'); the official regex scorer."""

    name = "geoqa"

    def items(self):
        problems = geoqa.load_problems(self.data_dir)
        return [(p["prompt"], os.path.join(self.data_dir, p["image"]) if p["image"] else None,
                 {**p, "question_id": qid}) for qid, p in problems.items()]

    def score(self, items, responses):
        tally = common.Tally()
        for (_, _, problem), response in zip(items, responses):
            tally.add(geoqa.extract_choice(response) == problem["answer"])
        return tally, {}

    def output(self, items, responses):
        """G-LLaVA's answers jsonl: ``question_id``, ``prompt`` and the response as ``text``."""
        return [{"question_id": problem["question_id"], "prompt": prompt, "text": response}
                for (prompt, _, problem), response in zip(items, responses)], True


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

    def output(self, items, responses):
        """The results JSON list the official four_dimensional_metrics.py reads: records + ``response``."""
        return [{**record, "response": response} for (_, _, record), response in zip(items, responses)], False


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
