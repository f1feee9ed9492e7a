"""Softmax attention, one function with an implementation per backend and the same result.

``dot_product_attention(q, k, v, impl=..., causal=..., segments=..., sliding_window=...)`` with
``q [batch, q_len, heads, head_dim]``, ``k, v [batch, k_len, kv_heads, head_dim]`` (grouped-query:
``heads`` a multiple of ``kv_heads``):

* ``xla``    — :func:`grouped_attention`: scores ``[b, kv_heads, group, q_len, k_len]`` in float32. Runs
  everywhere, takes any boolean mask, and is the only path for decoding with a KV cache.
* ``cudnn``  — :func:`jax.nn.dot_product_attention`: cuDNN's fused kernel on GPU (its XLA
  implementation on other backends, which is how it is tested here).
* ``splash`` — the Pallas splash-attention kernel for TPU: queries and keys in blocks with an online
  softmax, never the ``[q_len, k_len]`` scores, and blocks the mask rules out are skipped (half of them
  when causal). On another backend it runs in Pallas' interpret mode (slow; for tests).
* ``auto``   — splash on TPU, cudnn on GPU, xla on CPU: the platform of the active mesh (``jax.set_mesh``,
  so an ahead-of-time compile for TPU on a CPU host picks splash), else the default backend.

The fused paths take the mask as structure, not as an array: ``causal``, ``sliding_window`` (a query sees
the ``sliding_window`` most recent keys, itself included) and ``segments [batch, length]``: a query sees
only keys of its own segment (packed rows number their examples 1, 2, ...; padding is 0). Padding
queries therefore attend to padding keys instead of nothing; every real position gets the same result
as the ``xla`` path's padding mask, and padding positions are never read by a real one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mathvlm.sharding import activation_spec

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
# Splash works on blocks of 128 positions (the TPU lane width): sequences are padded up to a multiple.
_SPLASH_ALIGN = 128
_SPLASH_BLOCKS = (512, 256, 128)


def platform() -> str:
    """The platform model code is traced for: the active mesh's devices, else the default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is not None and not mesh.empty:
        device = getattr(mesh, "abstract_device", None)
        if device is not None and getattr(device, "platform", None):
            return device.platform
    return jax.default_backend()


def resolve(impl: str) -> str:
    """``impl`` with ``auto`` replaced by the platform's fused path (see module doc)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {impl!r}; choose one of {IMPLEMENTATIONS}")
    if impl != "auto":
        return impl
    return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn", "rocm": "cudnn"}.get(platform(), "xla")


def structural_mask(q_len: int, k_len: int, *, causal: bool, segments=None,
                    sliding_window: int | None = None) -> jax.Array:
    """The boolean ``[batch or 1, q_len, k_len]`` mask the fused paths apply (module doc)."""
    q = jnp.arange(q_len)[:, None]
    key = jnp.arange(k_len)[None, :]
    visible = jnp.ones((q_len, k_len), bool)
    if causal:
        visible &= key <= q
    if sliding_window is not None:
        visible &= q - key < sliding_window
    visible = visible[None]
    if segments is not None:
        visible = visible & (segments[:, :, None] == segments[:, None, :])
    return visible


def dot_product_attention(q, k, v, *, impl: str = "xla", causal: bool = False, segments=None,
                          sliding_window: int | None = None, mask=None):
    """Attention of ``q`` over ``k, v`` (module doc) → ``[batch, q_len, heads, head_dim]`` in q's dtype.

    ``mask`` (``[batch, q_len, k_len]`` bool) is for the ``xla`` path only and replaces the structural
    mask there; the fused paths need ``causal`` / ``segments`` / ``sliding_window``."""
    impl = resolve(impl)
    if impl == "xla":
        if mask is None:
            mask = structural_mask(q.shape[1], k.shape[1], causal=causal, segments=segments,
                                   sliding_window=sliding_window)
            mask = jnp.broadcast_to(mask, (q.shape[0],) + mask.shape[1:])
        return grouped_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"{impl} attention is self-attention: q_len {q.shape[1]} != k_len {k.shape[1]}")
    if segments is not None:
        segments = jnp.asarray(segments, jnp.int32)
    if impl == "cudnn":
        return _cudnn(q, k.astype(q.dtype), v.astype(q.dtype), causal, segments, sliding_window)
    return _sharded_splash(q, k.astype(q.dtype), v.astype(q.dtype), causal, segments, sliding_window)


def grouped_attention(q, k, v, mask, *, kv_heads_first: bool = False):
    """Softmax attention of ``q [b, lq, heads, d]`` over ``k, v [b, lk, kv_heads, d]`` (or
    ``[b, kv_heads, lk, d]`` with ``kv_heads_first``, the KV-cache layout) under ``mask [b, lq, lk]``.

    Query heads are grouped onto their kv head instead of repeating k/v. Scores and softmax run in
    float32; the probabilities and the result are in q's dtype (k and v may be wider). Masked scores
    use a large finite negative so a query with no visible key (a padding slot) gives a harmless
    uniform average instead of NaN."""
    b, lq, heads, d = q.shape
    kv_heads = k.shape[1 if kv_heads_first else 2]
    kv = "bhkd" if kv_heads_first else "bkhd"
    q = q.reshape(b, lq, kv_heads, heads // kv_heads, d)
    scores = jnp.einsum(f"bqhgd,{kv}->bhgqk", q, k, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum(f"bhgqk,{kv}->bqhgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, lq, heads, d).astype(q.dtype)


# ------------------------------------------------------------------------------------------- cuDNN

def _cudnn(q, k, v, causal, segments, sliding_window):
    mask = None
    if segments is not None:
        mask = (segments[:, :, None] == segments[:, None, :])[:, None]   # [b, 1, lq, lk]
    window = None if sliding_window is None else (sliding_window - 1, 0)
    impl = "cudnn" if platform() in ("gpu", "cuda") else None
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, local_window_size=window,
                                        implementation=impl)


# ------------------------------------------------------------------------------------------ splash

def _sharded_splash(q, k, v, causal, segments, sliding_window):
    """Splash over the active mesh: a Pallas kernel is opaque to XLA's partitioner, so it runs under
    ``shard_map``, rows split like the batch and heads like ``act_heads`` when the kv heads split the
    same way (else heads stay whole on each device). Without a mesh the kernel is called directly."""
    interpret = platform() != "tpu"
    spec = activation_spec(q.shape, ("batch", None, "act_heads", None))
    run = functools.partial(_splash, causal=causal, sliding_window=sliding_window, interpret=interpret)
    if spec is None:
        return run(q, k, v, segments)
    batch_axes, head_axes = spec[0], spec[2]
    if head_axes is not None:
        mesh = jax.sharding.get_abstract_mesh()
        names = head_axes if isinstance(head_axes, tuple) else (head_axes,)
        shards = 1
        for name in names:
            shards *= mesh.shape[name]
        if k.shape[2] % shards:
            head_axes = None
    P = jax.sharding.PartitionSpec
    qkv_spec = P(batch_axes, None, head_axes, None)
    seg_spec = P(batch_axes, None)
    if segments is None:
        return jax.shard_map(lambda q, k, v: run(q, k, v, None), in_specs=(qkv_spec,) * 3,
                             out_specs=qkv_spec, check_vma=False)(q, k, v)
    return jax.shard_map(run, in_specs=(qkv_spec,) * 3 + (seg_spec,), out_specs=qkv_spec,
                         check_vma=False)(q, k, v, segments)


def _splash_kernel(length: int, group: int, causal: bool, window: int | None, block: int,
                   interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

    shape = (length, length)
    if window is not None and window < length:
        # Key j is visible from query i when i − (window − 1) ≤ j ≤ i.
        one = mask_lib.LocalMask(shape, window_size=(window - 1, 0), offset=0)
    elif causal:
        one = mask_lib.CausalMask(shape)
    else:
        one = mask_lib.FullMask(shape)
    sizes = kernel_lib.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block, block_kv_dkv=block,
        block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    # One kv head per call (MQA form) serves a group of query heads: GQA without repeating k/v. Built
    # per trace (not cached): the kernel holds its block-mask tables as arrays of the trace.
    return kernel_lib.make_splash_mqa_single_device(
        mask_lib.MultiHeadMask([one] * group), block_sizes=sizes, interpret=interpret)


def _splash(q, k, v, segments, *, causal, sliding_window, interpret):
    """Splash on local arrays: pad the length to a multiple of 128 (padding is segment 0, the
    module's padding convention), scale q, and run the kernel per row and kv head."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib

    b, length, heads, d = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    padded = -(-length // _SPLASH_ALIGN) * _SPLASH_ALIGN
    if padded != length:
        if segments is None:
            segments = jnp.ones((b, length), jnp.int32)
        widths = ((0, 0), (0, padded - length), (0, 0), (0, 0))
        q, k, v = (jnp.pad(x, widths) for x in (q, k, v))
        segments = jnp.pad(segments, ((0, 0), (0, padded - length)))
    block = next(n for n in _SPLASH_BLOCKS if padded % n == 0)
    kernel = _splash_kernel(padded, group, causal, sliding_window, block, interpret)
    # [b, L, kv_heads·group, d] → [b, kv_heads, group, L, d]; k, v → [b, kv_heads, L, d].
    qg = (q * jnp.asarray(d ** -0.5, q.dtype)).reshape(b, padded, kv_heads, group, d)
    qg = qg.transpose(0, 2, 3, 1, 4)
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def one_row(q_row, k_row, v_row, seg_row):
        ids = None if seg_row is None else kernel_lib.SegmentIds(q=seg_row, kv=seg_row)
        return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=ids))(q_row, k_row, v_row)

    if segments is None:
        out = jax.vmap(lambda a, b_, c: one_row(a, b_, c, None))(qg, kt, vt)
    else:
        out = jax.vmap(one_row)(qg, kt, vt, segments)
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, padded, heads, d)
    return out[:, :length].astype(q.dtype)
