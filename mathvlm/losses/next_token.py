"""Next-token cross-entropy over supervised tokens, plain or chunked over the sequence.

Convention: targets are **already shifted**. Position t of the logits (computed from ``tokens[:t+1]``)
is scored against ``targets[t]``, the token that follows ``tokens[t]``; ``loss_mask[t]`` says whether
that target is supervised (assistant answer / caption, plus EOS). :func:`shift_targets` builds both
from an unshifted sequence and its per-token supervision flags.

Reductions, over supervised tokens (mask m, per-token loss ℓ):

* ``token``    — ``Σ_{b,t} m·ℓ / Σ_{b,t} m`` over the global batch (LLaVA / HF Trainer with one batch);
* ``sequence`` — ``mean_{b: n_b>0} (Σ_t m·ℓ / n_b)`` with ``n_b = Σ_t m_bt``; examples without a
  supervised token are left out (this is what per-device batch 1 with gradient accumulation computes).

Chunked logits: a vocabulary of 32K–152K makes the float32 logits [B, L, V] the largest array of a
step. Every consumer of log-probabilities also has a form that takes the final hidden states
[B, L, D] and the unembedding (a callable ``h [B, C, D] → float32 logits [B, C, V]``, or a kernel
[D, V]) instead: :func:`map_position_chunks` runs a per-position computation on ``chunk_size``
positions at a time, rematerialising each chunk in the backward pass, so neither pass holds more than
one chunk's [B, C, V] logits. :func:`chunked_token_statistics` is the next-token statistics on it;
the results equal those of the full logits (same formula, fed a chunk at a time).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mathvlm import registry
from mathvlm.losses.common import masked_mean, require, safe_divide

REDUCTIONS = ("token", "sequence")


def shift_targets(tokens, supervised, pad_id: int = 0):
    """``(targets, loss_mask)`` from ``tokens`` [B, L] and per-token supervision flags [B, L]:
    ``targets[:, t] = tokens[:, t+1]`` and ``loss_mask[:, t] = supervised[:, t+1]``; the last
    position has no next token (``pad_id``, mask 0)."""
    tokens = jnp.asarray(tokens)
    targets = jnp.concatenate([tokens[:, 1:], jnp.full_like(tokens[:, :1], pad_id)], axis=1)
    flags = jnp.asarray(supervised, jnp.float32)
    loss_mask = jnp.concatenate([flags[:, 1:], jnp.zeros_like(flags[:, :1])], axis=1)
    return targets, loss_mask


def token_statistics(logits, targets, temperature=1.0):
    """Per-token ``(nll, log_z, correct)``, each [B, L] float32, from logits [B, L, V] scaled to
    ``z = logits / temperature``.

    ``log_z = logsumexp_v z``; ``nll = log_z − z[target]`` (= −log softmax(z)[target], without
    materialising a second [B, L, V] array of log-probabilities); ``correct = argmax == target``.
    """
    logits = jnp.asarray(logits, jnp.float32)
    if not (isinstance(temperature, (int, float)) and temperature == 1):
        logits = logits / temperature
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return log_z - target_logit, log_z, correct


def as_unembed(unembed) -> Callable:
    """The unembedding as a callable ``h [..., D] → float32 logits [..., V]``: a callable is returned
    as is (e.g. a model's ``unembed``, with its LM head, tied table or LoRA); a kernel [D, V] becomes
    ``h @ kernel`` accumulated in float32."""
    if callable(unembed):
        return unembed
    kernel = unembed
    return lambda h: jnp.einsum("...d,dv->...v", h, kernel, preferred_element_type=jnp.float32)


def map_position_chunks(fn, arrays, chunk_size: int):
    """``fn(*chunks)`` on ``chunk_size`` positions (axis 1) of ``arrays`` [B, L, ...] at a time.

    ``fn`` maps slices [B, C, ...] to a pytree of [B, C, ...] arrays; the result is that pytree with
    the slices joined back to length L. ``lax.map`` runs the chunks one after another and each chunk's
    body is rematerialised (``jax.checkpoint``), so the backward pass recomputes a chunk's
    intermediates (e.g. its [B, C, V] logits) instead of keeping every chunk's as residuals. A chunk
    size that does not divide L zero-pads the last chunk; its padded results are cut off (so they get
    no gradient). Values ``fn`` closes over (an unembedding kernel) get the gradient summed over chunks.
    """
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size}")
    arrays = tuple(jnp.asarray(x) for x in arrays)
    batch, length = arrays[0].shape[:2]
    chunk_size = min(int(chunk_size), length)
    num_chunks = -(-length // chunk_size)
    pad = num_chunks * chunk_size - length

    def to_chunks(x):  # [B, L, ...] -> [n, B, C, ...]
        if pad:
            x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(batch, num_chunks, chunk_size, *x.shape[2:]), 1, 0)

    def from_chunks(x):  # [n, B, C, ...] -> [B, L, ...]
        x = jnp.moveaxis(x, 0, 1)
        return x.reshape(batch, num_chunks * chunk_size, *x.shape[3:])[:, :length]

    out = jax.lax.map(jax.checkpoint(lambda chunks: fn(*chunks)), tuple(map(to_chunks, arrays)))
    return jax.tree.map(from_chunks, out)


def chunked_token_statistics(hidden, unembed, targets, chunk_size: int, temperature=1.0):
    """:func:`token_statistics` of ``logits = unembed(hidden)`` computed ``chunk_size`` positions at
    a time (:func:`map_position_chunks`): hidden [B, L, D] (final-norm output), ``unembed`` a
    callable ``h → float32 logits`` or a kernel [D, V] (:func:`as_unembed`), targets [B, L].
    Returns ``(nll, log_z, correct)``, each [B, L] float32."""
    project = as_unembed(unembed)
    return map_position_chunks(lambda h, t: token_statistics(project(h), t, temperature),
                               (hidden, jnp.asarray(targets, jnp.int32)), chunk_size)


def reduce_over_tokens(values, mask, reduction: str = "token"):
    """Reduce per-token values [B, L] over the mask with ``token`` or ``sequence`` (module doc)."""
    mask = jnp.asarray(mask, jnp.float32)
    if reduction == "token":
        return masked_mean(values, mask)
    if reduction == "sequence":
        counts = jnp.sum(mask, axis=-1)
        per_example = safe_divide(jnp.sum(values * mask, axis=-1), counts)
        return masked_mean(per_example, counts > 0)
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")


def _from_statistics(nll, log_z, correct, mask, reduction, z_loss):
    """``L = reduce(nll) + z_loss · reduce(log_z²)`` and its metrics."""
    mask = jnp.asarray(mask, jnp.float32)
    ce = reduce_over_tokens(nll, mask, reduction)
    z_term = reduce_over_tokens(jnp.square(log_z), mask, reduction)
    loss = ce + z_loss * z_term if z_loss else ce
    metrics = {"loss": loss, "ce": ce, "accuracy": masked_mean(correct, mask),
               "num_tokens": jnp.sum(mask)}
    if z_loss:
        metrics["z_loss"] = z_loss * z_term
    return loss, metrics


def next_token_loss(logits, targets, mask, *, reduction: str = "token", z_loss: float = 0.0):
    """Cross-entropy ``ℓ_bt = −log softmax(logits_bt)[targets_bt]`` reduced over ``mask`` (module
    doc), plus ``z_loss · reduce(log Z²)`` when ``z_loss > 0`` (PaLM's z-loss, keeps log Z near 0).

    Returns ``(loss, metrics)``: ``loss``, ``ce``, ``accuracy`` (top-1, mean over supervised tokens
    whatever the reduction), ``num_tokens``, and ``z_loss`` (the weighted term) when enabled.
    A batch with no supervised token gives 0 with zero (finite) gradients.
    """
    nll, log_z, correct = token_statistics(logits, targets)
    return _from_statistics(nll, log_z, correct, mask, reduction, z_loss)


def chunked_next_token_loss(hidden, unembed, targets, mask, chunk_size: int = 512, *,
                            reduction: str = "token", z_loss: float = 0.0):
    """:func:`next_token_loss` of ``logits = unembed(hidden)`` without materialising the [B, L, V]
    logits: :func:`chunked_token_statistics` computes each chunk of ``chunk_size`` positions' [B, C, V]
    logits and per-token statistics in turn, and the reduction is :func:`next_token_loss`'s.

    hidden [B, L, D] (final-norm output); ``unembed`` a callable ``h → float32 logits`` (a model's
    ``unembed``) or a kernel [D, V] (for tied embeddings the embedding table transposed); targets /
    mask [B, L]. The backward pass also holds one chunk of logits at a time.
    """
    nll, log_z, correct = chunked_token_statistics(hidden, unembed, targets, chunk_size)
    return _from_statistics(nll, log_z, correct, mask, reduction, z_loss)


@registry.register("loss", "next_token")
def next_token(outputs: dict, batch: dict, *, reduction: str = "token", z_loss: float = 0.0,
               chunk_size: int | None = None, prefix: str = ""):
    """Next-token loss term.

    Reads ``batch[prefix+"targets"]`` [B, L] int32 and ``batch[prefix+"loss_mask"]`` [B, L], and
    either ``outputs[prefix+"logits"]`` [B, L, V] or — when the outputs hold
    ``outputs[prefix+"hidden"]`` [B, L, D] and a chunk size is known (option ``chunk_size``, else
    ``outputs["logits_chunk"]``) — the hidden states with ``outputs[prefix+"unembed"]`` (callable
    ``h → float32 logits``, or a kernel [D, V]) through :func:`chunked_next_token_loss`. ``prefix``
    selects a member of a pair batch, e.g. ``"weak_"``.
    """
    where = f"loss 'next_token' (prefix {prefix!r})"
    targets, mask = require(batch, (prefix + "targets", prefix + "loss_mask"), where)
    chunk_size = chunk_size or outputs.get("logits_chunk")
    if chunk_size and prefix + "hidden" in outputs:
        hidden, unembed = require(outputs, (prefix + "hidden", prefix + "unembed"), where)
        return chunked_next_token_loss(hidden, unembed, targets, mask, chunk_size,
                                       reduction=reduction, z_loss=z_loss)
    (logits,) = require(outputs, (prefix + "logits",), where)
    return next_token_loss(logits, targets, mask, reduction=reduction, z_loss=z_loss)
