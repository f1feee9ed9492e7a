"""Losses: pure functions of arrays. Imports only jax, numpy, :mod:`mathvlm.registry` and the stdlib.

Every registered term is ``loss_fn(outputs: dict, batch: dict, **options) -> (scalar, metrics)``;
:func:`make_loss` sums weighted terms from ``config.loss.terms``. The array-level functions they are
built from (``clip_loss``, ``next_token_loss``, ``chunked_next_token_loss``, ``puma_kl_loss``,
``dpo_loss``, ``sequence_logps``, ``grpo_loss``, ...) are exported for direct use and tests.

Convention for sequences: **targets are already shifted** — ``logits[:, t]`` (computed from
``tokens[:, :t+1]``) is scored against ``targets[:, t]``, and ``loss_mask[:, t]`` flags that target as
supervised (the batch contract of :mod:`mathvlm.data`; :func:`shift_targets` builds it).

Chunked logits: every function that reads logits [B, L, V] has a ``chunked_`` twin that reads the
final hidden states [B, L, D] and an unembedding ``unembed`` (a callable ``h [B, C, D] → float32
logits [B, C, V]``, e.g. a model's ``unembed``, or a kernel [D, V]) and computes the logits
``chunk_size`` positions at a time, never the whole [B, L, V], in the forward or the backward pass:
``chunked_token_statistics``, ``chunked_next_token_loss``, ``chunked_sequence_logps``,
``chunked_token_logps``, ``chunked_puma_kl_loss``. Each twin feeds the same per-position formula
through :func:`map_position_chunks` (the one chunking primitive) and shares the reduction, so the
results equal the full-logits ones. The train steps switch to them with
``train.logits_chunk = C``; the outputs then hold ``{prefix}hidden`` [B, L, D],
``{prefix}unembed`` and ``logits_chunk`` = C in place of ``{prefix}logits``.

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
``next_token``  ``{prefix}logits`` [B, L, V]; or ``{prefix}hidden``     ``{prefix}targets`` [B, L] int32,
                [B, L, D] with ``{prefix}unembed`` (callable or         ``{prefix}loss_mask`` [B, L]
                kernel [D, V]) and a chunk size (option                 (option ``prefix``, default "")
                ``chunk_size``, else ``logits_chunk``)
``puma_kl``     ``strong_logits``, ``weak_logits`` [B, L, V]            ``strong_loss_mask``,
                (strong = text-rich, stop-gradient; weak =              ``weak_targets``,
                vision-rich); or ``strong_hidden``, ``weak_hidden``     ``weak_loss_mask`` [B, L]
                [B, L, D], ``strong_unembed``, ``weak_unembed``,
                ``logits_chunk``
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
from mathvlm.losses.dpo import chunked_sequence_logps, dpo_loss, sequence_logps
from mathvlm.losses.grpo import chunked_token_logps, group_advantages, grpo_loss, token_logps
from mathvlm.losses.next_token import (as_unembed, chunked_next_token_loss, chunked_token_statistics,
                                       map_position_chunks, next_token_loss, reduce_over_tokens,
                                       shift_targets, token_statistics)
from mathvlm.losses.puma import (answer_positions, chunked_puma_kl_loss, kl_divergence,
                                 position_terms, puma_kl_loss, zscore)

__all__ = [
    "make_loss", "clip_loss", "siglip_loss", "l2_normalize", "retrieval_accuracy", "dpo_loss",
    "sequence_logps", "chunked_sequence_logps", "next_token_loss", "chunked_next_token_loss",
    "reduce_over_tokens", "shift_targets", "token_statistics", "chunked_token_statistics",
    "map_position_chunks", "as_unembed", "answer_positions", "kl_divergence", "puma_kl_loss",
    "chunked_puma_kl_loss", "position_terms", "zscore", "token_logps", "chunked_token_logps",
    "group_advantages", "grpo_loss",
]
