"""Chunked logits: every log-prob consumer fed final hidden states and an unembedding a chunk of
positions at a time equals the same consumer on the full logits (value, metrics, gradients into the
hidden states and the unembedding kernel), for chunk sizes that divide the length and that do not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathvlm import registry
from mathvlm.losses import (chunked_puma_kl_loss, chunked_sequence_logps, chunked_token_logps,
                            chunked_token_statistics, map_position_chunks, puma_kl_loss,
                            sequence_logps, token_logps, token_statistics)

B, D, V = 3, 6, 19
RTOL, ATOL = 1e-5, 1e-7


def close(actual, expected, what=""):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=RTOL, atol=ATOL,
                               err_msg=what)


def hidden_and_kernel(seed, length):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(B, length, D)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    return hidden, kernel


def answer_mask(length, starts, counts):
    mask = np.zeros((B, length), np.float32)
    for row, (start, count) in enumerate(zip(starts, counts)):
        mask[row, start:start + count] = 1.0
    return jnp.asarray(mask)


def test_map_position_chunks_joins_pytrees_and_cuts_the_padding():
    x = jnp.arange(2 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 3)
    y = jnp.arange(2 * 7).reshape(2, 7)
    calls = []

    def fn(a, b):
        calls.append(a.shape)
        return {"sum": a.sum(-1) + b, "twice": (2 * a, b)}

    for chunk in (1, 3, 7, 50):
        out = map_position_chunks(fn, (x, y), chunk)
        close(out["sum"], x.sum(-1) + y)
        close(out["twice"][0], 2 * x)
        np.testing.assert_array_equal(out["twice"][1], y)
        assert calls[-1] == (2, min(chunk, 7), 3)   # a chunk larger than L is cut to L
    with pytest.raises(ValueError, match="chunk_size"):
        map_position_chunks(fn, (x, y), 0)


@pytest.mark.parametrize("chunk", [2, 3, 8])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_statistics_kernel_and_callable(chunk, temperature):
    hidden, kernel = hidden_and_kernel(0, 8)
    targets = jnp.asarray(np.random.default_rng(1).integers(0, V, (B, 8)), jnp.int32)
    full = token_statistics(hidden @ kernel, targets, temperature)
    for unembed in (kernel, lambda h: h @ kernel):
        chunked = chunked_token_statistics(hidden, unembed, targets, chunk, temperature)
        for name, a, b in zip(("nll", "log_z", "correct"), chunked, full):
            assert a.shape == (B, 8)
            close(a, b, name)


@pytest.mark.parametrize("chunk", [4, 3])
def test_sequence_and_token_logps_value_and_gradients(chunk):
    length, temperature = 8, 0.7
    hidden, kernel = hidden_and_kernel(2, length)
    rng = np.random.default_rng(3)
    targets = jnp.asarray(rng.integers(0, V, (B, length)), jnp.int32)
    mask = answer_mask(length, (1, 3, 0), (5, 4, 8))
    weights = jnp.asarray(rng.normal(size=(B, length)), jnp.float32)

    def plain(h, k):
        logits = h @ k
        return (jnp.sum(sequence_logps(logits, targets, mask) ** 2)
                + jnp.sum(weights * token_logps(logits, targets, temperature)))

    def chunked(h, k):
        return (jnp.sum(chunked_sequence_logps(h, k, targets, mask, chunk) ** 2)
                + jnp.sum(weights * chunked_token_logps(h, k, targets, chunk, temperature)))

    v1, g1 = jax.jit(jax.value_and_grad(plain, (0, 1)))(hidden, kernel)
    v2, g2 = jax.jit(jax.value_and_grad(chunked, (0, 1)))(hidden, kernel)
    close(v2, v1)
    for name, a, b in zip(("hidden", "kernel"), g2, g1):
        assert np.abs(np.asarray(b)).max() > 0
        close(a, b, name)


def puma_pair(seed=0, strong_length=12, weak_length=10):
    """Members of different padded lengths; the third pair's answers differ in token count."""
    strong, kernel = hidden_and_kernel(seed, strong_length)
    weak, _ = hidden_and_kernel(seed + 1, weak_length)
    rng = np.random.default_rng(seed + 2)
    masks = {"strong_loss_mask": answer_mask(strong_length, (2, 5, 1), (6, 4, 5)),
             "weak_loss_mask": answer_mask(weak_length, (1, 3, 2), (6, 4, 3)),
             "weak_targets": jnp.asarray(rng.integers(0, V, (B, weak_length)), jnp.int32)}
    return strong, weak, kernel, masks


PUMA_CASES = [
    {"mode": "official", "temperature": 2.0},
    {"mode": "standard", "normalize": True, "alpha": 0.3, "lam": 0.4},
    {"mode": "standard", "max_answer_tokens": 4, "ce_reduction": "sequence"},
]


@pytest.mark.parametrize("options", PUMA_CASES, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("chunk", [2, 4])
def test_chunked_puma_equals_logits_path(options, chunk):
    strong, weak, kernel, m = puma_pair()
    args = (m["strong_loss_mask"], m["weak_targets"], m["weak_loss_mask"])

    def plain(s, w, k):  # the strong logits are not stopped here: the loss itself must stop them
        return puma_kl_loss(s @ k, w @ k, *args, **options)

    def chunked(s, w, k):  # the same kernel on both sides: only the weak side may move it
        return chunked_puma_kl_loss(s, w, k, lambda h: h @ k, *args, chunk, **options)

    grad = lambda f: jax.jit(jax.value_and_grad(f, (0, 1, 2), has_aux=True))  # noqa: E731
    (v1, m1), g1 = grad(plain)(strong, weak, kernel)
    (v2, m2), g2 = grad(chunked)(strong, weak, kernel)
    close(v2, v1, "loss")
    assert sorted(m2) == sorted(m1)
    for key in m1:
        close(m2[key], m1[key], key)
    assert float(m1["mismatched_pairs"]) == 1.0 and float(m1["kl"]) > 0
    assert not np.any(np.asarray(g2[0])) and not np.any(np.asarray(g1[0]))   # strong: constant
    for name, a, b in zip(("weak", "kernel"), g2[1:], g1[1:]):
        assert np.abs(np.asarray(b)).max() > 0
        close(a, b, name)


def test_chunked_puma_strong_unembedding_gets_no_gradient():
    """A separate strong unembedding kernel gets exactly zero gradient; the weak one gets the whole
    gradient the shared kernel gets."""
    strong, weak, kernel, m = puma_pair(5)
    args = (m["strong_loss_mask"], m["weak_targets"], m["weak_loss_mask"], 3)

    def split(ks, kw):
        return chunked_puma_kl_loss(strong, weak, lambda h: h @ ks, lambda h: h @ kw, *args)[0]

    def shared(k):
        return chunked_puma_kl_loss(strong, weak, k, k, *args)[0]

    g_strong, g_weak = jax.jit(jax.grad(split, (0, 1)))(kernel, kernel)
    assert not np.any(np.asarray(g_strong))
    close(g_weak, jax.jit(jax.grad(shared))(kernel))


def test_registered_terms_read_hidden_outputs():
    strong, weak, kernel, batch = puma_pair(7)
    puma, next_token = registry.get("loss", "puma_kl"), registry.get("loss", "next_token")

    @jax.jit
    def both(strong, weak, kernel):
        unembed = lambda h: h @ kernel  # noqa: E731
        logits_outputs = {"strong_logits": strong @ kernel, "weak_logits": weak @ kernel}
        hidden_outputs = {"strong_hidden": strong, "weak_hidden": weak, "strong_unembed": unembed,
                          "weak_unembed": unembed, "logits_chunk": 3}
        return [(term(logits_outputs, batch, **options), term(hidden_outputs, batch, **options))
                for term, options in [(puma, o) for o in PUMA_CASES]
                + [(next_token, {"prefix": "weak_", "z_loss": 1e-3})]]

    for (v1, m1), (v2, m2) in both(strong, weak, kernel):
        close(v2, v1)
        assert sorted(m2) == sorted(m1)
        for key in m1:
            close(m2[key], m1[key], key)
    with pytest.raises(KeyError, match="weak_unembed"):
        next_token({"weak_hidden": weak, "logits_chunk": 3}, batch, prefix="weak_")
