"""Next-token CE: numpy reference for both reductions and z-loss, masking, chunked = unchunked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathvlm import registry
from mathvlm.losses import chunked_next_token_loss, next_token_loss, shift_targets


def np_log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_next_token(logits, targets, mask, reduction, z_coef):
    logp = np_log_softmax(logits.astype(np.float64))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    if reduction == "token":
        reduce = lambda v: (v * mask).sum() / mask.sum()  # noqa: E731
    else:
        rows = mask.sum(-1) > 0
        reduce = lambda v: np.mean((v * mask).sum(-1)[rows] / mask.sum(-1)[rows])  # noqa: E731
    accuracy = ((logits.argmax(-1) == targets) * mask).sum() / mask.sum()
    return reduce(nll) + z_coef * reduce(log_z ** 2), accuracy


def make_batch(seed, b=4, length=7, vocab=13, width=6):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, length, width)).astype(np.float32)
    kernel = rng.normal(size=(width, vocab)).astype(np.float32)
    targets = rng.integers(0, vocab, (b, length)).astype(np.int32)
    mask = (rng.random((b, length)) > 0.4).astype(np.float32)
    mask[1] = 0.0  # an example with no supervised token
    mask[0, 0] = 1.0
    return hidden, kernel, targets, mask


@pytest.mark.parametrize("reduction", ["token", "sequence"])
@pytest.mark.parametrize("z_coef", [0.0, 1e-2])
def test_matches_numpy(reduction, z_coef):
    hidden, kernel, targets, mask = make_batch(0)
    logits = hidden @ kernel
    loss, metrics = next_token_loss(jnp.asarray(logits), targets, mask, reduction=reduction,
                                    z_loss=z_coef)
    want, accuracy = np_next_token(logits, targets, mask, reduction, z_coef)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], accuracy, rtol=1e-6)
    assert metrics["num_tokens"] == mask.sum()
    assert ("z_loss" in metrics) == bool(z_coef)


def test_reductions_differ_when_lengths_differ():
    hidden, kernel, targets, mask = make_batch(1)
    logits = jnp.asarray(hidden @ kernel)
    token, _ = next_token_loss(logits, targets, mask, reduction="token")
    sequence, _ = next_token_loss(logits, targets, mask, reduction="sequence")
    assert abs(float(token) - float(sequence)) > 1e-4
    with pytest.raises(ValueError, match="unknown reduction"):
        next_token_loss(logits, targets, mask, reduction="mean")


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_fully_masked_batch_gives_zero_and_finite_gradient(reduction):
    hidden, kernel, targets, _ = make_batch(2)
    zero = np.zeros(targets.shape, np.float32)

    def fn(h):
        return next_token_loss(h @ kernel, targets, zero, reduction=reduction, z_loss=1e-3)[0]

    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(hidden))
    assert value == 0.0 and np.isfinite(grad).all() and np.all(grad == 0)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_chunked_equals_unchunked_value_and_gradient(reduction):
    hidden, kernel, targets, mask = make_batch(3)

    def plain(h, k):
        return next_token_loss(h @ k, targets, mask, reduction=reduction, z_loss=1e-3)

    def chunked(h, k):  # chunk 3 does not divide length 7: exercises the padding
        return chunked_next_token_loss(h, k, targets, mask, 3, reduction=reduction, z_loss=1e-3)

    (v1, m1), g1 = jax.jit(jax.value_and_grad(plain, argnums=(0, 1), has_aux=True))(hidden, kernel)
    (v2, m2), g2 = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(hidden, kernel)
    np.testing.assert_allclose(v2, v1, rtol=1e-5)
    np.testing.assert_allclose(m2["accuracy"], m1["accuracy"])
    for a, b in zip(g2, g1):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _largest_intermediate(jaxpr) -> int:
    """Largest element count of any value produced anywhere in a (nested) jaxpr."""
    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            largest = max(largest, int(np.prod(getattr(var.aval, "shape", ()))))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    largest = max(largest, _largest_intermediate(inner))
    return largest


def test_chunked_gradient_never_materialises_full_logits():
    b, length, vocab, chunk = 2, 32, 101, 8
    rng = np.random.default_rng(4)
    hidden = jnp.asarray(rng.normal(size=(b, length, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, vocab)), jnp.float32)
    targets = jnp.zeros((b, length), jnp.int32)
    mask = jnp.ones((b, length), jnp.float32)
    grad = jax.grad(lambda h, k: chunked_next_token_loss(h, k, targets, mask, chunk)[0], (0, 1))
    largest = _largest_intermediate(jax.make_jaxpr(grad)(hidden, kernel).jaxpr)
    assert largest <= b * chunk * vocab < b * length * vocab


def test_shift_targets():
    tokens = jnp.array([[5, 6, 7, 8]])
    supervised = jnp.array([[0, 0, 1, 1]])
    targets, loss_mask = shift_targets(tokens, supervised, pad_id=-1)
    np.testing.assert_array_equal(targets, [[6, 7, 8, -1]])
    np.testing.assert_array_equal(loss_mask, [[0, 1, 1, 0]])


def test_registered_term_prefix_and_chunked_path():
    hidden, kernel, targets, mask = make_batch(5)
    fn = registry.get("loss", "next_token")
    logits = jnp.asarray(hidden @ kernel)
    batch = {"weak_targets": targets, "weak_loss_mask": mask}
    plain, _ = fn({"weak_logits": logits}, batch, prefix="weak_")
    chunked, _ = fn({"weak_hidden": hidden, "weak_unembed": kernel}, batch, prefix="weak_",
                    chunk_size=4)
    np.testing.assert_allclose(chunked, plain, rtol=1e-5)
    np.testing.assert_allclose(plain, next_token_loss(logits, targets, mask)[0])
    with pytest.raises(KeyError, match="weak_logits"):
        fn({}, batch, prefix="weak_")
