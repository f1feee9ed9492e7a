"""Contrastive image–text dual encoders: CLIP and SigLIP.

``DualEncoder(...)(images, tokens, attention_mask=None)`` returns a dict with L2-normalised
``image_embeds [b, p]``, ``text_embeds [b, p]``, ``logit_scale`` (already exponentiated) and
``logit_bias`` (None for CLIP). ``logits_per_image = exp(s) * image @ text.T (+ bias)``: the loss
functions live in :mod:`mathvlm.losses`.

* CLIP (HF ``CLIPModel``): bias-free ``visual_projection`` / ``text_projection`` to ``projection_dim``
  on the pooled tower outputs; ``s`` initialised to log(1/0.07), no bias.
* SigLIP (HF ``SiglipModel``, ``projection_dim=None``): no projections in the dual encoder — the
  image side is the MAP head's output, the text side the text tower's ``head``; ``s`` and ``b``
  initialised to log 10 and -10 (SigLIP paper).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from mathvlm import registry
from mathvlm.models.layers import Dense
from mathvlm.models.text_tower import TEXT_PRESETS, TextTower, TextTowerConfig
from mathvlm.models.vit import VIT_PRESETS, ViT, ViTConfig


def _normalise(x):
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class DualEncoder(nnx.Module):
    def __init__(self, vision: ViTConfig, text: TextTowerConfig, projection_dim: int | None, *,
                 logit_scale_init: float = math.log(1 / 0.07), logit_bias_init: float | None = None,
                 rngs: nnx.Rngs):
        self.vision_model = ViT(vision, rngs=rngs)
        self.text_model = TextTower(text, rngs=rngs)
        # Width of the text tower's pooled output (a SigLIP tower projects it with its head).
        text_width = ((text.projection_size or text.hidden_size) if text.flavour == "siglip"
                      else text.hidden_size)
        if projection_dim is None:
            # SigLIP: both pooled outputs are already in the shared space.
            if not vision.use_head:
                raise ValueError("a dual encoder without projections needs the vision MAP head "
                                 "(use_head=True) to pool the image")
            if text.flavour != "siglip" or text_width != vision.hidden_size:
                raise ValueError(f"without projections the text tower must be a SigLIP one whose head "
                                 f"outputs the vision width {vision.hidden_size}; got flavour "
                                 f"{text.flavour!r}, width {text_width}")
            self.visual_projection = self.text_projection = None
        else:
            self.visual_projection = Dense(vision.hidden_size, projection_dim, axes=("embed", "mlp"),
                                           rngs=rngs)
            self.text_projection = Dense(text_width, projection_dim, axes=("embed", "mlp"), rngs=rngs)
        # Scalars are learned in log space (CLIP init log(1/0.07)); SigLIP adds a bias (init -10).
        self.logit_scale = nnx.Param(jnp.asarray(logit_scale_init, jnp.float32), out_sharding=())
        self.logit_bias = (None if logit_bias_init is None else
                           nnx.Param(jnp.asarray(logit_bias_init, jnp.float32), out_sharding=()))

    @property
    def projection_dim(self) -> int | None:
        return None if self.visual_projection is None else self.visual_projection.out_shape[0]

    def image_embeds(self, images):
        pooled = self.vision_model(images)[1]
        if self.visual_projection is not None:
            pooled = self.visual_projection(pooled)
        return _normalise(pooled)

    def text_embeds(self, tokens, attention_mask=None):
        pooled = self.text_model(tokens, attention_mask)[1]
        if self.text_projection is not None:
            pooled = self.text_projection(pooled)
        return _normalise(pooled)

    def __call__(self, images, tokens, attention_mask=None):
        return {"image_embeds": self.image_embeds(images),
                "text_embeds": self.text_embeds(tokens, attention_mask),
                "logit_scale": jnp.exp(self.logit_scale[...]),
                "logit_bias": None if self.logit_bias is None else self.logit_bias[...]}


def logits_per_image(out: dict):
    """``scale * image @ text.T (+ bias)`` from a :class:`DualEncoder` output."""
    logits = out["logit_scale"] * out["image_embeds"] @ out["text_embeds"].T
    return logits if out["logit_bias"] is None else logits + out["logit_bias"]


@registry.register("model", "clip_dual_encoder")
def clip_dual_encoder(vision_preset="tiny", text_preset="tiny", projection_dim: int = 24, *,
                      rngs: nnx.Rngs, vision=None, text=None) -> DualEncoder:
    v = ViTConfig(**{**VIT_PRESETS[vision_preset], **(vision or {})})
    t = TextTowerConfig(**{**TEXT_PRESETS[text_preset], **(text or {})})
    return DualEncoder(v, t, projection_dim, rngs=rngs)


@registry.register("model", "siglip_dual_encoder")
def siglip_dual_encoder(vision_preset="siglip-tiny", text_preset="siglip-tiny", *, rngs: nnx.Rngs,
                        vision=None, text=None) -> DualEncoder:
    """HF ``SiglipModel``: SigLIP image tower (MAP head) + SigLIP text tower (last-token ``head``),
    no projections, scale+bias init log 10 and -10. The text head's width defaults to the vision
    width so the two embeddings live in one space."""
    v = ViTConfig(**{**VIT_PRESETS[vision_preset], **(vision or {})})
    t = TextTowerConfig(**{"projection_size": v.hidden_size, **TEXT_PRESETS[text_preset],
                           **(text or {})})
    return DualEncoder(v, t, None, logit_scale_init=math.log(10.0), logit_bias_init=-10.0,
                       rngs=rngs)
