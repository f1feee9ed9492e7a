"""Generation for evaluation: prompts (+ images) → chat template → KV-cache greedy decoding → answers.

``Predictor`` is the ``predict_fn`` evaluators call: ``predictor(model, prompts, images=None) ->
list[str]``, ``images[i]`` an HxWx3 uint8 picture or None. Build it from a run's config with
:meth:`Predictor.from_config` so evaluation prompts are tokenised exactly like the training rows
(:class:`mathvlm.data.sources.RowBuilder`): same template, the image mark placed LLaVA-style as
``"<image>\\n" + prompt`` (ChatML moves it to the front itself), each image expanded to the model's
``tokens_per_image`` placeholder ids, BOS first, and the same image preprocessing.

Batches have fixed shapes so a few compilations cover an evaluation set: rows are left-padded to a
multiple of ``pad_to`` and the batch is filled to ``batch_size`` with copies of its last row. With a
VLM every batch carries ``images`` and ``image_mask`` (False and a zero image for text-only rows), so
mixed and text-only batches share one compiled program.

Decoding settings (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``,
``batch_size``) are the predictor's defaults (``config.eval``) and can be overridden per call, as the
evaluators do with their own spec's settings. Greedy when ``temperature`` is 0. Sampling is keyed per
item: row ``i`` draws from ``fold_in(key(seed), indices[i])`` (``indices`` default to the rows'
positions in the call), so a seed gives the same responses whatever the batching or the split of the
items over processes. ``stop`` strings cut each response before the first one; a stop string that is a
single token of the tokenizer also ends that row's decoding early (like the end-of-sequence token).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from mathvlm.data import images as image_ops
from mathvlm.data import templates
from mathvlm.models.generate import generate


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "stop_tokens", "pad_id"))
def _vlm_generate(graphdef, state, tokens, images, image_mask, mask, rng, temperature, top_p, *,
                  max_new_tokens, top_k, stop_tokens, pad_id):
    # VLM.generate computes the merged prefill embeddings outside the decoder's compiled loop; jitting
    # the whole call keeps the vision tower and projector compiled as well.
    model = nnx.merge(graphdef, state)
    return model.generate(tokens, images, image_mask, mask, max_new_tokens=max_new_tokens, rng=rng,
                          temperature=temperature, top_p=top_p, top_k=top_k, stop_tokens=stop_tokens,
                          pad_id=pad_id)


GENERATION_OPTIONS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "batch_size")


def stop_strings(stop) -> tuple[str, ...]:
    """``stop`` as a tuple of non-empty strings (one string, a sequence of them, or None)."""
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(x, str) for x in stops):
        raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
    return tuple(x for x in stops if x)


def cut_at_stop(text: str, stops) -> str:
    """``text`` up to (not including) the earliest occurrence of any of ``stops``."""
    found = [i for i in (text.find(x) for x in stops) if i >= 0]
    return text[:min(found)] if found else text


def is_vlm(model) -> bool:
    return hasattr(model, "image_features") and hasattr(getattr(model, "config", None), "tokens_per_image")


class Predictor:
    # Evaluators hand this predictor their own decoding settings (and item indices) as keywords.
    takes_generation_options = True

    def __init__(self, tokenizer, template: str = "plain", *, max_new_tokens: int = 32,
                 batch_size: int = 16, pad_to: int = 32, num_image_tokens: int = 0, image_size: int = 0,
                 image_preprocess: str = "clip", temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int = 0, stop=None):
        """``num_image_tokens`` / ``image_size`` of 0 take the VLM's own (``tokens_per_image``, the
        vision tower's input size); set, they must agree with the model."""
        if template not in templates.TEMPLATES:
            raise ValueError(f"unknown chat template {template!r}; templates: {sorted(templates.TEMPLATES)}")
        self.tokenizer, self.template = tokenizer, template
        self.max_new_tokens, self.batch_size, self.pad_to = max_new_tokens, batch_size, pad_to
        self.num_image_tokens, self.image_size = num_image_tokens, image_size
        self.image_preprocess = image_preprocess
        self.temperature, self.top_p, self.top_k, self.seed = temperature, top_p, top_k, seed
        self.stop = stop_strings(stop)
        check_generation_options(self.settings())

    def settings(self, **overrides) -> dict:
        """The decoding settings of a call: this predictor's, with the non-None ``overrides``."""
        unknown = sorted(set(overrides) - set(GENERATION_OPTIONS))
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; options: {GENERATION_OPTIONS}")
        settings = {name: getattr(self, name) for name in GENERATION_OPTIONS}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        settings["stop"] = stop_strings(settings["stop"])
        return settings

    @classmethod
    def from_config(cls, config) -> Predictor:
        """The predictor of a run config: tokenizer, template, image size, preprocessing and image
        tokens from ``config.data`` (as the training rows use them), decoding from ``config.eval``."""
        from mathvlm.data.tokenization import load_tokenizer

        data, evaluation = config.data, config.eval
        return cls(load_tokenizer(data.get("tokenizer", "bytes")), data.get("template", "plain"),
                   max_new_tokens=evaluation.get("max_new_tokens", 32),
                   batch_size=evaluation.get("batch_size", 16), pad_to=evaluation.get("pad_to", 32),
                   num_image_tokens=data.get("num_image_tokens", 0), image_size=data.get("image_size", 0),
                   image_preprocess=data.get("image_preprocess", "clip"),
                   temperature=evaluation.get("temperature", 0.0), top_p=evaluation.get("top_p", 1.0),
                   top_k=evaluation.get("top_k", 0), seed=evaluation.get("seed", 0),
                   stop=evaluation.get("stop", None))

    def encode(self, prompt: str, has_image: bool = False, num_image_tokens: int | None = None) -> np.ndarray:
        """Prompt ids up to the assistant cue, as RowBuilder tokenises a training conversation."""
        if has_image and templates.IMAGE not in prompt:
            prompt = templates.IMAGE + "\n" + prompt  # LLaVA / the readers' placement
        elif not has_image and templates.IMAGE in prompt:
            raise ValueError(f"prompt {prompt[:60]!r} has an {templates.IMAGE} mark but no image was given")
        pieces = templates.render_prompt([{"role": "user", "content": prompt}], self.template)
        count = self.num_image_tokens if num_image_tokens is None else num_image_tokens
        ids, _, images = templates.tokenize_pieces(pieces, self.tokenizer, count)
        if images > 1:
            raise ValueError(f"prompt {prompt[:60]!r} has {images} {templates.IMAGE} marks; one image per prompt")
        if self.tokenizer.bos_id is not None:
            ids = np.concatenate([[self.tokenizer.bos_id], ids]).astype(np.int32)
        return ids

    def vision_settings(self, model) -> tuple[int, int]:
        """(image tokens, image size) for ``model``, checked against this predictor's settings."""
        c = model.config
        if self.num_image_tokens and self.num_image_tokens != c.tokens_per_image:
            raise ValueError(f"data.num_image_tokens={self.num_image_tokens} but the model makes "
                             f"{c.tokens_per_image} features per image; set it to {c.tokens_per_image} or drop it")
        if self.image_size and self.image_size != c.image_size:
            raise ValueError(f"data.image_size={self.image_size} but the model's vision tower takes "
                             f"{c.image_size}px images; make them equal")
        image_id = getattr(self.tokenizer, "image_id", None)
        if image_id != c.image_token_id:
            raise ValueError(f"the tokenizer's image token id is {image_id} but model.image_token_id is "
                             f"{c.image_token_id}; set model.image_token_id to the tokenizer's (bytes: 259)")
        return c.tokens_per_image, c.image_size

    def batches(self, model, prompts: list[str], images=None, batch_size: int | None = None):
        """Yields ``(rows, batch)``: the number of real rows and the model inputs ``tokens``,
        ``attention_mask`` (and for a VLM ``images`` float32 [b, S, S, 3], ``image_mask`` [b] bool)."""
        batch_size = batch_size or self.batch_size
        images = list(images) if images is not None else [None] * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        vlm = is_vlm(model)
        if not vlm and any(image is not None for image in images):
            raise ValueError(f"{type(model).__name__} takes no images but the evaluator gave some; evaluate a "
                             "VLM, or give the evaluator text-only items (e.g. load_images=False)")
        tokens_per_image, size = self.vision_settings(model) if vlm else (0, 0)
        for start in range(0, len(prompts), batch_size):
            chunk = list(range(start, min(start + batch_size, len(prompts))))
            rows = len(chunk)
            chunk += [chunk[-1]] * (batch_size - rows)  # fixed batch shape
            ids = [self.encode(prompts[i], images[i] is not None, tokens_per_image) for i in chunk]
            length = -(-max(len(x) for x in ids) // self.pad_to) * self.pad_to
            tokens = np.full((batch_size, length), self.tokenizer.pad_id, np.int32)
            mask = np.zeros((batch_size, length), np.int32)
            for row, x in enumerate(ids):  # left padding: every row ends at the same column
                tokens[row, length - len(x):] = x
                mask[row, length - len(x):] = 1
            batch = {"tokens": tokens, "attention_mask": mask}
            if vlm:
                pixels = np.zeros((batch_size, size, size, 3), np.float32)
                has_image = np.zeros((batch_size,), bool)
                for row, i in enumerate(chunk):
                    if images[i] is not None:
                        pixels[row] = image_ops.preprocess(np.asarray(images[i]), self.image_preprocess, size)
                        has_image[row] = True
                batch |= {"images": pixels, "image_mask": has_image}
            yield rows, batch

    def stop_token_ids(self, stops: tuple[str, ...]) -> tuple[int, ...]:
        """The end-of-sequence id, plus the id of every stop string that is one token which decodes back
        to exactly that string (generating it puts the stop string into the text: decoding may end)."""
        ids = [self.tokenizer.eos_id]
        for stop in stops:
            encoded = list(self.tokenizer.encode(stop))
            if len(encoded) == 1 and self.tokenizer.decode(encoded) == stop:
                ids.append(int(encoded[0]))
        return tuple(dict.fromkeys(ids))

    def __call__(self, model, prompts: list[str], images=None, *, indices=None, **options) -> list[str]:
        """One response per prompt. ``options``: decoding settings overriding this predictor's for this
        call (see the module docstring); ``indices``: the items' numbers for their sampling keys."""
        settings = self.settings(**options)
        check_generation_options(settings)
        indices = list(range(len(prompts))) if indices is None else [int(i) for i in indices]
        if len(indices) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(indices)} indices")
        eos, pad = self.tokenizer.eos_id, self.tokenizer.pad_id
        stop_tokens = self.stop_token_ids(settings["stop"])
        batch_size = int(settings["batch_size"])
        decoding = {"max_new_tokens": int(settings["max_new_tokens"]), "temperature": float(settings["temperature"]),
                    "top_p": float(settings["top_p"]), "top_k": int(settings["top_k"])}
        base_key = jax.random.key(int(settings["seed"]))
        answers = []
        for start, (rows, batch) in zip(range(0, len(prompts), batch_size),
                                        self.batches(model, prompts, images, batch_size)):
            rows_indices = indices[start:start + rows]
            rows_indices += [rows_indices[-1]] * (batch_size - rows)  # the filler rows copy the last
            # One key per row (greedy decoding ignores them): the same item draws the same tokens
            # whatever else shares its batch.
            rng = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, np.asarray(rows_indices, np.uint32))
            if "images" in batch:
                graphdef, state = nnx.split(model)
                out = _vlm_generate(graphdef, state, batch["tokens"], batch["images"], batch["image_mask"],
                                    batch["attention_mask"], rng, np.float32(decoding["temperature"]),
                                    np.float32(decoding["top_p"]), max_new_tokens=decoding["max_new_tokens"],
                                    top_k=decoding["top_k"], stop_tokens=stop_tokens, pad_id=pad)
            else:
                out = generate(model, batch["tokens"], batch["attention_mask"], rng=rng,
                               stop_tokens=stop_tokens, pad_id=pad, **decoding)
            generated, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
            for i in range(rows):
                text = self.tokenizer.decode([t for t in generated[i, :lengths[i]] if t != eos])
                answers.append(cut_at_stop(text, settings["stop"]))
        return answers


def check_generation_options(settings: dict) -> None:
    """Raise ValueError naming a decoding setting out of range."""
    problems = []
    if int(settings["max_new_tokens"]) < 1:
        problems.append(f"max_new_tokens={settings['max_new_tokens']} (must be ≥ 1)")
    if float(settings["temperature"]) < 0:
        problems.append(f"temperature={settings['temperature']} (must be ≥ 0; 0 = greedy)")
    if not 0 < float(settings["top_p"]) <= 1:
        problems.append(f"top_p={settings['top_p']} (must be in (0, 1])")
    if int(settings["top_k"]) < 0:
        problems.append(f"top_k={settings['top_k']} (must be ≥ 0; 0 = no top-k cut)")
    if int(settings["batch_size"]) < 1:
        problems.append(f"batch_size={settings['batch_size']} (must be ≥ 1)")
    if problems:
        raise ValueError("generation settings out of range: " + "; ".join(problems))
