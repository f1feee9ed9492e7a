"""LoRA adapters on :class:`~mathvlm.models.layers.Dense` layers, and exact merging.

``apply_lora(model, rank=128, alpha=256, targets=("q_proj", "k_proj", "v_proj", "o_proj"), rngs=...)``
replaces every matching Dense with a :class:`LoRADense`: ``y = base(x) + (alpha/rank)·(x·A)·B`` with
``B = 0`` at init, so the model's outputs are unchanged until training moves B.

The adapter matrices are :class:`flax.nnx.LoRAParam` (a ``Param`` subclass) stored as ``lora_a`` /
``lora_b``: train only them with ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)``. They carry the
logical names of the kernel axes they replace plus ``"lora"`` for the rank. Layers stacked by
``scan_layers`` get stacked adapters (leading ``"layers"`` axis).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mathvlm.models.layers import Dense

LoRAParam = nnx.LoRAParam
_DISABLED = contextvars.ContextVar("lora_disabled", default=False)


@contextlib.contextmanager
def disabled():
    """Inside, every :class:`LoRADense` computes its base layer alone: the model as it was before its
    adapters, e.g. the frozen reference of an RL or preference step without a second copy of the
    weights. Read when the call is traced, so it selects the program a ``jit`` compiles."""
    token = _DISABLED.set(True)
    try:
        yield
    finally:
        _DISABLED.reset(token)


class LoRADense(nnx.Module):
    """A frozen-able ``base`` Dense plus a rank-``rank`` update scaled by ``alpha / rank``."""

    def __init__(self, base: Dense, *, rank: int, alpha: float, rngs: nnx.Rngs):
        self.base = base
        n_in, n_out = len(base.in_shape), len(base.out_shape)
        names = base.kernel.get_metadata().get("out_sharding") or (None,) * base.kernel.ndim
        # Scanned layers: the kernel has extra leading (stacked) axes the adapters must share.
        lead = base.kernel.ndim - n_in - n_out
        lead_shape, lead_names = base.kernel.shape[:lead], tuple(names[:lead])
        in_names, out_names = tuple(names[lead:lead + n_in]), tuple(names[lead + n_in:])
        dtype = base.kernel.dtype
        # Same fan-in init as the base kernel (flax/peft use a uniform Kaiming variant; any
        # non-zero A works since B starts at zero).
        a_init = nnx.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=tuple(range(lead, lead + n_in)),
            out_axis=lead + n_in, batch_axis=tuple(range(lead)))
        a = a_init(rngs.params(), lead_shape + base.in_shape + (rank,), dtype)
        self.lora_a = LoRAParam(a, out_sharding=lead_names + in_names + ("lora",))
        self.lora_b = LoRAParam(jnp.zeros(lead_shape + (rank,) + base.out_shape, dtype),
                                out_sharding=lead_names + ("lora",) + out_names)
        self.scale = alpha / rank

    @property
    def in_shape(self):
        return self.base.in_shape

    @property
    def out_shape(self):
        return self.base.out_shape

    def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
        y = self.base(x, out_dtype=out_dtype)
        if _DISABLED.get():
            return y
        dtype = self.base.dtype or self.base.kernel.dtype
        n_in = len(self.base.in_shape)
        dims = ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ()))
        down = jax.lax.dot_general(x.astype(dtype), self.lora_a[...].astype(dtype), dims,
                                   preferred_element_type=jnp.float32)
        up = jnp.tensordot(down, self.lora_b[...].astype(jnp.float32), axes=1)
        return y + (self.scale * up).astype(y.dtype)

    def merged_kernel(self) -> jax.Array:
        """``W + scale·A·B`` (per stacked layer), in the kernel's dtype."""
        kernel = self.base.kernel[...]
        lead = kernel.ndim - len(self.base.in_shape) - len(self.base.out_shape)
        a, b = self.lora_a[...].astype(jnp.float32), self.lora_b[...].astype(jnp.float32)
        # Batch over stacked layer axes, contract the rank axis.
        delta = jax.lax.dot_general(a, b, (((a.ndim - 1,), (lead,)),
                                           (tuple(range(lead)), tuple(range(lead)))))
        return (kernel.astype(jnp.float32) + self.scale * delta).astype(kernel.dtype)


def _dense_layers(model, cls) -> list[tuple[tuple, nnx.Module]]:
    return [(path, m) for path, m in nnx.iter_modules(model) if isinstance(m, cls)]


def _set_child(model, path: tuple, child) -> None:
    parent = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = child
    else:
        setattr(parent, path[-1], child)


def apply_lora(model, *, rank: int, alpha: float, targets: Sequence[str], rngs: nnx.Rngs):
    """Wrap every Dense whose path (``"layers/3/attn/q_proj"``) matches one of the ``targets`` regular
    expressions (``re.search``) in a :class:`LoRADense`. Returns the model (changed in place)."""
    patterns = [re.compile(t) for t in targets]
    matched = []
    for path, dense in _dense_layers(model, Dense):
        name = "/".join(map(str, path))
        if path and path[-1] != "base" and any(p.search(name) for p in patterns):
            matched.append((path, dense))
    if not matched:
        raise ValueError(f"LoRA targets {list(targets)} match no Dense layer")
    for path, dense in matched:
        _set_child(model, path, LoRADense(dense, rank=rank, alpha=alpha, rngs=rngs))
    return model


def merge_lora(model):
    """Fold every adapter into its base kernel and put the plain Dense back (in place). The merged
    model has exactly the parameter layout of a model that never had LoRA."""
    for path, layer in _dense_layers(model, LoRADense):
        layer.base.kernel[...] = layer.merged_kernel()
        _set_child(model, path, layer.base)
    return model
