"""Group relative policy optimisation (GRPO): a clipped policy-gradient loss with group baselines.

Each prompt gets G = ``group_size`` sampled completions, contiguous in the batch, with scalar rewards
r_1..r_G. The advantage of completion i is its reward normalised within its group (no critic)::

    A_i = (r_i − mean_g r) / (std_g r + ε_adv)    (population std, ddof = 0)
    A_i =  r_i − mean_g r                          (``scale=False``)

and is 0 for a group whose rewards are all equal. With per-token log-probs of the policy being
trained (log π_θ), of the sampling policy (log π_old) and of a frozen reference (log π_ref)::

    ρ_t  = exp(log π_θ,t − log π_old,t)
    o_t  = min(ρ_t A, clip(ρ_t, 1 − ε_low, 1 + ε_high) A)
    k3_t = exp(log π_ref,t − log π_θ,t) − (log π_ref,t − log π_θ,t) − 1     (KL estimate, ≥ 0)
    ℓ_t  = −o_t + β k3_t                        (the k3 term only when β > 0 and log π_ref is given)

reduced over the answer-token mask m with

* ``token_mean``    — ``Σ_{b,t} m ℓ / Σ_{b,t} m`` (every token weighs the same);
* ``sequence_mean`` — ``mean_{b: n_b>0} (Σ_t m ℓ / n_b)`` with ``n_b = Σ_t m_bt``.

log π_old and log π_ref are constants (stop-gradient). A token whose clipped term is active
(ρ_t < 1 − ε_low with A < 0, or ρ_t > 1 + ε_high with A > 0) gets no policy gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mathvlm import registry
from mathvlm.losses.common import example_validity, masked_mean, require
from mathvlm.losses.next_token import (chunked_token_statistics, reduce_over_tokens,
                                       token_statistics)

AGGREGATIONS = {"token_mean": "token", "sequence_mean": "sequence"}


def token_logps(logits, targets, temperature=1.0):
    """[B, L] ``log softmax(logits / temperature)[targets]`` in float32 (targets already shifted)."""
    nll, _, _ = token_statistics(logits, targets, temperature)
    return -nll


def chunked_token_logps(hidden, unembed, targets, chunk_size: int, temperature=1.0):
    """:func:`token_logps` of ``logits = unembed(hidden)`` computed ``chunk_size`` positions at a time
    (:func:`~mathvlm.losses.next_token.chunked_token_statistics`): hidden [B, L, D], ``unembed`` a
    callable ``h → float32 logits`` or a kernel [D, V]."""
    nll, _, _ = chunked_token_statistics(hidden, unembed, targets, chunk_size, temperature)
    return -nll


def _grouped(rewards, group_size: int):
    """rewards [B] → [B / G, G] float32; ValueError unless G divides B."""
    rewards = jnp.asarray(rewards, jnp.float32).reshape(-1)
    size = rewards.shape[0]
    if group_size < 1 or size % group_size:
        raise ValueError(f"batch size {size} is not a multiple of group_size {group_size}")
    return rewards.reshape(size // group_size, group_size)


def group_advantages(rewards, group_size: int, *, scale: bool = True, eps: float = 1e-4):
    """rewards [B] with B = num_groups · group_size, the G = group_size completions of one prompt
    contiguous. ``A_i = (r_i − mean_g r) / (std_g r + eps)`` (population std); ``scale=False`` gives
    ``r_i − mean_g r``. Groups whose rewards are all equal get exactly 0.

    Returns ``(advantages [B] float32, zero_group [num_groups] bool)``.
    """
    grouped = _grouped(rewards, group_size)
    zero_group = jnp.all(grouped == grouped[:, :1], axis=-1)
    centred = grouped - jnp.mean(grouped, axis=-1, keepdims=True)
    if scale:
        centred = centred / (jnp.std(grouped, axis=-1, keepdims=True) + eps)
    advantages = jnp.where(zero_group[:, None], 0.0, centred)
    return advantages.reshape(-1), zero_group


def grpo_loss(logps, old_logps, advantages, mask, *, ref_logps=None, beta=0.0,
              epsilon_low=0.2, epsilon_high=0.2, aggregation="token_mean"):
    """GRPO loss (module doc) from per-token log-probs [B, L], advantages [B] and mask [B, L].

    Returns ``(loss, metrics)``: ``loss``, ``clip_fraction`` (masked fraction of tokens whose clipped
    term is active), ``ratio_mean`` (masked mean ρ), ``kl`` (masked mean k3 when ``ref_logps`` is
    given, else 0). An empty mask gives 0 with a finite (zero) gradient.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {tuple(AGGREGATIONS)}")
    mask = jnp.asarray(mask, jnp.float32)
    on = mask > 0
    logps = jnp.asarray(logps, jnp.float32)
    old_logps = jax.lax.stop_gradient(jnp.asarray(old_logps, jnp.float32))
    advantages = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[:, None]
    # Masked positions (padding) may hold arbitrary values: zero them before exp.
    ratio = jnp.exp(jnp.where(on, logps - old_logps, 0.0))
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    objective = jnp.minimum(ratio * advantages, clipped * advantages)
    per_token = -objective
    kl = jnp.zeros((), jnp.float32)
    if ref_logps is not None:
        ref_logps = jax.lax.stop_gradient(jnp.asarray(ref_logps, jnp.float32))
        delta = jnp.where(on, ref_logps - logps, 0.0)
        k3 = jnp.exp(delta) - delta - 1.0
        kl = masked_mean(k3, mask)
        if beta:
            per_token = per_token + beta * k3
    loss = reduce_over_tokens(per_token, mask, AGGREGATIONS[aggregation])
    is_clipped = (((ratio < 1.0 - epsilon_low) & (advantages < 0))
                  | ((ratio > 1.0 + epsilon_high) & (advantages > 0)))
    metrics = {"loss": loss, "clip_fraction": masked_mean(is_clipped, mask),
               "ratio_mean": masked_mean(ratio, mask), "kl": kl}
    return loss, metrics


@registry.register("loss", "grpo")
def grpo(outputs: dict, batch: dict, *, group_size: int, scale_rewards: bool = True,
         beta: float = 0.0, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
         aggregation: str = "token_mean", adv_eps: float = 1e-4):
    """GRPO loss term. Reads ``outputs["logps"]`` [B, L] (policy per-token log-probs) and, when
    β > 0, ``outputs["reference_logps"]`` [B, L]; ``batch["old_logps"]`` [B, L], ``batch["rewards"]``
    [B], ``batch["loss_mask"]`` [B, L], optional ``batch["skip_reason"]`` [B] (blanked rows get mask
    0; their rewards still enter their group's statistics). Adds ``reward_mean``, ``reward_std``
    (mean over groups of the within-group std), ``zero_advantage_groups`` (fraction of groups with
    all-equal rewards) and ``advantage_abs_mean`` to :func:`grpo_loss`'s metrics."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {tuple(AGGREGATIONS)}")
    where = "loss 'grpo'"
    (logps,) = require(outputs, ("logps",), where)
    ref_logps = outputs.get("reference_logps")
    if beta:
        (ref_logps,) = require(outputs, ("reference_logps",), f"{where} with beta > 0")
    old_logps, rewards, mask = require(batch, ("old_logps", "rewards", "loss_mask"), where)
    advantages, zero_group = group_advantages(rewards, group_size, scale=scale_rewards, eps=adv_eps)
    valid = example_validity(batch, logps.shape[0])
    mask = jnp.asarray(mask, jnp.float32) * valid[:, None]
    loss, metrics = grpo_loss(logps, old_logps, advantages, mask, ref_logps=ref_logps, beta=beta,
                              epsilon_low=epsilon_low, epsilon_high=epsilon_high,
                              aggregation=aggregation)
    grouped = _grouped(rewards, group_size)
    metrics.update({"reward_mean": jnp.mean(grouped),
                    "reward_std": jnp.mean(jnp.std(grouped, axis=-1)),
                    "zero_advantage_groups": jnp.mean(zero_group.astype(jnp.float32)),
                    "advantage_abs_mean": jnp.mean(jnp.abs(advantages))})
    return loss, metrics
