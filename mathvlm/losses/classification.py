"""Image classification: softmax cross-entropy over a fixed set of classes (Math-LLaVA's complexity and
clarity classifiers: a ViT with a new linear head trained with CE)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mathvlm import registry
from mathvlm.losses.common import example_validity, masked_mean, require


def classification_loss(logits, labels, valid=None, *, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy and top-1 accuracy of ``logits`` [B, C] against ``labels`` [B] int.

    With ``z_i`` the logits of row i, ``y_i`` its label, ``ε = label_smoothing`` and ``v_i`` ∈ {0, 1}
    the row's validity (blanked rows count 0)::

        q_ic = (1 − ε)·[c = y_i] + ε / C
        CE_i = logsumexp_c(z_ic) − Σ_c q_ic z_ic
        L    = Σ_i v_i CE_i / Σ_i v_i
        acc  = Σ_i v_i [argmax_c z_ic = y_i] / Σ_i v_i

    Both are 0 when no row is valid. Returns ``(L, acc)``; statistics in float32.
    """
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    labels = labels.astype(jnp.int32).reshape(logits.shape[0])
    if valid is None:
        valid = jnp.ones(labels.shape, jnp.float32)
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
    per_example = jax.nn.logsumexp(logits, axis=-1) - jnp.sum(targets * logits, axis=-1)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return masked_mean(per_example, valid), masked_mean(correct, valid)


@registry.register("loss", "classification")
def classification(outputs: dict, batch: dict, *, label_key: str = "label", label_smoothing: float = 0.0):
    """Registered term: ``outputs["logits"]`` [B, C] against ``batch[label_key]`` [B] (default
    ``label``); rows with ``skip_reason != 0`` are left out. Metrics: ``loss``, ``accuracy``."""
    (logits,) = require(outputs, ["logits"], "loss 'classification' outputs")
    (labels,) = require(batch, [label_key], "loss 'classification' batch")
    if logits.ndim != 2:
        raise ValueError(f"loss 'classification' wants logits [batch, classes], got shape {logits.shape}; "
                         "use the 'classifier' step with a classifier model (e.g. vit_classifier)")
    valid = example_validity(batch, logits.shape[0])
    loss, accuracy = classification_loss(logits, labels, valid, label_smoothing=label_smoothing)
    return loss, {"loss": loss, "accuracy": accuracy}
