"""Evaluator plumbing shared by the benchmark and engine evaluators (see :mod:`mathvlm.eval.evaluators`):
image loading, per-item response files, the batched generate-then-score loop
(:class:`ResponseEvaluator`) and the benchmark-file loop (:class:`BenchmarkEvaluator`). No JAX."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from mathvlm.eval import common


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
                 top_p: float | None = None, top_k: int | None = None, seed: int | None = None, stop=None,
                 missing_images: str = "text_only"):
        if name:
            self.name = name
        if missing_images not in ("text_only", "error"):
            raise ValueError(f"{self.name}: missing_images={missing_images!r}; 'text_only' (an absent picture "
                             "is asked without one, as for the text-only slices) or 'error'")
        # "error" (the protocol configs): a benchmark item whose picture is absent stops the run before
        # the model loads, instead of being silently asked as text.
        self.missing_images = missing_images
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

    # The benchmark folder's expected layout, quoted by data errors (subclasses say theirs).
    LAYOUT = ""

    def check_inputs(self) -> None:
        """Read the benchmark files and, with ``missing_images="error"``, check every item's picture
        exists; raises DataError naming the file and the expected folder layout."""
        try:
            items = self.selected()
        except common.DataError as e:
            raise common.DataError(f"{self.name}: {e}{self.layout_hint()}") from None
        if self.missing_images != "error" or not self.load_images:
            return
        missing = [path for _, path, _ in items if path and not os.path.isfile(path)]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise common.DataError(f"{self.name}: image {missing[0]} not found{more} (data_dir "
                                   f"{self.data_dir}){self.layout_hint()}")

    def layout_hint(self) -> str:
        return f"; expected layout of data_dir:\n{self.LAYOUT}" if self.LAYOUT else ""

    def inputs(self, indices):
        items = self.selected()
        prompts = [items[i][0] for i in indices]
        if self.missing_images == "error" and self.load_images:
            for i in indices:
                if items[i][1] and not os.path.isfile(items[i][1]):
                    raise common.DataError(f"{self.name}: image {items[i][1]} not found{self.layout_hint()}")
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
