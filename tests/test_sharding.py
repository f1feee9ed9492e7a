"""Mesh construction, logical-axis rule presets, placement and the replicated-bytes report on 8 fake
CPU devices (tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mathvlm import sharding


class Block(nnx.Module):
    """A stand-in with the axis names a transformer block uses."""

    def __init__(self, rngs, vocab=32, embed=16, mlp=64, heads=4, head_dim=4):
        init = nnx.initializers.normal(0.02)
        self.embedding = nnx.Param(init(rngs.params(), (vocab, embed)), out_sharding=("vocab", "embed"))
        self.query = nnx.Param(init(rngs.params(), (embed, heads, head_dim)),
                               out_sharding=("embed", "heads", "head_dim"))
        self.up = nnx.Linear(embed, mlp, rngs=rngs,
                             kernel_init=nnx.with_partitioning(init, ("embed", "mlp")),
                             bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",)))
        self.scale = nnx.Param(jnp.ones((embed,)), out_sharding=("norm",))

    def __call__(self, tokens):
        x = self.embedding[...][tokens] * self.scale[...]
        q = jnp.einsum("ble,ehd->blhd", x, self.query[...])
        return self.up(x).sum(-1) + q.sum((-1, -2))


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize("shape, expected", [
    ({"data": -1}, (8, 1, 1)),
    ({"data": -1, "fsdp": 4}, (2, 4, 1)),
    ({"data": 1, "fsdp": -1, "tensor": 2}, (1, 4, 2)),
    ({"data": 2, "fsdp": 2, "tensor": 2}, (2, 2, 2)),
])
def test_mesh_shapes(shape, expected):
    mesh = sharding.make_mesh(shape)
    assert tuple(mesh.shape.values()) == expected
    assert mesh.axis_names == sharding.MESH_AXES
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("shape, message", [
    ({"data": 3}, "needs 3 devices"),
    ({"data": -1, "fsdp": -1}, "at most one -1"),
    ({"data": -1, "fsdp": 3}, "do not divide"),
    ({"model": 2}, "unknown axes"),
])
def test_mesh_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(shape)


def test_presets_cover_every_logical_name():
    for preset in sharding.RULES:
        assert [name for name, _ in sharding.axis_rules(preset)] == list(sharding.LOGICAL_AXES)
    with pytest.raises(KeyError, match="presets"):
        sharding.axis_rules("zero3")


def test_logical_to_mesh_per_preset():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    spec = lambda names, preset, shape: sharding.logical_to_mesh(names, preset, shape=shape, mesh=mesh)
    assert spec(("embed", "mlp"), "dp", (16, 64)) == jax.P(None, None)
    assert spec(("embed", "mlp"), "fsdp", (16, 64)) == jax.P("fsdp", None)
    assert spec(("embed", "mlp"), "fsdp_tp", (16, 64)) == jax.P("fsdp", "tensor")
    assert spec(("batch", "length"), "fsdp_tp", (8, 5)) == jax.P(("data", "fsdp"), None)
    # 3 heads do not split 2 ways: that dimension stays whole instead of failing.
    assert spec(("embed", "heads", "head_dim"), "fsdp_tp", (16, 3, 4)) == jax.P("fsdp", None, None)
    # Batch of 2 splits over data only (the longest dividing prefix of data×fsdp).
    assert spec(("batch",), "dp", (2,)) == jax.P("data")
    with pytest.raises(KeyError, match="no sharding rule"):
        sharding.logical_to_mesh(("embedding",), "dp")


def test_custom_rules_validated_and_completed():
    rules = sharding.axis_rules([("embed", "tensor"), ("batch", ("data", "fsdp"))])
    assert dict(rules)["embed"] == ("tensor",) and dict(rules)["mlp"] is None
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.axis_rules([("embed", "model")])


# Block's bytes: embedding 32*16, query 16*4*4, up kernel 16*64 + bias 64, scale 16 (float32).
_TOTAL = 4 * (32 * 16 + 16 * 4 * 4 + 16 * 64 + 64 + 16)


@pytest.mark.parametrize("preset, mesh_shape, replicated", [
    ("dp", {"data": -1}, _TOTAL),
    ("fsdp", {"data": 2, "fsdp": 4}, 4 * (64 + 16)),        # bias ("mlp",) and scale ("norm",)
    ("fsdp_tp", {"data": 2, "fsdp": 2, "tensor": 2}, 4 * 16),  # bias now splits over tensor
])
def test_create_sharded_places_and_matches_unsharded(preset, mesh_shape, replicated):
    mesh = sharding.make_mesh(mesh_shape)
    make = lambda: Block(nnx.Rngs(0))
    model = sharding.create_sharded(make, mesh, preset)
    reference = make()
    tokens = jnp.arange(16).reshape(4, 4) % 32
    np.testing.assert_allclose(model(tokens), reference(tokens), rtol=1e-6, atol=1e-6)

    state = nnx.state(model)
    for path, value in jax.tree_util.tree_leaves_with_path(state):
        assert value.sharding.mesh.shape == mesh.shape, path
    report = sharding.replicated_report(state)
    assert report.num_devices == 8
    assert report.total_bytes == _TOTAL
    assert report.replicated_bytes == replicated
    if preset == "dp":
        assert report.bytes_per_device == report.total_bytes
    else:
        assert report.bytes_per_device < report.total_bytes / 3


def test_replicated_report_counts_bytes_exactly():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    sharded = jax.device_put(np.zeros((8, 6), np.float32), jax.NamedSharding(mesh, jax.P("fsdp")))
    whole = jax.device_put(np.zeros((10,), np.float32), jax.NamedSharding(mesh, jax.P()))
    report = sharding.replicated_report({"w": sharded, "b": whole})
    assert report.total_bytes == 8 * 6 * 4 + 10 * 4
    assert report.replicated_bytes == 40
    assert report.bytes_per_device == 8 * 6 * 4 // 4 + 40
    assert report.replicated_fraction == pytest.approx(40 / 232)
    assert "b" in str(report) and "17.2%" in str(report)


def test_report_requires_placed_arrays():
    with pytest.raises(ValueError, match="no sharding"):
        sharding.replicated_report({"w": np.zeros(3)})


def test_constrain_is_noop_without_mesh_and_shards_with_one():
    x = jnp.ones((8, 4, 6))
    assert sharding.constrain(x, ("batch", "length", "act_embed")) is x
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    f = jax.jit(lambda x: sharding.constrain(x * 2, ("batch", "length", "act_mlp")))
    with jax.set_mesh(mesh), sharding.use_rules("fsdp_tp"):
        y = f(x)
    assert y.sharding.spec == jax.P(("data", "fsdp"), None, "tensor")
    np.testing.assert_array_equal(y, 2 * x)


def test_batch_sharding():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    x = jax.device_put(np.zeros((16, 3), np.int32), sharding.batch_sharding(mesh, "fsdp", 2))
    assert x.sharding.shard_shape(x.shape) == (2, 3)


def _placed_train_state(config, mesh):
    """Abstract model + optimizer state of a recipe, placed by the config's rules (no memory used)."""
    from mathvlm.train import optim
    from mathvlm.train.build import make_model_and_optimizer

    make = make_model_and_optimizer(config, optim.trainable_filter(config.train.trainable))
    state = nnx.split(nnx.eval_shape(make))[1]
    shardings = sharding.state_shardings(state, mesh, config.sharding.rules)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


@pytest.mark.parametrize("spec, preset", [
    ("configs/text_demo.py", ""),                      # the tiny decoder (1.2 MiB of state)
    ("configs/mavis/instruct.py:size=tiny", ""),       # the tiny VLM
    ("configs/text_demo.py", "qwen2-1.5b"),            # a mid-size decoder, 1.5B parameters, scanned
])
def test_fsdp_spreads_parameters_and_optimizer_evenly(spec, preset):
    """ZeRO-3 promise: with the fsdp preset on 8 devices, each device holds ~1/8 of params + moments."""
    from mathvlm import config as mc

    config = mc.load(spec)
    config.unlock()
    if preset:
        config.model = mc.ConfigDict({"name": "decoder_lm", "preset": preset, "scan_layers": True})
    config.sharding.rules = "fsdp"
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1})
    report = sharding.replicated_report(_placed_train_state(config, mesh))
    assert report.num_devices == 8
    assert report.bytes_per_device <= 1.05 * report.total_bytes / 8, str(report)
    # The same state under plain data parallelism is whole on every device: the check can fail.
    config.sharding.rules = "dp"
    assert sharding.replicated_report(_placed_train_state(config, mesh)).bytes_per_device == \
        report.total_bytes
