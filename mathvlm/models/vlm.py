"""Vision-language model: image tower → projector → features spliced into the decoder's token
embeddings at image-placeholder positions (LLaVA-HF convention).

The token sequence already holds ``tokens_per_image`` placeholder ids (``image_token_id``) for every
image, wherever the template put them (images-first for ChatML/Math-PUMA, inline for LLaVA), so the
merged sequence has the same length as ``tokens``: attention mask, positions and loss mask are those of
the token sequence, with placeholders excluded from the loss. Rows whose ``image_mask`` is False are
text-only: their embeddings are the decoder's own, so their logits equal the decoder's.

    vlm = VLM(VLMConfig(...), rngs=nnx.Rngs(0))
    logits = vlm(tokens, images, image_mask=has_image, attention_mask=mask)   # [b, l, vocab] f32
    out = vlm.generate(tokens, images, image_mask, attention_mask, max_new_tokens=32)

Templates that write one placeholder per image (Math-PUMA's ``<|image|>``, LLaVA's ``<image>``)
go through :func:`expand_image_placeholders` first, which repeats it ``tokens_per_image`` times.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mathvlm import registry
from mathvlm.models import generate as generate_lib
from mathvlm.models.decoder import DECODER_PRESETS, DecoderConfig, DecoderLM
from mathvlm.models.projectors import make_projector
from mathvlm.models.vit import VIT_PRESETS, ViT, ViTConfig


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    vision: ViTConfig = dataclasses.field(default_factory=ViTConfig)
    decoder: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    projector: str = "mlp2x_gelu"          # linear | mlp2x_gelu | gated
    projector_hidden: int | None = None    # None: the decoder width
    image_token_id: int = 255
    # One HF hidden-state index, or several whose features are concatenated on the channel axis
    # (the projector input is then len(feature_layer) × the vision width).
    feature_layer: int | tuple[int, ...] = -2
    feature_strategy: str = "drop_cls"     # drop_cls | drop_first | keep_all
    # "calibrated": the tower's features are standardised per position and channel with a mean and
    # spread measured on training images (calibrate_feature_norm) and then fixed; "" leaves them as is.
    feature_norm: str = ""

    def __post_init__(self):
        if self.feature_norm not in ("", "calibrated"):
            raise ValueError(f"feature_norm={self.feature_norm!r}: use '' or 'calibrated'")
        # Lists (from JSON / config files) become tuples so the config stays hashable.
        if not isinstance(self.feature_layer, int):
            object.__setattr__(self, "feature_layer", tuple(int(i) for i in self.feature_layer))

    @property
    def num_feature_layers(self) -> int:
        return 1 if isinstance(self.feature_layer, int) else len(self.feature_layer)

    @property
    def image_size(self) -> int:
        """The side of the square images the model takes."""
        return self.vision.image_size

    @property
    def tokens_per_image(self) -> int:
        v = self.vision
        n = v.num_patches + int(v.has_class_token)
        if self.feature_strategy == "drop_first" or (self.feature_strategy == "drop_cls"
                                                     and v.has_class_token):
            n -= 1
        return n


class VLM(nnx.Module):
    def __init__(self, config: VLMConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        self.vision_tower = ViT(c.vision, rngs=rngs)
        self.projector = make_projector(
            c.projector, c.vision.hidden_size * c.num_feature_layers, c.decoder.hidden_size,
            hidden=c.projector_hidden,
            dtype=c.decoder.dtype, param_dtype=c.decoder.param_dtype, rngs=rngs)
        self.decoder = DecoderLM(c.decoder, rngs=rngs)
        if c.feature_norm:
            # [mean, spread] per image-token position and channel: statistics, never trained.
            shape = (c.tokens_per_image, c.vision.hidden_size * c.num_feature_layers)
            self.feature_stats = nnx.BatchStat(jnp.stack([jnp.zeros(shape), jnp.ones(shape)]))

    def _tower_features(self, images):
        """``[b, k, H, W, C]`` → the tower's features ``[b·k, tokens_per_image, d_vision]``."""
        b, k = images.shape[:2]
        return self.vision_tower.features(images.reshape((b * k,) + images.shape[2:]),
                                          self.config.feature_layer, self.config.feature_strategy)

    def image_features(self, images):
        """``images [b, H, W, C]`` or ``[b, k, H, W, C]`` → projected ``[b, k·tokens_per_image, d]``."""
        if images.ndim == 4:
            images = images[:, None]
        feats = self._tower_features(images)
        if self.config.feature_norm:
            mean, spread = self.feature_stats[...]
            feats = ((feats - mean) / spread).astype(feats.dtype)
        feats = self.projector(feats)
        return feats.reshape(images.shape[0], -1, feats.shape[-1])

    def feature_moments(self, images, image_mask=None):
        """``(count, mean, m2)`` of the tower's features per position and channel over the rows that
        have images (``m2``: summed squared deviations); batches combine with :func:`merge_moments`."""
        if images.ndim == 4:
            images = images[:, None]
        feats = self._tower_features(images).astype(jnp.float32)
        weight = jnp.ones(images.shape[:2]) if image_mask is None else jnp.broadcast_to(
            jnp.asarray(image_mask, jnp.float32).reshape(images.shape[0], -1), images.shape[:2])
        weight = weight.reshape(-1, 1, 1)
        count = weight.sum()
        mean = (weight * feats).sum(0) / jnp.maximum(count, 1.0)
        return count, mean, (weight * (feats - mean) ** 2).sum(0)

    def calibrate_feature_norm(self, count, mean, m2, min_spread: float = 1e-3):
        """Fix ``feature_norm: calibrated``'s statistics from merged :meth:`feature_moments`.

        Why: the image tokens of different pictures start almost alike (after the projector their spread
        across images is a few % of their size), so a decoder that attends to their average reads the
        shared part and not the picture. Standardising with statistics measured once on a frozen tower
        keeps what differs between pictures and leaves a row's output independent of its batch.
        """
        if not self.config.feature_norm:
            raise ValueError("calibrate_feature_norm needs a model built with feature_norm='calibrated'")
        if count <= 0:
            raise ValueError("calibrate_feature_norm saw no image: the calibration batches hold no row "
                             "with a picture")
        spread = jnp.sqrt(m2 / count)
        self.feature_stats[...] = jnp.stack([mean, jnp.maximum(spread, min_spread)])

    def embed(self, tokens, images=None, image_mask=None):
        """Token embeddings with image features written over the placeholder slots (in order)."""
        c = self.config
        vocab = c.decoder.vocab_size
        # The placeholder id may lie outside the vocabulary; its embedding is overwritten anyway.
        h = self.decoder.embed(jnp.where(tokens < vocab, tokens, 0))
        if images is None:
            return h
        is_image = tokens == c.image_token_id
        if image_mask is not None:
            is_image &= jnp.asarray(image_mask, bool)[:, None]
        feats = self.image_features(images).astype(h.dtype)
        # The j-th placeholder of a row takes the j-th feature of that row's images.
        slot = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, feats.shape[1] - 1)
        picked = jnp.take_along_axis(feats, slot[..., None], axis=1)
        return jnp.where(is_image[..., None], picked, h)

    def masks(self, tokens, attention_mask=None) -> dict:
        """Attention mask, position ids and loss mask of the merged sequence. ``loss_mask`` marks
        real text tokens (not padding, not image placeholders): image features are attended to but
        never predicted. Prompt-vs-answer masking is the data pipeline's job."""
        mask = (jnp.ones(tokens.shape, bool) if attention_mask is None
                else jnp.asarray(attention_mask, bool))
        positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
        return {"attention_mask": mask, "positions": positions,
                "loss_mask": mask & (tokens != self.config.image_token_id)}

    def __call__(self, tokens, images=None, image_mask=None, attention_mask=None, positions=None):
        """Logits ``[batch, length, vocab]`` (float32)."""
        embeds = self.embed(tokens, images, image_mask)
        return self.decoder(inputs_embeds=embeds, attention_mask=attention_mask, positions=positions)

    def hidden(self, tokens, images=None, image_mask=None, attention_mask=None, positions=None):
        """Final-norm hidden states ``[batch, length, embed]``, the same inputs as :meth:`__call__`:
        ``unembed(hidden(...))`` are its logits (chunked losses unembed a slice at a time)."""
        embeds = self.embed(tokens, images, image_mask)
        return self.decoder.hidden(inputs_embeds=embeds, attention_mask=attention_mask,
                                   positions=positions)

    def unembed(self, h):
        """float32 logits ``[..., vocab]`` of final-norm hidden states: the decoder's LM head
        (:meth:`~mathvlm.models.decoder.DecoderLM.unembed`)."""
        return self.decoder.unembed(h)

    def generate(self, tokens, images=None, image_mask=None, attention_mask=None, **kwargs):
        """Greedy / sampled continuation: the merged embeddings are the prefill, then the decoder
        runs alone (see :func:`mathvlm.models.generate.generate` for ``kwargs``)."""
        embeds = self.embed(tokens, images, image_mask)
        return generate_lib.generate(self.decoder, attention_mask=attention_mask,
                                     inputs_embeds=embeds, **kwargs)


def merge_moments(a, b):
    """Two ``(count, mean, m2)`` summaries as one (the pairwise update of Chan et al.: no cancellation
    from subtracting squared means)."""
    (na, mean_a, m2a), (nb, mean_b, m2b) = a, b
    n = na + nb
    delta = mean_b - mean_a
    share = nb / jnp.maximum(n, 1.0)
    return n, mean_a + delta * share, m2a + m2b + delta ** 2 * na * share


def expand_image_placeholders(ids, image_token_id: int, tokens_per_image: int, *, mask=None,
                              pad_id: int = 0):
    """Host-side (numpy) expansion of single image placeholders to the ``tokens_per_image`` slots
    :meth:`VLM.embed` fills: ``[a, IMG, b]`` → ``[a, IMG × N, b]``.

    ``ids``: one sequence ``[length]`` or a batch ``[batch, length]``. ``mask`` (optional): an array
    of the same shape, or a dict of such arrays (attention mask, loss mask, ...); each entry of a
    placeholder is repeated N times, so the masks stay aligned with the ids. A batch grows by
    ``(N − 1) × placeholders`` per row; shorter rows are right-padded with ``pad_id`` and mask 0.
    Returns the ids, or ``(ids, mask)`` with ``mask`` in the structure given."""
    if tokens_per_image < 1:
        raise ValueError(f"tokens_per_image must be ≥ 1, got {tokens_per_image}")
    ids = np.asarray(ids)
    masks = mask if isinstance(mask, dict) else ({} if mask is None else {None: mask})
    masks = {k: np.asarray(v) for k, v in masks.items()}
    for k, v in masks.items():
        if v.shape != ids.shape:
            raise ValueError(f"mask {k or ''} shape {v.shape} differs from ids shape {ids.shape}")
    single = ids.ndim == 1
    rows = ids[None] if single else ids
    # One repeat count per position: N for a placeholder, 1 otherwise.
    repeats = np.where(rows == image_token_id, tokens_per_image, 1)
    length = int(repeats.sum(axis=1).max(initial=0))
    out = np.full((rows.shape[0], length), pad_id, ids.dtype)
    out_masks = {k: np.zeros((rows.shape[0], length), v.dtype) for k, v in masks.items()}
    for r in range(rows.shape[0]):
        expanded = np.repeat(rows[r], repeats[r])
        out[r, :len(expanded)] = expanded
        for k, v in masks.items():
            out_masks[k][r, :len(expanded)] = np.repeat((v[None] if single else v)[r], repeats[r])
    if single:
        out, out_masks = out[0], {k: v[0] for k, v in out_masks.items()}
    if mask is None:
        return out
    return out, (out_masks if isinstance(mask, dict) else out_masks[None])


@registry.register("model", "vlm")
def vlm(vision_preset: str = "tiny", decoder_preset: str | None = None, *, rngs: nnx.Rngs,
        vision: dict | None = None, decoder: dict | None = None, **fields) -> VLM:
    """A :class:`VLM` from presets plus overrides, e.g. ``vlm("clip-vit-l-14-336", "vicuna-7b")``."""
    v = ViTConfig(**{**VIT_PRESETS[vision_preset], **(vision or {})})
    d = DecoderConfig(**{**(DECODER_PRESETS[decoder_preset] if decoder_preset else {}),
                         **(decoder or {})})
    return VLM(VLMConfig(vision=v, decoder=d, **fields), rngs=rngs)
