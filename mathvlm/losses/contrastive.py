"""Image–text contrastive losses: CLIP softmax InfoNCE (MAVIS stage 1, CLIP-Math) and SigLIP sigmoid.

Both take the embeddings of the *global* batch: under ``jax.jit`` on arrays sharded along the batch the
similarity matrix ``x @ yᵀ`` is [B_global, B_global], so every example sees every other example of
the global batch as a negative (XLA inserts the all-gather). Nothing here needs ``shard_map``.

Rows flagged invalid (``valid[i] = 0``, e.g. blanked by the data pipeline) are neither anchors nor
negatives; the loss equals the loss of the batch with those rows removed.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from mathvlm import registry
from mathvlm.losses.common import example_validity, masked_mean, require, safe_divide

MAX_LOGIT_SCALE = 100.0
# Excluded entries get this logit instead of -inf: exp() of it is 0, yet a fully excluded row stays
# finite (logsumexp of -inf only would be -inf and its gradient NaN).
_EXCLUDED = -1e9


def l2_normalize(x, eps: float = 1e-12):
    """``x / max(‖x‖, eps)`` along the last axis (finite gradient at x = 0)."""
    x = x.astype(jnp.float32)
    norm_sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(norm_sq, eps * eps))


def retrieval_accuracy(logits, valid=None):
    """Top-1 retrieval accuracy of a [B, B] similarity matrix whose diagonal holds the true pairs.

    image→text: ``argmax_j logits[i, j] == i`` averaged over valid rows i; text→image: ``argmax_i
    logits[i, j] == j`` over valid columns j. Invalid examples are never retrieved.
    """
    n = logits.shape[0]
    valid = jnp.ones((n,), jnp.float32) if valid is None else valid.astype(jnp.float32)
    pair_ok = valid[:, None] * valid[None, :] > 0
    masked = jnp.where(pair_ok, logits, _EXCLUDED)
    index = jnp.arange(n)
    image_to_text = masked_mean(jnp.argmax(masked, axis=1) == index, valid)
    text_to_image = masked_mean(jnp.argmax(masked, axis=0) == index, valid)
    return image_to_text, text_to_image


def clip_loss(image_emb, text_emb, log_logit_scale, valid=None, *, normalize: bool = True):
    """CLIP symmetric InfoNCE.

    With ``s = min(exp(log_logit_scale), 100)``, ``v_i`` / ``u_j`` the (L2-normalised) image / text
    embeddings and ``ℓ_ij = s · v_i·u_j``::

        CE_rows = −(1/N) Σ_i log softmax_j(ℓ_ij)[j=i]      (image → text)
        CE_cols = −(1/N) Σ_j log softmax_i(ℓ_ij)[i=j]      (text → image)
        L = ½ (CE_rows + CE_cols)

    over the N valid examples. The clamp is on the scale (not the parameter), so beyond 100 the
    gradient with respect to ``log_logit_scale`` is 0, never NaN.

    Returns ``(loss, metrics)`` with metrics ``loss``, ``logit_scale``, ``i2t_accuracy``,
    ``t2i_accuracy``.
    """
    if normalize:
        image_emb, text_emb = l2_normalize(image_emb), l2_normalize(text_emb)
    n = image_emb.shape[0]
    valid = jnp.ones((n,), jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32)
    scale = jnp.minimum(jnp.exp(jnp.asarray(log_logit_scale, jnp.float32)), MAX_LOGIT_SCALE)
    logits = scale * (image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T)
    pair_ok = valid[:, None] * valid[None, :] > 0
    masked = jnp.where(pair_ok, logits, _EXCLUDED)
    diagonal = jnp.diagonal(masked)
    ce_rows = jax.nn.logsumexp(masked, axis=1) - diagonal
    ce_cols = jax.nn.logsumexp(masked, axis=0) - diagonal
    loss = 0.5 * (masked_mean(ce_rows, valid) + masked_mean(ce_cols, valid))
    i2t, t2i = retrieval_accuracy(logits, valid)
    return loss, {"loss": loss, "logit_scale": scale, "i2t_accuracy": i2t, "t2i_accuracy": t2i}


def siglip_loss(image_emb, text_emb, log_logit_scale, logit_bias, valid=None, *,
                normalize: bool = True):
    """SigLIP pairwise sigmoid loss (Zhai et al. 2023, Algorithm 1).

    With ``t = exp(log_logit_scale)``, bias ``b`` and labels ``z_ij = +1 if i = j else −1``::

        L = −(1/N) Σ_i Σ_j log σ(z_ij · (t · x_i·y_j + b))

    i.e. summed over all N² pairs of valid examples and divided by the batch size N (not N²), as
    in the paper. Metrics: ``loss``, ``logit_scale``, ``logit_bias``, ``i2t_accuracy``,
    ``t2i_accuracy``.
    """
    if normalize:
        image_emb, text_emb = l2_normalize(image_emb), l2_normalize(text_emb)
    n = image_emb.shape[0]
    valid = jnp.ones((n,), jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32)
    scale = jnp.exp(jnp.asarray(log_logit_scale, jnp.float32))
    bias = jnp.asarray(logit_bias, jnp.float32)
    logits = scale * (image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T) + bias
    labels = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0
    pair_weight = valid[:, None] * valid[None, :]
    loss = safe_divide(-jnp.sum(jax.nn.log_sigmoid(labels * logits) * pair_weight), jnp.sum(valid))
    i2t, t2i = retrieval_accuracy(logits, valid)
    return loss, {"loss": loss, "logit_scale": scale, "logit_bias": bias,
                  "i2t_accuracy": i2t, "t2i_accuracy": t2i}


def _embeddings(outputs, batch, where):
    image_emb, text_emb = require(outputs, ("image_embeds", "text_embeds"), where)
    return image_emb, text_emb, example_validity(batch, image_emb.shape[0])


@registry.register("loss", "clip")
def clip(outputs: dict, batch: dict, *, normalize: bool = True,
         log_logit_scale: float | None = None):
    """CLIP loss term. Reads ``outputs["image_embeds"]`` [B, D], ``outputs["text_embeds"]`` [B, D],
    ``outputs["logit_scale"]`` () — the *log* scale, a learnable parameter — unless the option
    ``log_logit_scale`` fixes it; optional ``batch["skip_reason"]`` [B]."""
    image_emb, text_emb, valid = _embeddings(outputs, batch, "loss 'clip'")
    if log_logit_scale is None:
        (log_scale,) = require(outputs, ("logit_scale",), "loss 'clip' (or option log_logit_scale)")
    else:
        log_scale = jnp.float32(log_logit_scale)
    return clip_loss(image_emb, text_emb, log_scale, valid, normalize=normalize)


@registry.register("loss", "siglip")
def siglip(outputs: dict, batch: dict, *, normalize: bool = True):
    """SigLIP loss term. Reads ``outputs["image_embeds"]``, ``outputs["text_embeds"]`` [B, D],
    ``outputs["logit_scale"]`` () (log scale; SigLIP initialises it to log 10) and
    ``outputs["logit_bias"]`` () (initialised to −10); optional ``batch["skip_reason"]``."""
    image_emb, text_emb, valid = _embeddings(outputs, batch, "loss 'siglip'")
    log_scale, bias = require(outputs, ("logit_scale", "logit_bias"), "loss 'siglip'")
    return siglip_loss(image_emb, text_emb, log_scale, bias, valid, normalize=normalize)

