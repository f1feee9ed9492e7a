"""Direct preference optimisation (Rafailov et al. 2023), MAVIS stage 4.

For a prompt x with chosen answer y⁺ and rejected answer y⁻, policy π_θ and frozen reference π_ref
(the stage-3 model), with ``log π(y|x)`` the sum of the answer tokens' log-probabilities::

    r⁺ = β (log π_θ(y⁺|x) − log π_ref(y⁺|x))        r⁻ = β (log π_θ(y⁻|x) − log π_ref(y⁻|x))
    L  = −(1−ε) log σ(r⁺ − r⁻) − ε log σ(−(r⁺ − r⁻))

averaged over usable examples; ε > 0 is conservative DPO (label smoothing), ε = 0 the original.
At π_θ = π_ref the loss is log 2 for every ε.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mathvlm import registry
from mathvlm.losses.common import example_validity, masked_mean, require
from mathvlm.losses.next_token import chunked_token_statistics, token_statistics

SIDES = ("chosen", "rejected")
MODELS = ("policy", "reference")


def _sum_over_mask(nll, mask):
    """``Σ_t mask_t · (−nll_t)`` → [B]."""
    return -jnp.sum(nll * jnp.asarray(mask, jnp.float32), axis=-1)


def sequence_logps(logits, targets, mask):
    """``Σ_t mask_t · log softmax(logits_t)[targets_t]`` → [B] (targets already shifted, as for
    next-token CE: ``logits[:, t]`` scores ``targets[:, t]``)."""
    nll, _, _ = token_statistics(logits, targets)
    return _sum_over_mask(nll, mask)


def chunked_sequence_logps(hidden, unembed, targets, mask, chunk_size: int):
    """:func:`sequence_logps` of ``logits = unembed(hidden)`` computed ``chunk_size`` positions at a
    time (:func:`~mathvlm.losses.next_token.chunked_token_statistics`): hidden [B, L, D], ``unembed``
    a callable ``h → float32 logits`` or a kernel [D, V]."""
    nll, _, _ = chunked_token_statistics(hidden, unembed, targets, chunk_size)
    return _sum_over_mask(nll, mask)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, valid=None, *, beta: float = 0.1,
             label_smoothing: float = 0.0):
    """Sigmoid DPO from per-example sequence log-probs [B] (module doc). The reference log-probs
    are treated as constants (stop-gradient).

    Returns ``(loss, metrics)``: ``loss``, ``reward_margin`` = mean(r⁺ − r⁻), ``chosen_reward`` =
    mean r⁺, ``rejected_reward`` = mean r⁻, ``accuracy`` = fraction with r⁺ > r⁻.
    """
    reference_chosen_logps = jax.lax.stop_gradient(reference_chosen_logps)
    reference_rejected_logps = jax.lax.stop_gradient(reference_rejected_logps)
    chosen_reward = beta * (policy_chosen_logps - reference_chosen_logps).astype(jnp.float32)
    rejected_reward = beta * (policy_rejected_logps - reference_rejected_logps).astype(jnp.float32)
    margin = chosen_reward - rejected_reward
    per_example = (-(1 - label_smoothing) * jax.nn.log_sigmoid(margin)
                   - label_smoothing * jax.nn.log_sigmoid(-margin))
    valid = jnp.ones_like(margin) if valid is None else jnp.asarray(valid, jnp.float32)
    loss = masked_mean(per_example, valid)
    metrics = {"loss": loss, "reward_margin": masked_mean(margin, valid),
               "chosen_reward": masked_mean(chosen_reward, valid),
               "rejected_reward": masked_mean(rejected_reward, valid),
               "accuracy": masked_mean(margin > 0, valid)}
    return loss, metrics


def _logps(outputs, batch, model, side):
    """``outputs[f"{model}_{side}_logps"]`` if the step computed it, else from
    ``outputs[f"{model}_{side}_logits"]`` and the batch's ``{side}_targets`` / ``{side}_loss_mask``."""
    key = f"{model}_{side}_logps"
    if key in outputs:
        return outputs[key]
    where = f"loss 'dpo' (needs {key!r} or {model}_{side}_logits)"
    (logits,) = require(outputs, (f"{model}_{side}_logits",), where)
    targets, mask = require(batch, (f"{side}_targets", f"{side}_loss_mask"), where)
    return sequence_logps(logits, targets, mask)


@registry.register("loss", "dpo")
def dpo(outputs: dict, batch: dict, *, beta: float = 0.1, label_smoothing: float = 0.0):
    """DPO loss term. Reads, for model ∈ {policy, reference} and side ∈ {chosen, rejected}, either
    ``outputs["{model}_{side}_logps"]`` [B] or ``outputs["{model}_{side}_logits"]`` [B, L, V] with
    ``batch["{side}_targets"]``, ``batch["{side}_loss_mask"]`` [B, L] (the data pipeline's preference
    keys); optional ``batch["skip_reason"]`` [B] drops blanked rows. β is not given in MAVIS; 0.1 is
    the DPO paper's common default."""
    logps = {(m, s): _logps(outputs, batch, m, s) for m in MODELS for s in SIDES}
    valid = example_validity(batch, logps["policy", "chosen"].shape[0])
    return dpo_loss(logps["policy", "chosen"], logps["policy", "rejected"],
                    logps["reference", "chosen"], logps["reference", "rejected"], valid,
                    beta=beta, label_smoothing=label_smoothing)
