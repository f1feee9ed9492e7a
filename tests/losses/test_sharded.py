"""Every loss on 8 fake devices with the batch sharded equals the single-device result (≤ 1e-6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mathvlm import sharding
from mathvlm.losses import make_loss

B, L, V, D = 8, 6, 11, 5


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices; tests/conftest.py sets XLA_FLAGS")
    return sharding.make_mesh({"data": -1})


def place(tree, mesh):
    def one(x):
        x = jnp.asarray(x)
        if x.ndim == 0:
            return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P()))
        return jax.device_put(x, sharding.batch_sharding(mesh, "dp", x.ndim))
    return jax.tree.map(one, tree)


def data():
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    ints = lambda: rng.integers(0, V, (B, L)).astype(np.int32)  # noqa: E731

    def answer_mask(offset):
        mask = np.zeros((B, L), np.float32)
        for i in range(B):
            start = (i + offset) % 3 + 1
            mask[i, start:start + 2 + i % 2] = 1.0
        mask[5] = 0.0  # a blanked example
        return mask

    batch = {"targets": ints(), "loss_mask": answer_mask(0), "weak_targets": ints(),
             "strong_loss_mask": answer_mask(1), "weak_loss_mask": answer_mask(2),
             "chosen_targets": ints(), "rejected_targets": ints(),
             "chosen_loss_mask": answer_mask(0), "rejected_loss_mask": answer_mask(1),
             "skip_reason": (np.arange(B) == 5).astype(np.int32)}
    outputs = {"logits": f32(B, L, V), "hidden": f32(B, L, D), "strong_logits": f32(B, L, V),
               "weak_logits": f32(B, L, V), "image_embeds": f32(B, D), "text_embeds": f32(B, D),
               "logit_scale": np.float32(2.5), "logit_bias": np.float32(-2.0)}
    for model in ("policy", "reference"):
        for side in ("chosen", "rejected"):
            outputs[f"{model}_{side}_logits"] = f32(B, L, V)
    kernel = f32(D, V)
    return outputs, batch, kernel


TERMS = {
    "clip": [{"name": "clip"}],
    "siglip": [{"name": "siglip"}],
    "next_token_token": [{"name": "next_token", "z_loss": 1e-3}],
    "next_token_sequence_chunked": [{"name": "next_token", "reduction": "sequence", "chunk_size": 4}],
    "puma_official": [{"name": "puma_kl", "mode": "official", "temperature": 2.0}],
    "puma_standard": [{"name": "puma_kl", "mode": "standard", "normalize": True}],
    "dpo": [{"name": "dpo", "beta": 0.3, "label_smoothing": 0.1}],
}


@pytest.mark.parametrize("name", sorted(TERMS))
def test_sharded_equals_single_device(mesh, name):
    outputs, batch, kernel = data()
    loss_fn = make_loss(TERMS[name])

    def value_and_grads(outputs, batch, kernel):
        def objective(outputs, kernel):
            return loss_fn({**outputs, "unembed": kernel}, batch)
        return jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(outputs, kernel)

    single = jax.jit(value_and_grads)(outputs, batch, kernel)
    placed_outputs, placed_batch = place(outputs, mesh), place(batch, mesh)
    assert len(placed_outputs["logits"].sharding.device_set) == 8
    assert placed_outputs["logits"].sharding.shard_shape((B, L, V)) == (1, L, V)
    with jax.set_mesh(mesh):
        sharded = jax.jit(value_and_grads)(placed_outputs, placed_batch, kernel)
    (loss1, metrics1), grads1 = single
    (loss8, metrics8), grads8 = sharded
    assert np.isfinite(loss1) and float(loss1) != 0.0
    np.testing.assert_allclose(loss8, loss1, rtol=1e-6, atol=1e-6)
    for key in metrics1:
        np.testing.assert_allclose(metrics8[key], metrics1[key], rtol=1e-6, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(grads8), jax.tree.leaves(grads1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
