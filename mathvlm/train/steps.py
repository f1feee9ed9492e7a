"""Train-step kinds, chosen by ``config.train.step`` through the registry.

A step is ``step(model, optimizer, batch, *, loss_fn, trainable, reference=None) -> metrics``: it runs
the forward pass(es) a stage needs, differentiates ``loss_fn`` with respect to the ``trainable``
parameters only, and applies the update in place. The loop jits it once with the shardings of the mesh.
``reference`` is a frozen model (DPO's π_ref) for steps whose ``needs_reference(config)`` is true.
Options of a step kind come from ``config.train.step_options`` as keywords.

Output keys per step follow :mod:`mathvlm.losses`: ``logits``; ``strong_logits`` / ``weak_logits``
(pairs); ``{policy,reference}_{chosen,rejected}_logps`` (preference); ``logps`` /
``reference_logps`` (grpo).

Chunked logits: the token steps (``next_token``, ``pair``, ``preference``, ``grpo``) take the option
``logits_chunk`` (C, positions; 0 = off). With C > 0 no step holds the float32 logits [B, L, V]
whole, in the forward or the backward pass: the model gives its final hidden states
(``model.hidden``) and the losses unembed them C positions at a time (``model.unembed`` on a slice;
see :func:`mathvlm.losses.next_token.map_position_chunks`). Instead of ``{prefix}logits`` the
outputs then hold ``{prefix}hidden`` [B, L, D], ``{prefix}unembed`` (``h → float32 logits``; for the
strong member of a pair a constant: no gradient, not even into the LM head) and ``logits_chunk`` = C;
the preference and grpo steps compute their log-probs chunk by chunk themselves. Loss, metrics and
gradients are those of the full logits.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from mathvlm import registry
from mathvlm.losses import (chunked_sequence_logps, chunked_token_logps, sequence_logps,
                            token_logps)


def needs_reference(config) -> bool:
    """Whether the config's step kind trains against a frozen copy of the starting model."""
    step = registry.get("step", config.train.step)
    return bool(getattr(step, "needs_reference", lambda config: False)(config))


def model_inputs(batch, prefix: str = ""):
    """``(tokens, kwargs)`` of one member of a batch (``prefix`` = "", "strong_", "chosen_", ...): its
    attention mask, and its images, segment ids and positions when the batch carries them."""
    kwargs = {"attention_mask": batch[prefix + "attention_mask"]}
    # Packed rows (data.packing): attention stays inside each example, positions restart per example.
    for key in ("segment_ids", "positions"):
        if prefix + key in batch:
            kwargs[key] = batch[prefix + key]
    if prefix + "images" in batch:
        kwargs.update(images=batch[prefix + "images"], image_mask=batch.get(prefix + "image_mask"))
    return batch[prefix + "tokens"], kwargs


def forward(model, batch, prefix: str = ""):
    """Logits [B, L, V] float32 of one member of a batch (:func:`model_inputs`)."""
    tokens, kwargs = model_inputs(batch, prefix)
    return model(tokens, **kwargs)


def hidden_states(model, batch, prefix: str = ""):
    """Final-norm hidden states [B, L, D] of one member of a batch, the same inputs as
    :func:`forward`: ``model.unembed(hidden_states(...))`` are its logits."""
    if not (hasattr(model, "hidden") and hasattr(model, "unembed")):
        raise TypeError(f"train.logits_chunk needs a model with hidden() and unembed(); "
                        f"{type(model).__name__} has not")
    tokens, kwargs = model_inputs(batch, prefix)
    return model.hidden(tokens, **kwargs)


def _chunk(logits_chunk) -> int:
    chunk = int(logits_chunk or 0)
    if chunk < 0:
        raise ValueError(f"train.logits_chunk={logits_chunk}: a number of positions ≥ 0 "
                         f"(0 = full logits)")
    return chunk


def member_outputs(model, batch, prefix: str = "", logits_chunk: int = 0, *,
                   constant: bool = False) -> dict:
    """What the losses read of one member: ``{prefix}logits`` [B, L, V]; or, with ``logits_chunk`` > 0,
    ``{prefix}hidden`` [B, L, D], ``{prefix}unembed`` and ``logits_chunk``. ``constant``: the member
    is a fixed target (stop-gradient on the logits, i.e. on the hidden states and the unembedding)."""
    if not logits_chunk:
        logits = forward(model, batch, prefix)
        return {prefix + "logits": jax.lax.stop_gradient(logits) if constant else logits}
    hidden, unembed = hidden_states(model, batch, prefix), model.unembed
    if constant:
        hidden = jax.lax.stop_gradient(hidden)
        unembed = lambda h: jax.lax.stop_gradient(model.unembed(h))  # noqa: E731
    return {prefix + "hidden": hidden, prefix + "unembed": unembed, "logits_chunk": logits_chunk}


def _update(model, optimizer, objective, trainable):
    grad_fn = nnx.value_and_grad(objective, argnums=nnx.DiffState(0, trainable), has_aux=True)
    (loss, metrics), grads = grad_fn(model)
    optimizer.update(model, grads)
    return {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}


@registry.register("step", "next_token")
def next_token_step(model, optimizer, batch, *, loss_fn, trainable, reference=None,
                    logits_chunk: int = 0):
    """Supervised next-token training (alignment, instruction tuning, text SFT)."""
    chunk = _chunk(logits_chunk)
    return _update(model, optimizer, lambda m: loss_fn(member_outputs(m, batch, "", chunk), batch),
                   trainable)


@registry.register("step", "contrastive")
def contrastive_step(model, optimizer, batch, *, loss_fn, trainable, reference=None):
    """CLIP-Math (MAVIS stage 1): a dual encoder on diagrams and their captions; negatives are the
    whole global batch."""

    def objective(m):
        out = m(batch["images"], batch["tokens"], batch["attention_mask"])
        # The encoder reports exp(scale); the losses take its log (they clamp the scale at 100).
        outputs = {"image_embeds": out["image_embeds"], "text_embeds": out["text_embeds"],
                   "logit_scale": jax.numpy.log(out["logit_scale"])}
        if out.get("logit_bias") is not None:
            outputs["logit_bias"] = out["logit_bias"]
        return loss_fn(outputs, batch)

    return _update(model, optimizer, objective, trainable)


@registry.register("step", "pair")
def pair_step(model, optimizer, batch, *, loss_fn, trainable, reference=None, logits_chunk: int = 0):
    """Math-PUMA stage 2: the same model on the text-rich (strong) and vision-rich (weak) member of
    each pair; the strong pass is a fixed target (no gradient flows into it)."""
    chunk = _chunk(logits_chunk)

    def objective(m):
        outputs = {**member_outputs(m, batch, "strong_", chunk, constant=True),
                   **member_outputs(m, batch, "weak_", chunk)}
        return loss_fn(outputs, batch)

    return _update(model, optimizer, objective, trainable)


@registry.register("step", "preference")
def preference_step(model, optimizer, batch, *, loss_fn, trainable, reference=None,
                    logits_chunk: int = 0):
    """DPO (MAVIS stage 4): sequence log-probs of the chosen and rejected answers under the policy and
    under the frozen reference model."""
    if reference is None:
        raise ValueError("the preference step needs a reference model")
    chunk = _chunk(logits_chunk)

    def logps(m, side):
        prefix = f"{side}_"
        targets, mask = batch[prefix + "targets"], batch[prefix + "loss_mask"]
        if chunk:
            return chunked_sequence_logps(hidden_states(m, batch, prefix), m.unembed, targets, mask,
                                          chunk)
        return sequence_logps(forward(m, batch, prefix), targets, mask)

    fixed = {f"reference_{side}_logps": jax.lax.stop_gradient(logps(reference, side))
             for side in ("chosen", "rejected")}

    def objective(m):
        outputs = {f"policy_{side}_logps": logps(m, side) for side in ("chosen", "rejected")}
        return loss_fn({**outputs, **fixed}, batch)

    return _update(model, optimizer, objective, trainable)


preference_step.needs_reference = lambda config: True

GRPO_REFERENCES = ("none", "copy", "lora_disabled")


@registry.register("step", "grpo")
def grpo_step(model, optimizer, batch, *, loss_fn, trainable, reference=None, updates: int = 1,
              temperature: float = 1.0, reference_model: str = "none", logits_chunk: int = 0):
    """GRPO's policy update on one rollout batch (:mod:`mathvlm.train.rollout` makes it: prompt +
    sampled completion as ``tokens``, ``targets`` / ``loss_mask`` on the completion, the sampler's
    ``old_logps``, the ``rewards``). ``updates`` (μ) optimizer updates on the whole batch, each
    scoring ``logits / temperature`` as the sampler drew from them; metrics are their mean.

    ``reference_model``: ``"none"`` (no KL term), ``"copy"`` (the frozen model as the stage started,
    ``reference``), or ``"lora_disabled"`` (this model with its LoRA adapters switched off: the base
    weights are the reference, no second copy). Log-probs of the reference are computed here, inside
    ``lora.disabled()`` for ``"lora_disabled"``, chunked like the policy's with ``logits_chunk``."""
    if reference_model not in GRPO_REFERENCES:
        raise ValueError(f"train.step_options.reference_model={reference_model!r}; one of {GRPO_REFERENCES}")
    chunk = _chunk(logits_chunk)

    def logps(m):
        if chunk:
            return chunked_token_logps(hidden_states(m, batch), m.unembed, batch["targets"], chunk,
                                       temperature)
        return token_logps(forward(m, batch), batch["targets"], temperature)

    fixed = {}
    if reference_model == "copy":
        if reference is None:
            raise ValueError("the grpo step with reference_model='copy' needs a reference model")
        fixed["reference_logps"] = jax.lax.stop_gradient(logps(reference))
    elif reference_model == "lora_disabled":
        from mathvlm.models import lora

        with lora.disabled():
            fixed["reference_logps"] = jax.lax.stop_gradient(logps(model))
    runs = [_update(model, optimizer, lambda m: loss_fn({"logps": logps(m), **fixed}, batch), trainable)
            for _ in range(int(updates))]
    return jax.tree.map(lambda *values: sum(values) / len(values), *runs)


grpo_step.needs_reference = lambda config: (
    config.train.get("step_options", {}).get("reference_model", "none") == "copy")
grpo_step.needs_rollouts = True


@registry.register("step", "classifier")
def classifier_step(model, optimizer, batch, *, loss_fn, trainable, reference=None):
    """Image classification (Math-LLaVA's complexity and clarity classifiers): ``model(images)`` gives
    ``logits`` [B, classes], scored against ``batch["label"]`` by the ``classification`` loss."""
    return _update(model, optimizer, lambda m: loss_fn({"logits": m(batch["images"])}, batch), trainable)
