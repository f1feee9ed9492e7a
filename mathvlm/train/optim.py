"""Optimizer, learning-rate schedule and the trainable-parameter filter of a stage."""

from __future__ import annotations

import jax
import optax
from flax import nnx


def make_schedule(optim_config, total_steps: int) -> optax.Schedule:
    """Linear warmup to ``lr`` then cosine (or constant) to ``lr * end_lr_fraction``."""
    lr, warmup = optim_config.lr, min(optim_config.warmup_steps, max(total_steps - 1, 0))
    if optim_config.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup])
    if optim_config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
            end_value=lr * optim_config.end_lr_fraction)
    raise ValueError(f"optim.schedule={optim_config.schedule!r}; use 'cosine' or 'constant'")


def updates_per_step(config) -> int:
    """Optimizer updates one train step makes (GRPO's μ, ``train.step_options.updates``; else 1)."""
    return int((config.train.get("step_options", {}) or {}).get("updates", 1))


def total_updates(config) -> int:
    """The optimizer's horizon: ``train.steps`` × updates per step (the schedule counts updates)."""
    return config.train.steps * updates_per_step(config)


def _decay_mask(params):
    # Decay matrices only: norms, biases and scales keep their values (the usual AdamW practice).
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; ``accum_steps > 1`` accumulates gradients (optax.MultiSteps)."""
    schedule = make_schedule(optim_config, total_steps)
    parts = []
    if optim_config.clip_norm:
        parts.append(optax.clip_by_global_norm(optim_config.clip_norm))
    parts.append(optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
                             weight_decay=optim_config.weight_decay, mask=_decay_mask))
    tx = optax.chain(*parts)
    if optim_config.accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim_config.accum_steps)
    return tx


def trainable_filter(spec: str):
    """``"all"`` → every ``nnx.Param``; ``"projector,lora"`` → Params with a path part equal to one of
    the names or starting with it and ``_`` (``lora`` covers the adapters' ``lora_a`` / ``lora_b``), so
    frozen parameters get neither gradients nor optimizer state."""
    if spec in ("all", ""):
        return nnx.Param
    names = tuple(name.strip() for name in spec.split(",") if name.strip())

    def named(path, value) -> bool:
        del value
        return any(str(part) == name or str(part).startswith(name + "_")
                   for part in path for name in names)

    return nnx.All(nnx.Param, named)
