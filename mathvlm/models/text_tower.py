"""Text towers of the contrastive dual encoders: token + learned position embeddings → pre-norm
encoder → final LN → one pooled vector per row.

* ``flavour="clip"`` (HF ``CLIPTextModel``): causal mask; pooling at the end-of-text token
  (transformers 5.23 rule: configs with ``eos_token_id == 2`` (pre-2023 checkpoints) pool at the
  highest token id, others at the first ``eos_token_id``). The projection lives in the dual encoder.
* ``flavour="siglip"`` (HF ``SiglipTextModel``): no causal mask (padding keys are still masked when
  ``attention_mask`` is given); pooled = ``head(h[:, -1])``, the hidden state of the LAST slot
  whatever token sits there (SigLIP pads to ``max_length``, so it is a pad token), mapped by a
  Linear ``head`` with bias to ``projection_size`` (default: ``hidden_size``).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from mathvlm import registry
from mathvlm.models.layers import Dense
from mathvlm.models.vit import EncoderLayer, LayerNorm


@dataclasses.dataclass(frozen=True)
class TextTowerConfig:
    vocab_size: int = 99
    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    max_position: int = 16
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    eos_token_id: int = 2
    flavour: str = "clip"               # clip | siglip
    projection_size: int | None = None  # siglip head output; None: hidden_size
    param_dtype: str = "float32"
    dtype: str | None = None


TEXT_PRESETS = {
    "tiny": {},
    "siglip-tiny": {"flavour": "siglip", "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
    # google/siglip-so400m-patch14-384 text_config (64 tokens, head 1152 → 1152).
    "siglip-so400m": {"flavour": "siglip", "vocab_size": 32000, "hidden_size": 1152,
                      "intermediate_size": 4304, "num_layers": 27, "num_heads": 16, "max_position": 64,
                      "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
    "clip-l-14": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
                  "num_layers": 12, "num_heads": 12, "max_position": 77, "eos_token_id": 49407},
}


class TextTower(nnx.Module):
    def __init__(self, config: TextTowerConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        pd = jnp.dtype(c.param_dtype)
        normal = nnx.initializers.normal(0.02)
        self.token_embedding = nnx.Param(normal(rngs.params(), (c.vocab_size, c.hidden_size), pd),
                                         out_sharding=("vocab", "embed"))
        self.position_embedding = nnx.Param(normal(rngs.params(), (c.max_position, c.hidden_size), pd),
                                            out_sharding=("positions", "embed"))
        self.layers = nnx.List([
            EncoderLayer(c.hidden_size, c.intermediate_size, c.num_heads, c.hidden_act,
                         c.layer_norm_eps, dtype=c.dtype, param_dtype=pd, rngs=rngs)
            for _ in range(c.num_layers)])
        self.final_layer_norm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, param_dtype=pd)
        if c.flavour not in ("clip", "siglip"):
            raise ValueError(f"text tower flavour must be clip or siglip, got {c.flavour!r}")
        # Only SigLIP projects inside the tower (HF ``SiglipTextModel.head``); CLIP's projection is
        # the dual encoder's ``text_projection``.
        self.head = (Dense(c.hidden_size, c.projection_size or c.hidden_size, axes=("embed", "mlp"),
                           use_bias=True, dtype=c.dtype, param_dtype=pd, rngs=rngs)
                     if c.flavour == "siglip" else None)

    def __call__(self, tokens, attention_mask=None):
        """``tokens [b, l]`` → ``(last_hidden_state [b, l, e], pooled [b, e or projection_size])``."""
        c = self.config
        b, length = tokens.shape
        dtype = jnp.dtype(c.dtype or c.param_dtype)
        h = jnp.take(self.token_embedding[...], tokens, axis=0).astype(dtype)
        h = h + self.position_embedding[...][:length].astype(dtype)[None]
        siglip = c.flavour == "siglip"
        mask = (jnp.ones((1, length, length), bool) if siglip
                else jnp.tril(jnp.ones((length, length), bool))[None])
        if attention_mask is not None:
            mask = mask & jnp.asarray(attention_mask).astype(bool)[:, None, :]
        mask = jnp.broadcast_to(mask, (b, length, length))
        for layer in self.layers:
            h = layer(h, mask)
        h = self.final_layer_norm(h)
        if siglip:
            return h, self.head(h[:, -1])
        if c.eos_token_id == 2:
            eot = jnp.argmax(tokens, axis=-1)
        else:
            eot = jnp.argmax(tokens == c.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(h, eot[:, None, None], axis=1)[:, 0]
        return h, pooled


@registry.register("model", "siglip_text_tower")
def siglip_text_tower(preset: str | None = "siglip-tiny", *, rngs: nnx.Rngs, **fields) -> TextTower:
    values = dict(TEXT_PRESETS[preset]) if preset else {}
    values.update(fields)
    return TextTower(TextTowerConfig(**values), rngs=rngs)


@registry.register("model", "clip_text_tower")
def clip_text_tower(preset: str | None = "tiny", *, rngs: nnx.Rngs, **fields) -> TextTower:
    values = dict(TEXT_PRESETS[preset]) if preset else {}
    values.update(fields)
    return TextTower(TextTowerConfig(**values), rngs=rngs)
