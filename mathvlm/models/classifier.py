"""Image classifier: a ViT image tower with a linear head — Math-LLaVA's clarity (2 classes) and
comprehension-complexity (4 levels) classifiers (ViT-L/16-224 + a new FC layer).

``model(images [b, H, W, C]) -> logits [b, num_classes]`` (float32). ``model.features(images)`` is the
pooled feature the head reads: ``pool="pooled"`` takes the tower's own pooled output (CLIP: post-LN class
token; SigLIP: its attention-pool head, or the token mean without one), ``pool="mean"`` the post-LN mean
of the patch tokens. The tower is a submodule ``vision_model`` (as in the CLIP dual encoder), so a
CLIP-Math run initialises it with ``init.params=vision_model`` and a VLM run with
``init.params=vision_tower:vision_model``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mathvlm import registry
from mathvlm.models.layers import Dense
from mathvlm.models.vit import VIT_PRESETS, ViT, ViTConfig
from mathvlm.sharding import constrain

POOLS = ("pooled", "mean")


class ViTClassifier(nnx.Module):
    def __init__(self, vision: ViTConfig, num_classes: int, *, pool: str = "pooled", rngs: nnx.Rngs):
        if pool not in POOLS:
            raise ValueError(f"vit_classifier: pool={pool!r}; pools: {POOLS}")
        if num_classes < 2:
            raise ValueError(f"vit_classifier: num_classes={num_classes}; a classifier needs at least 2")
        self.num_classes, self.pool = int(num_classes), pool
        self.vision_model = ViT(vision, rngs=rngs)
        # A zero head starts every class at the same logit: the first loss is exactly log C, and the
        # tower's features, not a random projection, decide what the head learns first.
        self.head = Dense(vision.hidden_size, self.num_classes, axes=("embed", "classes"), use_bias=True,
                          dtype=vision.dtype, param_dtype=vision.param_dtype,
                          kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def features(self, images):
        """``[b, embed]``: the feature the head classifies (see the module docstring)."""
        tower = self.vision_model
        if self.pool == "pooled":
            hidden, pooled = tower(images)
            if pooled is None:  # SigLIP without its attention-pool head
                pooled = hidden.mean(axis=1)
        else:
            hidden = tower.hidden_states(images)[-1]
            if tower.config.has_class_token:
                hidden = hidden[:, 1:]
            pooled = tower.post_layernorm(hidden).mean(axis=1)
        return constrain(pooled, ("batch", "act_embed"))

    def __call__(self, images):
        return self.head(self.features(images), out_dtype=jnp.float32)


@registry.register("model", "vit_classifier")
def vit_classifier(vision_preset: str | None = "tiny", *, num_classes: int, pool: str = "pooled",
                   vision: dict | None = None, rngs: nnx.Rngs) -> ViTClassifier:
    """``{"name": "vit_classifier", "vision_preset": "tiny", "vision": {...ViTConfig fields},
    "num_classes": 4, "pool": "pooled"}``."""
    if vision_preset and vision_preset not in VIT_PRESETS:
        raise ValueError(f"vit_classifier: vision_preset={vision_preset!r}; presets: {sorted(VIT_PRESETS)}")
    values = dict(VIT_PRESETS[vision_preset]) if vision_preset else {}
    values.update(vision or {})
    return ViTClassifier(ViTConfig(**values), int(num_classes), pool=pool, rngs=rngs)
