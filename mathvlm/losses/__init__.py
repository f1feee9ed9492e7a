"""Losses: pure functions of arrays. Imports only jax, numpy, :mod:`mathvlm.registry` and the stdlib.

Every registered term is ``loss_fn(outputs: dict, batch: dict, **options) -> (scalar, metrics)``;
:func:`make_loss` sums weighted terms from ``config.loss.terms``. The array-level functions they are
built from (``clip_loss``, ``next_token_loss``, ``chunked_next_token_loss``, ``puma_kl_loss``,
``dpo_loss``, ``sequence_logps``, ``grpo_loss``, ...) are exported for direct use and tests.

Convention for sequences: **targets are already shifted** — ``logits[:, t]`` (computed from
``tokens[:, :t+1]``) is scored against ``targets[:, t]``, and ``loss_mask[:, t]`` flags that target as
supervised (the batch contract of :mod:`mathvlm.data`; :func:`shift_targets` builds it).

Keys each term reads (B batch, L length, V vocabulary, D width; ``batch["skip_reason"]`` [B], when
present, drops blanked rows from ``clip`` / ``siglip`` / ``dpo`` / ``grpo`` — sequence losses
already see all-zero masks for them):

==============  =====================================================  ==================================
term            outputs                                                batch
==============  =====================================================  ==================================
``clip``        ``image_embeds`` [B, D], ``text_embeds`` [B, D],        —
                ``logit_scale`` () = log scale (or option
                ``log_logit_scale``)
``siglip``      ``image_embeds``, ``text_embeds``, ``logit_scale`` ()   —
                (log), ``logit_bias`` ()
``next_token``  ``{prefix}logits`` [B, L, V]; or, with option           ``{prefix}targets`` [B, L] int32,
                ``chunk_size``, ``{prefix}hidden`` [B, L, D] and        ``{prefix}loss_mask`` [B, L]
                ``unembed_kernel`` [D, V]                               (option ``prefix``, default "")
``puma_kl``     ``strong_logits``, ``weak_logits`` [B, L, V]            ``strong_loss_mask``,
                (strong = text-rich, stop-gradient; weak =              ``weak_targets``,
                vision-rich)                                            ``weak_loss_mask`` [B, L]
``dpo``         ``{model}_{side}_logps`` [B] for model ∈ {policy,       (only with logits)
                reference}, side ∈ {chosen, rejected}; or               ``{side}_targets``,
                ``{model}_{side}_logits`` [B, L, V]                     ``{side}_loss_mask`` [B, L]
``grpo``        ``logps`` [B, L] (policy, per token); with β > 0        ``old_logps`` [B, L],
                also ``reference_logps`` [B, L]                         ``rewards`` [B] (groups of
                                                                        ``group_size`` contiguous),
                                                                        ``loss_mask`` [B, L]
==============  =====================================================  ==================================

Pair members use the data pipeline's flat prefixes (``strong_`` / ``weak_``, ``chosen_`` /
``rejected_``) on both the batch and the outputs. ``puma_kl`` truncates pairs whose answers differ
in token count to the shorter count and reports ``puma_kl/mismatched_pairs``.
"""

from mathvlm.losses import classification, contrastive, dpo, grpo, next_token, puma  # noqa: F401  (registers the terms)
from mathvlm.losses.composite import make_loss
from mathvlm.losses.contrastive import clip_loss, l2_normalize, retrieval_accuracy, siglip_loss
from mathvlm.losses.dpo import dpo_loss, sequence_logps
from mathvlm.losses.grpo import group_advantages, grpo_loss, token_logps
from mathvlm.losses.next_token import (chunked_next_token_loss, next_token_loss, reduce_over_tokens,
                                       shift_targets, token_statistics)
from mathvlm.losses.puma import answer_positions, kl_divergence, puma_kl_loss, zscore

__all__ = [
    "make_loss", "clip_loss", "siglip_loss", "l2_normalize", "retrieval_accuracy", "dpo_loss",
    "sequence_logps", "next_token_loss", "chunked_next_token_loss", "reduce_over_tokens",
    "shift_targets", "token_statistics", "answer_positions", "kl_divergence", "puma_kl_loss",
    "zscore", "token_logps", "group_advantages", "grpo_loss",
]
