"""Rematerialisation (``jax.checkpoint``) policies by name, shared by the decoder and the image tower.

A model config's ``remat`` field holds one of :data:`REMAT_POLICIES`; each transformer block is then
checkpointed with that policy (what its forward pass keeps for the backward pass; everything else is
recomputed there):

* ``none`` — no checkpointing: every intermediate is kept (fastest backward, most memory).
* ``full`` — nothing saved: the whole block is recomputed (least memory; was ``remat=True``).
* ``dots_saveable`` — every matmul output is kept (``jax.checkpoint_policies.dots_saveable``),
  element-wise work is recomputed.
* ``dots_with_no_batch_dims`` — the outputs of matmuls without batch dimensions (the weight
  projections: q/k/v/o, MLP) are kept, attention's batched score/value products are recomputed
  (``jax.checkpoint_policies.dots_with_no_batch_dims_saveable``).
* ``offload`` — as ``dots_with_no_batch_dims``, but the kept matmul outputs move to pinned host
  memory between the passes (``jax.checkpoint_policies.offload_dot_with_no_batch_dims("device",
  "pinned_host")``). Compiles for TPU (checked for a v5e:2x2 topology with libtpu 0.0.42.1: the saved
  residuals live in host memory space ``S(5)``). On CPU it also traces, compiles and runs, with the
  same numbers: jax lowers the device→host transfers to nothing there (a CPU's device memory *is*
  host memory), so it behaves as ``dots_with_no_batch_dims``; no error, no fallback message.

``True`` / ``False`` (configs and checkpoints of older runs) mean ``full`` / ``none``;
:func:`canonical_remat` turns any accepted spelling into the name, so configs stay hashable and
JSON round-trips give the same config.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

# name → () -> jax.checkpoint policy (None: save nothing). Built on use: the offload policy is a
# closure over memory kinds.
_POLICIES: dict[str, Callable[[], Any] | None] = {
    "none": None,
    "full": lambda: None,
    "dots_saveable": lambda: jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims": lambda: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "offload": lambda: jax.checkpoint_policies.offload_dot_with_no_batch_dims("device",
                                                                              "pinned_host"),
}
REMAT_POLICIES: tuple[str, ...] = tuple(_POLICIES)


def canonical_remat(value) -> str:
    """The policy name for a config's ``remat`` value: a name of :data:`REMAT_POLICIES`, or a bool
    (``True`` → ``"full"``, ``False`` → ``"none"``). Anything else raises ``ValueError`` listing the
    names."""
    if isinstance(value, bool):
        return "full" if value else "none"
    if isinstance(value, str) and value in _POLICIES:
        return value
    raise ValueError(f"unknown remat policy {value!r}; one of {', '.join(REMAT_POLICIES)} "
                     "(or True = full, False = none)")


def remat_policy(name) -> Callable[..., bool] | None:
    """The ``jax.checkpoint`` ``policy`` of a remat name (None for ``full``: save nothing). ``none``
    has no policy: there is no checkpoint at all (see :func:`checkpoint`)."""
    name = canonical_remat(name)
    if name == "none":
        raise ValueError("remat 'none' has no checkpoint policy: the function runs as it is")
    return _POLICIES[name]()


def checkpoint(fn: Callable, name, *, prevent_cse: bool = True) -> Callable:
    """``fn`` under ``jax.checkpoint`` with the named policy, or ``fn`` itself for ``none``. Inside
    ``jax.lax.scan`` pass ``prevent_cse=False`` (the loop already stops the common-subexpression
    elimination that would undo the recomputation)."""
    name = canonical_remat(name)
    if name == "none":
        return fn
    return jax.checkpoint(fn, policy=remat_policy(name), prevent_cse=prevent_cse)


@functools.cache
def _nnx_checkpoint(fn: Callable, name: str) -> Callable:
    return nnx.remat(fn, policy=remat_policy(name))


def nnx_checkpoint(fn: Callable, name) -> Callable:
    """``nnx.remat`` of ``fn`` (whose arguments may be NNX modules) with the named policy, or ``fn``
    for ``none``; one wrapper per (function, name), so repeated calls reuse it."""
    name = canonical_remat(name)
    return fn if name == "none" else _nnx_checkpoint(fn, name)
