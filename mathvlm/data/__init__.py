"""Input pipelines. Imports nothing from models, train or eval.

Batch contract — a flat dict of numpy arrays, one row per example (local rows per process; the
trainer assembles global arrays):

=================  ===============  ======  =====================================================
key                shape            dtype   meaning
=================  ===============  ======  =====================================================
``tokens``         [B, L]           int32   input token ids, right-padded with the pad id
``targets``        [B, L]           int32   next token of each position (``tokens`` shifted left)
``loss_mask``      [B, L]           float32 1 where ``targets`` is supervised (assistant answer)
``attention_mask`` [B, L]           int32   1 on real tokens, 0 on padding
=================  ===============  ======  =====================================================

Image, pair (``strong_*`` / ``weak_*``) and preference (``chosen_*`` / ``rejected_*``) batches extend this
table; each source documents the keys it adds.
"""

from mathvlm import engine  # noqa: F401  (registers source "engine")
from mathvlm.data import arithmetic, engine_labels, engine_rows, pipeline, tokenization  # noqa: F401  (registers sources)
