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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mathvlm import registry
from mathvlm.losses.common import require, safe_divide
from mathvlm.losses.next_token import next_token_loss

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


def gather_positions(logits, index):
    """``logits[b, index[b, k], :]`` → [B, K, V]."""
    return jnp.take_along_axis(logits, index[:, :, None], axis=1)


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
    (memory: [B, K, V] per side); longer answers are truncated and counted in ``truncated_pairs``.

    Returns ``(total, metrics)`` with ``loss``; ``kl`` such that ``total = λ·kl·T² + (1−λ)·ce``
    (in ``official`` it carries the inner T²); ``kl_act_ref`` = KL(p_a‖p_r) and ``kl_ref_act`` =
    KL(p_r‖p_a), reduced as the mode says, without T²; ``ce``; ``aligned_tokens``;
    ``mismatched_pairs`` (pairs whose answer token counts differ, truncated to the shorter);
    ``truncated_pairs`` (pairs cut at ``max_answer_tokens``); ``teacher_entropy`` (nats) and
    ``teacher_label_prob``: token means over the aligned positions of H(p_r) and of p_r at the weak
    member's target there — how much the target distribution says beyond the labels.
    """
    if mode not in MODES:
        raise ValueError(f"unknown puma_kl mode {mode!r}; choose one of {MODES}")
    official = mode == "official"
    normalize = official if normalize is None else normalize
    positions = ("inputs" if official else "targets") if positions is None else positions
    if positions not in POSITIONS:
        raise ValueError(f"unknown puma_kl positions {positions!r}; choose one of {POSITIONS}")
    select = inputs_mask if positions == "inputs" else (lambda m: jnp.asarray(m, jnp.float32))

    # The members may be padded to different lengths (length buckets cut each member on its own); only
    # min(count) answer tokens are aligned, and that fits in the shorter member.
    gathered = min(strong_logits.shape[1], weak_logits.shape[1], max_answer_tokens or np.inf)
    strong_index, strong_count = answer_positions(select(strong_loss_mask), int(gathered))
    weak_index, weak_count = answer_positions(select(weak_loss_mask), int(gathered))
    aligned_count = jnp.minimum(strong_count, weak_count)
    k = jnp.arange(strong_index.shape[1])
    aligned = (k[None, :] < aligned_count[:, None]).astype(jnp.float32)  # [B, K]

    ref = jax.lax.stop_gradient(gather_positions(strong_logits, strong_index)).astype(jnp.float32)
    act = gather_positions(weak_logits, weak_index).astype(jnp.float32)
    if normalize:
        ref, act = zscore(ref), zscore(act)
    log_p_ref = jax.nn.log_softmax(ref / temperature, axis=-1)
    log_p_act = jax.nn.log_softmax(act / temperature, axis=-1)
    kl_act_ref_tokens = kl_divergence(log_p_act, log_p_ref) * aligned
    kl_ref_act_tokens = kl_divergence(log_p_ref, log_p_act) * aligned

    if official:  # batchmean: Σ over tokens (and vocab) / number of pairs
        denominator = jnp.sum(aligned_count > 0)
    else:  # token mean
        denominator = jnp.sum(aligned)
    kl_act_ref = safe_divide(jnp.sum(kl_act_ref_tokens), denominator)
    kl_ref_act = safe_divide(jnp.sum(kl_ref_act_tokens), denominator)
    t2 = temperature ** 2
    kl = (alpha * kl_act_ref + (1 - alpha) * kl_ref_act) * (t2 if official else 1.0)
    ce, _ = next_token_loss(weak_logits, weak_targets, weak_loss_mask, reduction=ce_reduction)
    total = lam * kl * t2 + (1 - lam) * ce

    # What the target knows beyond the labels: where p_r is one-hot on the label (entropy 0, label
    # probability 1), KL(p_r‖p_a) = −log p_a(label), i.e. the CE term again, and the KL adds no
    # information ("dark knowledge") to the weak member's own next-token loss.
    labels = jnp.take_along_axis(jnp.asarray(weak_targets), weak_index, axis=1)
    p_ref = jnp.exp(log_p_ref)
    tokens = jnp.sum(aligned)
    teacher_entropy = safe_divide(jnp.sum(-jnp.sum(p_ref * log_p_ref, axis=-1) * aligned), tokens)
    teacher_label_prob = safe_divide(
        jnp.sum(jnp.take_along_axis(p_ref, labels[..., None], axis=-1)[..., 0] * aligned), tokens)

    has_pair = (strong_count > 0) | (weak_count > 0)
    metrics = {
        "loss": total, "kl": kl, "kl_act_ref": kl_act_ref, "kl_ref_act": kl_ref_act, "ce": ce,
        "aligned_tokens": tokens, "teacher_entropy": teacher_entropy,
        "teacher_label_prob": teacher_label_prob,
        "mismatched_pairs": jnp.sum(has_pair & (strong_count != weak_count)).astype(jnp.float32),
        "truncated_pairs": jnp.sum(aligned_count > strong_index.shape[1]).astype(jnp.float32),
    }
    return total, metrics


@registry.register("loss", "puma_kl")
def puma_kl(outputs: dict, batch: dict, *, mode: str = "official", alpha: float = 0.5,
            lam: float = 0.1, temperature: float = 1.0, normalize: bool | None = None,
            positions: str | None = None, ce_reduction: str = "token",
            max_answer_tokens: int | None = None):
    """Math-PUMA loss term. Reads ``outputs["strong_logits"]``, ``outputs["weak_logits"]`` [B, L, V]
    and ``batch["strong_loss_mask"]``, ``batch["weak_targets"]``, ``batch["weak_loss_mask"]`` [B, L]
    (the data pipeline's ``strong_*`` / ``weak_*`` pair keys). Options: see :func:`puma_kl_loss`."""
    strong_logits, weak_logits = require(outputs, ("strong_logits", "weak_logits"), "loss 'puma_kl'")
    strong_mask, weak_targets, weak_mask = require(
        batch, ("strong_loss_mask", "weak_targets", "weak_loss_mask"), "loss 'puma_kl'")
    return puma_kl_loss(strong_logits, weak_logits, strong_mask, weak_targets, weak_mask,
                        mode=mode, alpha=alpha, lam=lam, temperature=temperature,
                        normalize=normalize, positions=positions, ce_reduction=ce_reduction,
                        max_answer_tokens=max_answer_tokens)
