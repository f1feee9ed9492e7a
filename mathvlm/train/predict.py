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
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from mathvlm.data import images as image_ops
from mathvlm.data import templates
from mathvlm.models.generate import generate


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "stop_tokens", "pad_id"))
def _vlm_generate(graphdef, state, tokens, images, image_mask, mask, *, max_new_tokens, stop_tokens,
                  pad_id):
    # VLM.generate computes the merged prefill embeddings outside the decoder's compiled loop; jitting
    # the whole call keeps the vision tower and projector compiled as well.
    model = nnx.merge(graphdef, state)
    return model.generate(tokens, images, image_mask, mask, max_new_tokens=max_new_tokens,
                          stop_tokens=stop_tokens, pad_id=pad_id)


def is_vlm(model) -> bool:
    return hasattr(model, "image_features") and hasattr(getattr(model, "config", None), "tokens_per_image")


class Predictor:
    def __init__(self, tokenizer, template: str = "plain", *, max_new_tokens: int = 32,
                 batch_size: int = 16, pad_to: int = 32, num_image_tokens: int = 0, image_size: int = 0,
                 image_preprocess: str = "clip"):
        """``num_image_tokens`` / ``image_size`` of 0 take the VLM's own (``tokens_per_image``, the
        vision tower's input size); set, they must agree with the model."""
        if template not in templates.TEMPLATES:
            raise ValueError(f"unknown chat template {template!r}; templates: {sorted(templates.TEMPLATES)}")
        self.tokenizer, self.template = tokenizer, template
        self.max_new_tokens, self.batch_size, self.pad_to = max_new_tokens, batch_size, pad_to
        self.num_image_tokens, self.image_size = num_image_tokens, image_size
        self.image_preprocess = image_preprocess

    @classmethod
    def from_config(cls, config) -> Predictor:
        """The predictor of a run config: tokenizer, template, image size, preprocessing and image
        tokens from ``config.data`` (as the training rows use them), decoding from ``config.eval``."""
        from mathvlm.data.text import load_tokenizer

        data, evaluation = config.data, config.eval
        return cls(load_tokenizer(data.get("tokenizer", "bytes")), data.get("template", "plain"),
                   max_new_tokens=evaluation.get("max_new_tokens", 32),
                   batch_size=evaluation.get("batch_size", 16), pad_to=evaluation.get("pad_to", 32),
                   num_image_tokens=data.get("num_image_tokens", 0), image_size=data.get("image_size", 0),
                   image_preprocess=data.get("image_preprocess", "clip"))

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
        if self.image_size and self.image_size != c.vision.image_size:
            raise ValueError(f"data.image_size={self.image_size} but the model's vision tower takes "
                             f"{c.vision.image_size}px images; make them equal")
        image_id = getattr(self.tokenizer, "image_id", None)
        if image_id != c.image_token_id:
            raise ValueError(f"the tokenizer's image token id is {image_id} but model.image_token_id is "
                             f"{c.image_token_id}; set model.image_token_id to the tokenizer's (bytes: 259)")
        return c.tokens_per_image, c.vision.image_size

    def batches(self, model, prompts: list[str], images=None):
        """Yields ``(rows, batch)``: the number of real rows and the model inputs ``tokens``,
        ``attention_mask`` (and for a VLM ``images`` float32 [b, S, S, 3], ``image_mask`` [b] bool)."""
        images = list(images) if images is not None else [None] * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        vlm = is_vlm(model)
        if not vlm and any(image is not None for image in images):
            raise ValueError(f"{type(model).__name__} takes no images but the evaluator gave some; evaluate a "
                             "VLM, or give the evaluator text-only items (e.g. load_images=False)")
        tokens_per_image, size = self.vision_settings(model) if vlm else (0, 0)
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(range(start, min(start + self.batch_size, len(prompts))))
            rows = len(chunk)
            chunk += [chunk[-1]] * (self.batch_size - rows)  # fixed batch shape
            ids = [self.encode(prompts[i], images[i] is not None, tokens_per_image) for i in chunk]
            length = -(-max(len(x) for x in ids) // self.pad_to) * self.pad_to
            tokens = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
            mask = np.zeros((self.batch_size, length), np.int32)
            for row, x in enumerate(ids):  # left padding: every row ends at the same column
                tokens[row, length - len(x):] = x
                mask[row, length - len(x):] = 1
            batch = {"tokens": tokens, "attention_mask": mask}
            if vlm:
                pixels = np.zeros((self.batch_size, size, size, 3), np.float32)
                has_image = np.zeros((self.batch_size,), bool)
                for row, i in enumerate(chunk):
                    if images[i] is not None:
                        pixels[row] = image_ops.preprocess(np.asarray(images[i]), self.image_preprocess, size)
                        has_image[row] = True
                batch |= {"images": pixels, "image_mask": has_image}
            yield rows, batch

    def __call__(self, model, prompts: list[str], images=None) -> list[str]:
        eos, pad = self.tokenizer.eos_id, self.tokenizer.pad_id
        answers = []
        for rows, batch in self.batches(model, prompts, images):
            if "images" in batch:
                graphdef, state = nnx.split(model)
                out = _vlm_generate(graphdef, state, batch["tokens"], batch["images"], batch["image_mask"],
                                    batch["attention_mask"], max_new_tokens=self.max_new_tokens,
                                    stop_tokens=(eos,), pad_id=pad)
            else:
                out = generate(model, batch["tokens"], batch["attention_mask"],
                               max_new_tokens=self.max_new_tokens, stop_tokens=(eos,), pad_id=pad)
            generated, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
            for i in range(rows):
                answers.append(self.tokenizer.decode([t for t in generated[i, :lengths[i]] if t != eos]))
        return answers
