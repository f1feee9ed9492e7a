"""Reusable transformer pieces with logical axis names on every parameter.

Parameters are named with :data:`mathvlm.sharding.PARAM_AXES` only; activations may be hinted with
:func:`mathvlm.sharding.constrain`. Nothing here knows about meshes.

* :class:`Dense` — ``y = x·W (+ b)`` contracting any number of trailing input axes, so attention
  projections keep ``(embed, heads, head_dim)`` kernels and the vision side can use 2-D ones.
* :class:`Embedding`, :class:`RMSNorm`, :func:`apply_rope`, :func:`attention_mask`,
  :class:`Attention` (GQA, optional QKV bias, optional KV cache, fused kernels by backend from
  :mod:`mathvlm.models.attention`), :class:`SwiGLU`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mathvlm.models.attention import dot_product_attention, grouped_attention, resolve
from mathvlm.sharding import constrain

Shape = tuple[int, ...]


def _shape(features: int | Sequence[int]) -> Shape:
    return (int(features),) if isinstance(features, int) else tuple(int(f) for f in features)


def fan_in_init(num_in_axes: int, num_out_axes: int, scale: float = 1.0):
    """LeCun-normal over a multi-axis kernel: the first ``num_in_axes`` axes are the fan-in."""
    return nnx.initializers.variance_scaling(
        scale, "fan_in", "truncated_normal",
        in_axis=tuple(range(num_in_axes)),
        out_axis=tuple(range(num_in_axes, num_in_axes + num_out_axes)))


def contract(x: jax.Array, kernel: jax.Array, num_in_axes: int, dtype, out_dtype=None,
             grad_dtype=None) -> jax.Array:
    """Contract the last ``num_in_axes`` axes of ``x`` with the first ones of ``kernel``.

    Inputs are cast to ``dtype`` and accumulated in float32 (on CPU and TPU bf16×bf16→f32 is both the
    fast and the accurate path), then cast to ``out_dtype`` (default ``dtype``).

    With a low-precision ``dtype`` the backward pass is written out (:func:`_contract_lowp`) so its two
    matmuls also take ``dtype`` operands: autodiff would feed them the float32 cotangent of the
    float32 accumulator, and XLA's CPU backend then runs them as float32 matmuls at about half the
    speed (bench notes). The cotangent of a ``dtype`` output is ``dtype``-valued anyway, so this is
    exact; for a wider ``out_dtype`` (float32 logits) it is rounded to ``grad_dtype`` (default: kept
    in float32, as autodiff does; ``dtype`` rounds it like PyTorch autocast)."""
    dtype = jnp.dtype(dtype)
    out_dtype = jnp.dtype(out_dtype or dtype)
    if dtype.itemsize >= 4 or not jnp.issubdtype(dtype, jnp.floating):
        dims = (tuple(range(x.ndim - num_in_axes, x.ndim)), tuple(range(num_in_axes)))
        y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (dims, ((), ())),
                                preferred_element_type=jnp.float32)
        return y.astype(out_dtype)
    grad_dtype = dtype if out_dtype == dtype else jnp.dtype(grad_dtype or jnp.float32)
    return _contract_lowp(x, kernel, num_in_axes, dtype, out_dtype, grad_dtype)


def _contract_dims(x_ndim: int, k_ndim: int, n: int):
    """dot_general dimension numbers of ``y = x·k``, ``dx = g·kᵀ`` and ``dk = xᵀ·g``."""
    batch = tuple(range(x_ndim - n))                        # x's leading (kept) axes
    fwd = ((tuple(range(x_ndim - n, x_ndim)), tuple(range(n))), ((), ()))
    g_out = tuple(range(x_ndim - n, x_ndim - n + k_ndim - n))  # g's output axes
    dx = ((g_out, tuple(range(n, k_ndim))), ((), ()))
    dk = ((batch, batch), ((), ()))
    return fwd, dx, dk


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _contract_lowp(x, kernel, n, dtype, out_dtype, grad_dtype):
    fwd, _, _ = _contract_dims(x.ndim, kernel.ndim, n)
    y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), fwd,
                            preferred_element_type=jnp.float32)
    return y.astype(out_dtype)


def _contract_lowp_fwd(x, kernel, n, dtype, out_dtype, grad_dtype):
    xc, kc = x.astype(dtype), kernel.astype(dtype)
    fwd, _, _ = _contract_dims(x.ndim, kernel.ndim, n)
    y = jax.lax.dot_general(xc, kc, fwd, preferred_element_type=jnp.float32).astype(out_dtype)
    # Zero-size dtype markers carry the primal dtypes to the backward pass.
    return y, (xc, kc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))


def _contract_lowp_bwd(n, dtype, out_dtype, grad_dtype, res, g):
    xc, kc, x_marker, k_marker = res
    _, dx_dims, dk_dims = _contract_dims(xc.ndim, kc.ndim, n)
    g = g.astype(grad_dtype)
    dx = jax.lax.dot_general(g, kc, dx_dims, preferred_element_type=jnp.float32)
    dk = jax.lax.dot_general(xc, g, dk_dims, preferred_element_type=jnp.float32)
    # The same roundings as autodiff through ``astype(dtype)``: both gradients pass through ``dtype``.
    return (dx.astype(dtype).astype(x_marker.dtype), dk.astype(dtype).astype(k_marker.dtype))


_contract_lowp.defvjp(_contract_lowp_fwd, _contract_lowp_bwd)


class Dense(nnx.Module):
    """Linear map with a multi-axis kernel of shape ``in_features + out_features``.

    ``axes`` names every kernel axis (e.g. ``("embed", "mlp")`` or ``("embed", "heads", "head_dim")``);
    the bias takes the names of the output axes. ``dtype`` is the compute dtype (None: the param dtype).
    ``grad_dtype``: the dtype the backward matmuls round a float32 ``out_dtype`` result's gradient to
    (see :func:`contract`; None keeps it float32).
    """

    def __init__(self, in_features: int | Sequence[int], out_features: int | Sequence[int], *,
                 axes: Sequence[str], use_bias: bool = False, dtype=None,
                 param_dtype=jnp.float32, kernel_init=None, grad_dtype=None, rngs: nnx.Rngs):
        self.in_shape = _shape(in_features)
        self.out_shape = _shape(out_features)
        axes = tuple(axes)
        if len(axes) != len(self.in_shape) + len(self.out_shape):
            raise ValueError(f"Dense: {len(axes)} axis names {axes} for a kernel of shape "
                             f"{self.in_shape + self.out_shape}")
        init = kernel_init or fan_in_init(len(self.in_shape), len(self.out_shape))
        self.kernel = nnx.Param(init(rngs.params(), self.in_shape + self.out_shape, param_dtype),
                                out_sharding=axes)
        self.bias = (nnx.Param(jnp.zeros(self.out_shape, param_dtype),
                               out_sharding=axes[len(self.in_shape):]) if use_bias else None)
        self.dtype = dtype
        self.grad_dtype = grad_dtype

    def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
        """``out_dtype`` overrides the result dtype (float32 logits from a bf16 model)."""
        dtype = self.dtype or self.kernel.dtype
        y = contract(x, self.kernel[...], len(self.in_shape), dtype, out_dtype,
                     getattr(self, "grad_dtype", None))
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class Embedding(nnx.Module):
    """Token embedding table ``(vocab, embed)``; :meth:`attend` gives tied output logits."""

    def __init__(self, num_embeddings: int, features: int, *, dtype=None, param_dtype=jnp.float32,
                 init_std: float = 0.02, rngs: nnx.Rngs):
        table = nnx.initializers.normal(init_std)(rngs.params(), (num_embeddings, features), param_dtype)
        self.embedding = nnx.Param(table, out_sharding=("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, tokens: jax.Array) -> jax.Array:
        dtype = self.dtype or self.embedding.dtype
        return jnp.take(self.embedding[...], tokens, axis=0).astype(dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """float32 logits ``x · tableᵀ``."""
        dtype = self.dtype or self.embedding.dtype
        return jnp.einsum("...d,vd->...v", x.astype(dtype), self.embedding[...].astype(dtype),
                          preferred_element_type=jnp.float32)


class RMSNorm(nnx.Module):
    """``x / rms(x) * scale``, computed in float32 like the reference LLaMA implementation."""

    def __init__(self, features: int, *, eps: float = 1e-6, dtype=None, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((features,), param_dtype), out_sharding=("norm",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # HF casts back to the input dtype before scaling; keep that order for bit-level parity.
        return self.scale[...].astype(dtype) * normed.astype(dtype)


# ------------------------------------------------------------------------------------------ rotary

ROPE_SCALING_KEYS = {   # rope_type → required parameters (transformers' ``rope_parameters``)
    "linear": ("factor",),
    "dynamic": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def check_rope_scaling(scaling) -> dict | None:
    """``scaling`` (a dict or ``((key, value), ...)``) as a dict, after checking its type and keys."""
    if scaling is None:
        return None
    scaling = dict(scaling)
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING_KEYS:
        raise NotImplementedError(f"rope scaling {kind!r} is not supported; supported: "
                                  f"{sorted(ROPE_SCALING_KEYS)} (or None for plain RoPE)")
    missing = [k for k in ROPE_SCALING_KEYS[kind] if k not in scaling]
    if missing:
        raise ValueError(f"rope scaling {kind!r} needs {missing}; got {scaling}")
    return scaling


def rope_inv_freq(head_dim: int, theta: float, scaling=None, positions=None) -> jax.Array:
    """Inverse frequencies ``ω_i = θ^(-2i/d)``, ``i < d/2``, with transformers' scaling rules:

    * ``linear`` (position interpolation): ``ω_i / factor``.
    * ``dynamic`` (NTK-aware): ``θ' = θ·(factor·L/L₀ − (factor − 1))^(d/(d−2))`` with
      ``L = max(max(positions) + 1, L₀)``, ``L₀ = original_max_position_embeddings``; so plain RoPE
      up to ``L₀``. Stateless: each call uses its own positions (transformers keeps the largest
      length seen so far in the module, which only differs across calls).
    * ``llama3``: wavelengths ``λ = 2π/ω`` longer than ``L₀/low_freq_factor`` are divided by
      ``factor``, shorter than ``L₀/high_freq_factor`` kept, in between interpolated with
      ``s = (L₀/λ − low)/(high − low)``: ``ω' = (1 − s)·ω/factor + s·ω``.

    Everything in float32 in the same order as transformers, for bit-level parity."""
    scaling = check_rope_scaling(scaling)
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    kind = scaling["rope_type"] if scaling else None
    if kind == "dynamic":
        factor, base_len = scaling["factor"], scaling["original_max_position_embeddings"]
        # The length is data-dependent: computed with jnp so this stays jit-compatible.
        length = jnp.maximum(jnp.max(positions) + 1, base_len).astype(jnp.float32)
        theta = theta * ((factor * length / base_len) - (factor - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (theta ** exponents)
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        base_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * jnp.pi / inv_freq
        scaled = jnp.where(wavelen > base_len / low, inv_freq / factor, inv_freq)
        smooth = (base_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < base_len / high) & ~(wavelen > base_len / low)
        inv_freq = jnp.where(medium, smoothed, scaled)
    return inv_freq


def rope_angles(positions: jax.Array, head_dim: int, theta: float,
                scaling=None) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape ``positions.shape + (head_dim,)`` (halves repeated: rotate-half layout).

    ``scaling``: None (plain RoPE) or transformers-style parameters, see :func:`rope_inv_freq`."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling, positions)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x [batch, length, heads, head_dim]`` by the angles of ``cos``/``sin [batch, length, head_dim]``.

    Uses the rotate-half convention of HF LLaMA/Mistral/Qwen2 checkpoints (not interleaved pairs)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


# ------------------------------------------------------------------------------------------- masks

def attention_mask(query_slots: jax.Array, key_valid: jax.Array,
                   sliding_window: int | None = None) -> jax.Array:
    """Boolean ``[batch, q_len, k_len]`` mask: key ``j`` is visible from a query in slot ``i`` when it
    holds a real token (``key_valid[b, j]``), is not in the future (``j <= i``), and, with a sliding
    window, is less than ``sliding_window`` slots back.

    ``query_slots [batch or 1, q_len]`` are the sequence (or cache) slots of the queries; keys sit in
    slots ``0..k_len-1``. Without a cache, ``query_slots = arange(length)``: a causal + padding mask.
    ``key_valid`` may also be per query, ``[batch, q_len, k_len]`` (see :func:`segment_key_valid`), so
    packed rows reach every layer without another argument.
    """
    key_slots = jnp.arange(key_valid.shape[-1])
    q = query_slots[..., :, None]
    valid = key_valid.astype(bool)
    visible = (key_slots[None, None, :] <= q) & (valid if valid.ndim == 3 else valid[:, None, :])
    if sliding_window is not None:
        visible &= q - key_slots[None, None, :] < sliding_window
    return visible


def segment_key_valid(segment_ids: jax.Array) -> jax.Array:
    """Per-query key validity ``[batch, length, length]`` of packed rows: a query sees only real keys
    (segment id > 0) of its own segment, so packed examples never attend to each other."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return same & (segment_ids > 0)[:, None, :]


def positions_in_segments(segment_ids: jax.Array) -> jax.Array:
    """Positions that restart at 0 at the first token of every segment of a packed row."""
    idx = jnp.arange(segment_ids.shape[-1], dtype=jnp.int32)
    prev = jnp.pad(segment_ids[..., :-1], [(0, 0)] * (segment_ids.ndim - 1) + [(1, 0)],
                   constant_values=-1)
    starts = jax.lax.cummax(jnp.where(segment_ids != prev, idx, 0), axis=segment_ids.ndim - 1)
    return idx - starts


def positions_from_mask(mask: jax.Array, start: jax.Array | int = 0) -> jax.Array:
    """Position ids that skip padding: ``start`` + the number of real tokens before; pads get a dummy."""
    mask = mask.astype(jnp.int32)
    return jnp.maximum(jnp.asarray(start)[..., None] + jnp.cumsum(mask, axis=-1) - 1, 0)


# --------------------------------------------------------------------------------------- attention

class Attention(nnx.Module):
    """Grouped-query self-attention with rotary positions.

    Kernels: q ``(embed, heads, head_dim)``, k/v ``(embed, kv_heads, head_dim)``, o ``(heads, head_dim,
    embed)``. With ``kv_cache=(k, v)``, every layer's cache ``[layers, batch, kv_heads, cache_len,
    head_dim]`` (see :func:`cache_write`), the new keys and values are written at slot ``cache_index`` of
    layer ``layer`` and attention runs over that layer's whole cache.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 qkv_bias: bool = False, o_bias: bool = False, rope_theta: float = 10000.0,
                 rope_scaling=None,
                 sliding_window: int | None = None, attention_impl: str = "auto", dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads do not divide into {num_kv_heads} kv heads")
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.q_proj = Dense(hidden_size, (num_heads, head_dim), axes=("embed", "heads", "head_dim"),
                            use_bias=qkv_bias, **kw)
        self.k_proj = Dense(hidden_size, (num_kv_heads, head_dim),
                            axes=("embed", "kv_heads", "head_dim"), use_bias=qkv_bias, **kw)
        self.v_proj = Dense(hidden_size, (num_kv_heads, head_dim),
                            axes=("embed", "kv_heads", "head_dim"), use_bias=qkv_bias, **kw)
        self.o_proj = Dense((num_heads, head_dim), hidden_size, axes=("heads", "head_dim", "embed"),
                            use_bias=o_bias, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_theta = rope_theta
        # Kept as a hashable tuple of items: module attributes are static graph data.
        scaling = check_rope_scaling(rope_scaling)
        self.rope_scaling = None if scaling is None else tuple(sorted(scaling.items()))
        self.sliding_window = sliding_window
        resolve(attention_impl)  # fail at build time on an unknown name
        self.attention_impl = attention_impl

    def __call__(self, x, *, positions, key_valid, query_slots, kv_cache=None, cache_index=None,
                 layer=0):
        """``x [batch, length, embed]`` → (out, new ``(k, v)`` cache or None).

        ``key_valid [batch, k_len]``: boolean, the real tokens among the keys (the cache slots when
        cached); or integer, the segment ids of packed rows (0 = padding, see
        :func:`segment_key_valid`). Without a cache, a fused implementation (``attention_impl``, see
        :mod:`mathvlm.models.attention`) may run instead of the einsum."""
        cos, sin = rope_angles(positions, self.head_dim, self.rope_theta, self.rope_scaling)
        q = apply_rope(self.q_proj(x), cos, sin)
        k = apply_rope(self.k_proj(x), cos, sin)
        v = self.v_proj(x)
        q = constrain(q, ("batch", "length", "act_heads", None))
        packed = jnp.issubdtype(key_valid.dtype, jnp.integer)
        impl = resolve(self.attention_impl)
        if kv_cache is None and impl != "xla":
            out = dot_product_attention(q, k, v, impl=impl, causal=True,
                                        segments=key_valid.astype(jnp.int32),
                                        sliding_window=self.sliding_window)
            return self.o_proj(out), None
        mask = attention_mask(query_slots, segment_key_valid(key_valid) if packed else key_valid,
                              self.sliding_window)
        if kv_cache is None:
            out = grouped_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
            return self.o_proj(out), None
        new_cache = tuple(cache_write(c, x, layer, cache_index) for c, x in zip(kv_cache, (k, v)))
        # float32 keys/values (exact): XLA's CPU backend upcasts these batched dots anyway, and some
        # bf16 x bf16 -> f32 ones it leaves alone fail at run time ("Unsupported element type for
        # DotThunk"). grouped_attention still rounds the probabilities to q's dtype, like HF.
        k, v = (cache_read(c, layer, q.dtype).astype(jnp.float32) for c in new_cache)
        out = grouped_attention(q, k, v, mask, kv_heads_first=True)
        return self.o_proj(out), new_cache


# ---------------------------------------------------------------------------------------- KV cache
# One buffer per k/v for all layers, ``[layers, batch, kv_heads, length, head_dim]``: a layer's keys are
# contiguous per (row, head), so attention reads them without a transpose, and each step writes one
# slot of the whole buffer with a dynamic_update_slice that XLA does in place. (Slicing a layer out,
# updating it and writing it back with ``.at[i].set`` copied the layer, about 10x slower at batch 8.)

def cache_storage_dtype(dtype) -> jnp.dtype:
    """The dtype a KV cache of ``dtype`` values is stored in: 16-bit floats as their raw bits
    (uint16). XLA's CPU backend computes a bf16/f16 dynamic_update_slice in float32, i.e. it converts
    and rewrites the whole cache buffer at every write; on integers the update stays in place."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return jnp.dtype(f"uint{8 * dtype.itemsize}")
    return dtype


def cache_write(cache: jax.Array, new: jax.Array, layer, index) -> jax.Array:
    """``cache [layers, batch, kv_heads, length, head_dim]`` with ``new [batch, n, kv_heads, head_dim]``
    written at ``cache[layer, :, :, index:index + n]`` (as raw bits if the cache stores bits)."""
    new = jnp.swapaxes(new, 1, 2)[None]
    if jnp.issubdtype(cache.dtype, jnp.unsignedinteger):
        new = jax.lax.bitcast_convert_type(new, cache.dtype)
    else:
        new = new.astype(cache.dtype)
    zero = jnp.zeros((), jnp.int32)
    start = (jnp.asarray(layer, jnp.int32), zero, zero, jnp.asarray(index, jnp.int32), zero)
    return jax.lax.dynamic_update_slice(cache, new, start)


def cache_read(cache: jax.Array, layer, dtype) -> jax.Array:
    """Layer ``layer`` of the cache, ``[batch, kv_heads, length, head_dim]`` in ``dtype`` (bits are
    read as ``dtype``, the dtype they were written from)."""
    x = cache[layer]
    if jnp.issubdtype(x.dtype, jnp.unsignedinteger):
        return jax.lax.bitcast_convert_type(x, dtype)
    return x.astype(dtype)


class SwiGLU(nnx.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.gate_proj = Dense(hidden_size, intermediate_size, axes=("embed", "mlp"), **kw)
        self.up_proj = Dense(hidden_size, intermediate_size, axes=("embed", "mlp"), **kw)
        self.down_proj = Dense(intermediate_size, hidden_size, axes=("mlp", "embed"), **kw)

    def __call__(self, x):
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        h = constrain(h, ("batch", "length", "act_mlp"))
        return self.down_proj(h)
