"""Math-PUMA KL alignment of a text-rich (strong) and a vision-rich (weak) member of a pair.

The same model runs on both members; the strong logits are a fixed target (stop-gradient,
self-distillation). Each side's logits are gathered at *its own* answer positions and compacted, so
the k-th answer token of the strong member lines up with the k-th of the weak one whatever the
prompt lengths (the masks come from the merged sequences, after image-token expansion — the release
took them from unmerged Qwen2 inputs and gathered 727 positions too early).

Two modes, with ``p_a = softmax(n(z_weak)/T)`` ("act"), ``p_r = softmax(n(z_strong)/T)`` ("ref"),
``n`` the z-score ``(z − mean_v z)/(std_v z + 1e−6)`` (torch ``Tensor.std``: unbiased, V − 1) or the
identity, and ``KL(p‖q) = Σ_v p (log p − log q)`` per answer position:

* ``official`` — ``train/vta_trainer.py`` as released: z-scored; ``batchmean``, i.e. each KL is
  summed over positions and vocabulary and divided by the number of pairs B (pairs with ≥1 answer
  token), times T²::

      kl    = α·KL_sum(p_a‖p_r)/B·T² + (1−α)·KL_sum(p_r‖p_a)/B·T²
      total = λ·kl·T² + (1−λ)·CE(weak)              (T² twice, as released)

  Positions default to ``"inputs"``: the release gathers *unshifted* logits where ``labels != −100``,
  i.e. at the positions whose input token is an answer token (our ``loss_mask`` shifted right by one;
  an answer that fills the sequence to its last position loses its final token this way).

* ``standard`` — the same mix with a token-mean KL and T² once, positions ``"targets"`` (the
  positions that predict the answer tokens, i.e. where ``loss_mask`` is 1), ``normalize`` off unless
  set::

      total = λ·(α·mean_t KL(p_a‖p_r) + (1−α)·mean_t KL(p_r‖p_a))·T² + (1−λ)·CE(weak)

Answers of different token counts (the release needs ``output == output_2`` and crashes otherwise):
each pair is **truncated to the shorter count** and the metric ``mismatched_pairs`` counts pairs whose
counts differ, so the data pipeline's guarantee is checked every step instead of silently relied on.

Two ways of feeding the same formula: :func:`puma_kl_loss` takes both members' logits [B, L, V] and
gathers them at the answer positions ([B, K, V]); :func:`chunked_puma_kl_loss` takes their final
hidden states [B, L, D] and unembeddings, gathers the hidden states ([B, K, D]) and computes the
per-position terms (:func:`position_terms`) ``chunk_size`` answer positions at a time, and CE(weak)
through chunked next-token statistics, so no [B, L, V] or [B, K, V] array is ever held whole. The
reductions are shared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mathvlm import registry
from mathvlm.losses.common import require, safe_divide
from mathvlm.losses.next_token import (as_unembed, chunked_token_statistics, map_position_chunks,
                                       reduce_over_tokens, token_statistics)

MODES = ("official", "standard")
POSITIONS = ("inputs", "targets")
STD_EPS = 1e-6


def answer_positions(mask, max_tokens: int | None = None):
    """Compaction of a [B, L] mask: ``(index [B, K] int32, count [B] int32)`` where ``index[b, k]`` is
    the position of the k-th masked entry of row b (for k < count[b]; arbitrary beyond) and K is
    ``max_tokens`` or L."""
    mask = jnp.asarray(mask) > 0
    # A stable sort of "is unmasked" puts masked positions first, in their original order.
    index = jnp.argsort(jnp.logical_not(mask).astype(jnp.int32), axis=-1, stable=True)
    if max_tokens is not None:
        index = index[:, :max_tokens]
    return index.astype(jnp.int32), jnp.sum(mask, axis=-1).astype(jnp.int32)


def gather_positions(values, index):
    """``values[b, index[b, k], ...]`` → [B, K, ...] (logits [B, L, V] or hidden states [B, L, D])."""
    return jnp.take_along_axis(values, index[:, :, None], axis=1)


def zscore(logits):
    """``(z − mean)/(std + 1e−6)`` over the vocabulary with torch's unbiased std (divides by V − 1).
    The square root is guarded so a constant row has a finite (zero) gradient instead of NaN."""
    logits = logits.astype(jnp.float32)
    centred = logits - jnp.mean(logits, axis=-1, keepdims=True)
    var = jnp.sum(centred * centred, axis=-1, keepdims=True) / (logits.shape[-1] - 1)
    positive = var > 0
    std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
    return centred / (std + STD_EPS)


def kl_divergence(log_p, log_q):
    """``KL(p‖q) = Σ_v p (log p − log q)`` over the last axis, from log-probabilities."""
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def inputs_mask(loss_mask):
    """Mask of the positions whose *input* token is supervised: ``loss_mask`` shifted right by one
    (``loss_mask[t]`` flags ``targets[t] = tokens[t+1]``)."""
    loss_mask = jnp.asarray(loss_mask, jnp.float32)
    return jnp.pad(loss_mask[:, :-1], ((0, 0), (1, 0)))


def position_terms(ref_logits, act_logits, labels, *, normalize: bool, temperature: float):
    """Per-position terms [B, K] of answer positions' logits [B, K, V] (strong = ref, weak = act):
    ``(KL(p_a‖p_r), KL(p_r‖p_a), H(p_r), p_r(label))`` with ``p = softmax(n(z)/T)`` (module doc),
    ``labels`` [B, K] the weak member's targets there. Positions are independent, so this runs on all
    K at once or on a chunk of them."""
    ref, act = ref_logits.astype(jnp.float32), act_logits.astype(jnp.float32)
    if normalize:
        ref, act = zscore(ref), zscore(act)
    log_p_ref = jax.nn.log_softmax(ref / temperature, axis=-1)
    log_p_act = jax.nn.log_softmax(act / temperature, axis=-1)
    p_ref = jnp.exp(log_p_ref)
    teacher_entropy = -jnp.sum(p_ref * log_p_ref, axis=-1)
    teacher_label_prob = jnp.take_along_axis(p_ref, labels[..., None], axis=-1)[..., 0]
    return (kl_divergence(log_p_act, log_p_ref), kl_divergence(log_p_ref, log_p_act),
            teacher_entropy, teacher_label_prob)


def _settings(mode, normalize, positions):
    """``(official, normalize, select)`` of a mode with its defaults filled in."""
    if mode not in MODES:
        raise ValueError(f"unknown puma_kl mode {mode!r}; choose one of {MODES}")
    official = mode == "official"
    normalize = official if normalize is None else normalize
    positions = ("inputs" if official else "targets") if positions is None else positions
    if positions not in POSITIONS:
        raise ValueError(f"unknown puma_kl positions {positions!r}; choose one of {POSITIONS}")
    select = inputs_mask if positions == "inputs" else (lambda m: jnp.asarray(m, jnp.float32))
    return official, normalize, select


def _puma(terms_at, weak_nll, lengths, strong_loss_mask, weak_targets, weak_loss_mask, *,
          mode, alpha, lam, temperature, normalize, positions, ce_reduction, max_answer_tokens):
    """The loss of :func:`puma_kl_loss` given ``terms_at(strong_index, weak_index, labels, normalize)``
    → :func:`position_terms` [B, K] at those positions, and the weak member's per-token next-token
    loss ``weak_nll`` [B, L] for CE(weak). ``lengths``: the members' sequence lengths."""
    official, normalize, select = _settings(mode, normalize, positions)

    # The members may be padded to different lengths (length buckets cut each member on its own); only
    # min(count) answer tokens are aligned, and that fits in the shorter member.
    gathered = min(*lengths, max_answer_tokens or np.inf)
    strong_index, strong_count = answer_positions(select(strong_loss_mask), int(gathered))
    weak_index, weak_count = answer_positions(select(weak_loss_mask), int(gathered))
    aligned_count = jnp.minimum(strong_count, weak_count)
    k = jnp.arange(strong_index.shape[1])
    aligned = (k[None, :] < aligned_count[:, None]).astype(jnp.float32)  # [B, K]

    labels = jnp.take_along_axis(jnp.asarray(weak_targets, jnp.int32), weak_index, axis=1)
    kl_act_ref_tokens, kl_ref_act_tokens, entropy_tokens, label_prob_tokens = terms_at(
        strong_index, weak_index, labels, normalize)

    if official:  # batchmean: Σ over tokens (and vocab) / number of pairs
        denominator = jnp.sum(aligned_count > 0)
    else:  # token mean
        denominator = jnp.sum(aligned)
    kl_act_ref = safe_divide(jnp.sum(kl_act_ref_tokens * aligned), denominator)
    kl_ref_act = safe_divide(jnp.sum(kl_ref_act_tokens * aligned), denominator)
    t2 = temperature ** 2
    kl = (alpha * kl_act_ref + (1 - alpha) * kl_ref_act) * (t2 if official else 1.0)
    ce = reduce_over_tokens(weak_nll, weak_loss_mask, ce_reduction)
    total = lam * kl * t2 + (1 - lam) * ce

    # What the target knows beyond the labels: where p_r is one-hot on the label (entropy 0, label
    # probability 1), KL(p_r‖p_a) = −log p_a(label), i.e. the CE term again, and the KL adds no
    # information ("dark knowledge") to the weak member's own next-token loss.
    tokens = jnp.sum(aligned)
    teacher_entropy = safe_divide(jnp.sum(entropy_tokens * aligned), tokens)
    teacher_label_prob = safe_divide(jnp.sum(label_prob_tokens * aligned), tokens)

    has_pair = (strong_count > 0) | (weak_count > 0)
    metrics = {
        "loss": total, "kl": kl, "kl_act_ref": kl_act_ref, "kl_ref_act": kl_ref_act, "ce": ce,
        "aligned_tokens": tokens, "teacher_entropy": teacher_entropy,
        "teacher_label_prob": teacher_label_prob,
        "mismatched_pairs": jnp.sum(has_pair & (strong_count != weak_count)).astype(jnp.float32),
        "truncated_pairs": jnp.sum(aligned_count > strong_index.shape[1]).astype(jnp.float32),
    }
    return total, metrics


def puma_kl_loss(strong_logits, weak_logits, strong_loss_mask, weak_targets, weak_loss_mask, *,
                 mode: str = "official", alpha: float = 0.5, lam: float = 0.1,
                 temperature: float = 1.0, normalize: bool | None = None,
                 positions: str | None = None, ce_reduction: str = "token",
                 max_answer_tokens: int | None = None):
    """Math-PUMA loss (module doc) from full-sequence logits [B, L, V] of both members.

    ``strong_loss_mask`` / ``weak_loss_mask`` [B, L] are each member's next-token supervision masks
    (merged sequences); ``weak_targets`` feeds CE(weak) with ``ce_reduction`` (``token`` as the
    formula states; the released run, per-device batch 1 × accumulation, amounts to ``sequence``).
    ``normalize`` / ``positions`` default by mode. ``max_answer_tokens`` caps the gathered length K
    (memory: [B, K, V] per side here, [B, chunk, V] in :func:`chunked_puma_kl_loss`); longer
    answers are truncated and counted in ``truncated_pairs``.

    Returns ``(total, metrics)`` with ``loss``; ``kl`` such that ``total = λ·kl·T² + (1−λ)·ce``
    (in ``official`` it carries the inner T²); ``kl_act_ref`` = KL(p_a‖p_r) and ``kl_ref_act`` =
    KL(p_r‖p_a), reduced as the mode says, without T²; ``ce``; ``aligned_tokens``;
    ``mismatched_pairs`` (pairs whose answer token counts differ, truncated to the shorter);
    ``truncated_pairs`` (pairs cut at ``max_answer_tokens``); ``teacher_entropy`` (nats) and
    ``teacher_label_prob``: token means over the aligned positions of H(p_r) and of p_r at the weak
    member's target there — how much the target distribution says beyond the labels.
    """
    def terms_at(strong_index, weak_index, labels, normalize):
        ref = jax.lax.stop_gradient(gather_positions(strong_logits, strong_index))
        act = gather_positions(weak_logits, weak_index)
        return position_terms(ref, act, labels, normalize=normalize, temperature=temperature)

    return _puma(terms_at, token_statistics(weak_logits, weak_targets)[0],
                 (strong_logits.shape[1], weak_logits.shape[1]), strong_loss_mask, weak_targets,
                 weak_loss_mask, mode=mode, alpha=alpha, lam=lam, temperature=temperature,
                 normalize=normalize, positions=positions, ce_reduction=ce_reduction,
                 max_answer_tokens=max_answer_tokens)


def chunked_puma_kl_loss(strong_hidden, weak_hidden, strong_unembed, weak_unembed, strong_loss_mask,
                         weak_targets, weak_loss_mask, chunk_size: int, *, mode: str = "official",
                         alpha: float = 0.5, lam: float = 0.1, temperature: float = 1.0,
                         normalize: bool | None = None, positions: str | None = None,
                         ce_reduction: str = "token", max_answer_tokens: int | None = None):
    """:func:`puma_kl_loss` (same options, same result) from the members' final hidden states
    [B, L, D] and unembeddings (callables ``h → float32 logits``, or kernels [D, V]): the hidden
    states are gathered at the answer positions ([B, K, D]) and :func:`position_terms` runs on
    ``chunk_size`` of them at a time (:func:`~mathvlm.losses.next_token.map_position_chunks`);
    CE(weak) comes from chunked next-token statistics. The strong side is a constant: neither its
    hidden states nor its unembedding (e.g. the LM-head kernel) get a gradient through it."""
    project_strong, project_weak = as_unembed(strong_unembed), as_unembed(weak_unembed)

    def terms_at(strong_index, weak_index, labels, normalize):
        def chunk(ref_hidden, act_hidden, label_chunk):
            ref = jax.lax.stop_gradient(project_strong(ref_hidden))
            return position_terms(ref, project_weak(act_hidden), label_chunk,
                                  normalize=normalize, temperature=temperature)

        ref_hidden = jax.lax.stop_gradient(gather_positions(strong_hidden, strong_index))
        return map_position_chunks(
            chunk, (ref_hidden, gather_positions(weak_hidden, weak_index), labels), chunk_size)

    weak_nll, _, _ = chunked_token_statistics(weak_hidden, project_weak, weak_targets, chunk_size)
    return _puma(terms_at, weak_nll, (strong_hidden.shape[1], weak_hidden.shape[1]),
                 strong_loss_mask, weak_targets, weak_loss_mask, mode=mode, alpha=alpha, lam=lam,
                 temperature=temperature, normalize=normalize, positions=positions,
                 ce_reduction=ce_reduction, max_answer_tokens=max_answer_tokens)


@registry.register("loss", "puma_kl")
def puma_kl(outputs: dict, batch: dict, *, mode: str = "official", alpha: float = 0.5,
            lam: float = 0.1, temperature: float = 1.0, normalize: bool | None = None,
            positions: str | None = None, ce_reduction: str = "token",
            max_answer_tokens: int | None = None):
    """Math-PUMA loss term. Reads ``batch["strong_loss_mask"]``, ``batch["weak_targets"]``,
    ``batch["weak_loss_mask"]`` [B, L] (the data pipeline's ``strong_*`` / ``weak_*`` pair keys) and
    either ``outputs["strong_logits"]``, ``outputs["weak_logits"]`` [B, L, V] or — when the outputs
    hold ``strong_hidden`` / ``weak_hidden`` [B, L, D] with ``strong_unembed`` / ``weak_unembed`` and
    ``logits_chunk`` > 0 — those (:func:`chunked_puma_kl_loss`). Options: see :func:`puma_kl_loss`."""
    where = "loss 'puma_kl'"
    strong_mask, weak_targets, weak_mask = require(
        batch, ("strong_loss_mask", "weak_targets", "weak_loss_mask"), where)
    options = dict(mode=mode, alpha=alpha, lam=lam, temperature=temperature, normalize=normalize,
                   positions=positions, ce_reduction=ce_reduction, max_answer_tokens=max_answer_tokens)
    if outputs.get("logits_chunk") and "weak_hidden" in outputs:
        members = require(outputs, ("strong_hidden", "weak_hidden", "strong_unembed", "weak_unembed"),
                          where)
        return chunked_puma_kl_loss(*members, strong_mask, weak_targets, weak_mask,
                                    outputs["logits_chunk"], **options)
    strong_logits, weak_logits = require(outputs, ("strong_logits", "weak_logits"), where)
    return puma_kl_loss(strong_logits, weak_logits, strong_mask, weak_targets, weak_mask, **options)
