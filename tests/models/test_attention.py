"""The fused attention paths (cuDNN's jax.nn.dot_product_attention, Pallas splash in interpret mode)
give the einsum path's result at every real position, forward and backward, alone and sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathvlm import sharding
from mathvlm.models import attention


def _qkv(batch=2, length=40, heads=4, kv_heads=2, dim=16, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, length, heads, dim))
    k = jax.random.normal(keys[1], (batch, length, kv_heads, dim))
    v = jax.random.normal(keys[2], (batch, length, kv_heads, dim))
    return q, k, v


def _segments(batch, length):
    """Row 0: two packed examples then padding; row 1: left padding then one example."""
    seg = np.zeros((batch, length), np.int32)
    seg[0, :length // 3] = 1
    seg[0, length // 3:length - 5] = 2
    seg[1, 7:] = 1
    return jnp.asarray(seg)


def _xla_reference(q, k, v, causal, segments, window):
    """The einsum path with the mask written out the way the decoder builds it."""
    length = q.shape[1]
    qi, kj = np.arange(length)[:, None], np.arange(length)[None, :]
    mask = np.ones((length, length), bool)
    if causal:
        mask &= kj <= qi
    if window is not None:
        mask &= qi - kj < window
    mask = np.broadcast_to(mask, (q.shape[0], length, length))
    if segments is not None:
        seg = np.asarray(segments)
        mask = mask & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
    return attention.grouped_attention(q, k, v, jnp.asarray(mask))


CASES = [  # (length, causal, segments, window)
    (40, True, True, None),
    (130, True, True, None),     # two splash blocks of 128 after padding
    (40, True, False, 9),        # sliding window
    (50, False, False, None),    # image tower: no mask at all
    (128, True, False, None),
]


@pytest.mark.parametrize("impl", ["cudnn", "splash"])
@pytest.mark.parametrize("length,causal,with_segments,window", CASES)
def test_fused_path_equals_einsum(impl, length, causal, with_segments, window):
    q, k, v = _qkv(length=length)
    segments = _segments(2, length) if with_segments else None
    real = np.ones((2, length), bool) if segments is None else np.asarray(segments) > 0

    def loss(fn):
        def f(q, k, v):
            out = fn(q, k, v)
            weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
            return jnp.sum(jnp.where(real[:, :, None, None], out * weights, 0.0)), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    (ref_value, ref_out), ref_grads = loss(lambda q, k, v: _xla_reference(q, k, v, causal, segments,
                                                                          window))
    (value, out), grads = loss(lambda q, k, v: attention.dot_product_attention(
        q, k, v, impl=impl, causal=causal, segments=segments, sliding_window=window))
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref_out)[real], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(value, ref_value, rtol=2e-5, atol=2e-4)
    for got, want, name in zip(grads, ref_grads, "qkv"):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=f"d{name}")


def test_padding_queries_never_reach_real_positions():
    """A fused path may compute anything at padding positions: real positions must not depend on
    what sits in the padding (its keys, values or queries)."""
    q, k, v = _qkv(length=40)
    segments = _segments(2, 40)
    pad = np.asarray(segments) == 0
    noise = jax.random.normal(jax.random.key(9), q.shape) * 100
    for impl in ("cudnn", "splash"):
        clean = attention.dot_product_attention(q, k, v, impl=impl, causal=True, segments=segments)
        moved = [jnp.where(pad[:, :, None, None], x + noise[..., :x.shape[2], :], x) for x in (q, k, v)]
        dirty = attention.dot_product_attention(*moved, impl=impl, causal=True, segments=segments)
        np.testing.assert_allclose(np.asarray(dirty)[~pad], np.asarray(clean)[~pad], rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("rules,mesh_shape", [("fsdp", {"data": 2, "fsdp": 4, "tensor": 1}),
                                              ("fsdp_tp", {"data": 1, "fsdp": 4, "tensor": 2})])
def test_splash_under_a_mesh_equals_einsum(rules, mesh_shape):
    """On 8 devices splash runs under shard_map (rows split like the batch, kv-head groups like the
    heads under fsdp_tp); the result and gradients equal the unsharded einsum."""
    q, k, v = _qkv(batch=8, length=40, heads=4, kv_heads=2)
    seg = np.zeros((8, 40), np.int32)
    seg[:, :30] = 1
    seg[::2, 30:36] = 2
    segments = jnp.asarray(seg)
    mesh = sharding.make_mesh(mesh_shape)

    def f(q, k, v):
        out = attention.dot_product_attention(q, k, v, impl="splash", causal=True, segments=segments)
        return jnp.sum(jnp.where(segments[:, :, None, None] > 0, out * out, 0.0))

    want_value, want_grads = jax.value_and_grad(
        lambda q, k, v: jnp.sum(jnp.where(segments[:, :, None, None] > 0,
                                          _xla_reference(q, k, v, True, segments, None) ** 2, 0.0)),
        argnums=(0, 1, 2))(q, k, v)
    with jax.set_mesh(mesh), sharding.use_rules(rules):
        spec = sharding.batch_sharding(mesh, rules, 4)
        placed = [jax.device_put(x, spec) for x in (q, k, v)]
        value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(*placed)
        text = jax.jit(f).lower(*placed).as_text()
    assert "shard_map" in text or "sdy.manual_computation" in text or "custom_call" in text
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_auto_follows_the_platform_and_unknown_names_fail():
    assert attention.resolve("auto") == "xla"          # this host is CPU
    with jax.set_mesh(sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})):
        assert attention.platform() == "cpu"
        assert attention.resolve("auto") == "xla"
    assert attention.resolve("splash") == "splash"
    with pytest.raises(ValueError, match="splash"):
        attention.resolve("flash")


def _decoder(impl, **fields):
    from flax import nnx

    from mathvlm.models.decoder import decoder_lm

    return decoder_lm("tiny", rngs=nnx.Rngs(0), attention_impl=impl, **fields)


@pytest.mark.parametrize("impl", ["cudnn", "splash"])
@pytest.mark.parametrize("fields", [{}, {"scan_layers": True, "remat": "full"}, {"sliding_window": 6}])
def test_decoder_with_a_fused_path_equals_the_einsum(impl, fields):
    """The decoder on right-padded, left-padded and packed rows: same logits at every real position and
    the same gradients of a loss over real positions, with the fused path in every layer."""
    from flax import nnx

    tokens = jax.random.randint(jax.random.key(3), (3, 24), 1, 256)
    mask = np.ones((3, 24), np.int32)
    mask[0, 17:] = 0                   # right padding
    mask[1, :5] = 0                    # left padding
    segments = np.zeros((3, 24), np.int32)
    segments[2, :9], segments[2, 9:20] = 1, 2   # two packed examples, then padding

    def run(model):
        def loss(m):
            plain = m(tokens[:2], attention_mask=mask[:2])
            packed = m(tokens[2:], segment_ids=segments[2:])
            real = np.concatenate([mask[:2], (segments[2:] > 0).astype(np.int32)]) > 0
            logits = jnp.concatenate([plain, packed])
            return jnp.sum(jnp.where(real[..., None], jnp.sin(logits), 0.0)), (logits, real)
        (value, (logits, real)), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        return value, np.asarray(logits)[real], jax.tree.leaves(nnx.to_pure_dict(grads))

    want = run(_decoder("xla", **fields))
    got = run(_decoder(impl, **fields))
    np.testing.assert_allclose(got[1], want[1], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5)
    for a, b in zip(got[2], want[2]):
        # Summation order differs (blocks, online softmax): float32 noise scales with the leaf's size.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize("preset", ["tiny", "siglip-tiny"])
def test_vision_tower_with_splash_equals_the_einsum(preset):
    from flax import nnx

    from mathvlm.models.vit import vit

    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    outs = {}
    for impl in ("xla", "splash"):
        tower = vit(preset, rngs=nnx.Rngs(0), attention_impl=impl)
        h, pooled = tower(images)
        outs[impl] = (np.asarray(h), None if pooled is None else np.asarray(pooled),
                      np.asarray(tower.features(images, (-2, -1))))
    for got, want in zip(outs["splash"], outs["xla"]):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_an_unknown_attention_name_fails_when_the_model_is_configured():
    from mathvlm.models.decoder import DecoderConfig
    from mathvlm.models.vit import ViTConfig

    for make in (DecoderConfig, ViTConfig):
        with pytest.raises(ValueError, match="auto"):
            make(attention_impl="flash")
