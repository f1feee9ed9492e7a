"""DecoderLM variants agree: scan / remat / plain, cached / uncached, sharded / unsharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mathvlm import hf, registry, sharding
from mathvlm.models.decoder import DECODER_PRESETS, DecoderConfig, DecoderLM

TINY = DECODER_PRESETS["tiny"]
TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 10)))
MASK = jnp.asarray(np.r_[[1] * 10, [0] * 3 + [1] * 7].reshape(2, 10))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random tiny decoder written as an HF folder, so variants can load identical weights."""
    folder = str(tmp_path_factory.mktemp("tiny_decoder"))
    config = DecoderConfig(**{**TINY, "arch": "qwen2", "qkv_bias": True, "tie_embeddings": True})
    hf.save_pretrained(DecoderLM(config, rngs=nnx.Rngs(0)), folder)
    return folder


@nnx.jit
def _forward(model, tokens, mask=None):
    return model(tokens, attention_mask=mask)


def _loss(model):
    return jnp.mean(jax.nn.log_softmax(model(TOKENS, attention_mask=MASK))[..., 3])


_grad = nnx.jit(nnx.grad(_loss))


@pytest.mark.parametrize("scan,remat", [(True, False), (False, True), (True, True)])
def test_scan_and_remat_equal_plain(saved, scan, remat):
    plain = hf.from_pretrained(saved)
    variant = hf.from_pretrained(saved, scan_layers=scan, remat=remat)
    ref = _forward(plain, TOKENS, MASK)
    np.testing.assert_allclose(np.asarray(_forward(variant, TOKENS, MASK)), np.asarray(ref),
                               atol=1e-6, rtol=0)
    # Gradients flow through scan / remat the same way (compare a shared parameter).
    g_plain = _grad(plain)
    g_variant = _grad(variant)
    # remat really recomputes: the backward graph holds a checkpoint (remat) region.
    graph, state = nnx.split(variant)
    jaxpr = jax.make_jaxpr(jax.grad(lambda s: _loss(nnx.merge(graph, s))))(state)
    assert ("checkpoint" in str(jaxpr) or "remat" in str(jaxpr)) == remat
    np.testing.assert_allclose(np.asarray(g_variant["embed_tokens"]["embedding"][...]),
                               np.asarray(g_plain["embed_tokens"]["embedding"][...]), atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_chunked_cache_equals_full_forward(saved, scan):
    model = hf.from_pretrained(saved, scan_layers=scan)
    full = _forward(model, TOKENS, MASK)
    step = nnx.jit(lambda m, t, a, c: m(t, attention_mask=a, cache=c))
    cache = model.init_cache(2, 16)
    first, cache = step(model, TOKENS[:, :6], MASK[:, :6], cache)
    rest, cache = step(model, TOKENS[:, 6:], MASK[:, 6:], cache)
    got = jnp.concatenate([first, rest], axis=1)
    real = np.asarray(MASK, bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(full)[real], atol=1e-5, rtol=0)
    assert int(cache["index"]) == 10 and cache["k"].shape == (2, 2, 2, 16, 16)


def test_inputs_embeds_equal_tokens():
    model = DecoderLM(DecoderConfig(**TINY), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(model(inputs_embeds=model.embed(TOKENS))),
                                  np.asarray(model(TOKENS)))


@pytest.mark.parametrize("tied", [False, True])
def test_hidden_times_unembed_kernel_is_logits(tied):
    model = DecoderLM(DecoderConfig(**TINY, tie_embeddings=tied), rngs=nnx.Rngs(0))
    logits = model(TOKENS, attention_mask=MASK)
    hidden = model.hidden(TOKENS, attention_mask=MASK)
    assert hidden.shape == (2, 10, TINY["hidden_size"])
    np.testing.assert_allclose(np.asarray(hidden @ model.unembed_kernel()), np.asarray(logits),
                               atol=1e-5, rtol=0)


def test_bf16_compute_with_f32_params():
    config = DecoderConfig(**TINY)
    f32 = DecoderLM(config, rngs=nnx.Rngs(0))
    bf16 = DecoderLM(config.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    assert bf16.layers[0].mlp.up_proj.kernel[...].dtype == jnp.float32
    out = _forward(bf16, TOKENS)
    assert out.dtype == jnp.float32
    assert float(jnp.abs(out - _forward(f32, TOKENS)).max()) < 3e-2


def test_registry_builds_presets():
    make = registry.get("model", "decoder_lm")
    model = make("tiny", rngs=nnx.Rngs(0), num_layers=3, lora_rank=2)
    assert len(model.layers) == 3 and model.config.vocab_size == 256
    assert nnx.state(model, nnx.LoRAParam)
    for name, preset in DECODER_PRESETS.items():
        c = DecoderConfig(**preset)
        assert c.num_heads * c.head_dim >= c.hidden_size or name == "tiny", name
    big = nnx.eval_shape(lambda: make("qwen2-1.5b", rngs=nnx.Rngs(0), scan_layers=True))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(big)))
    assert 1.5e9 < count < 1.6e9          # Qwen2-1.5B: 1.54B parameters (tied embeddings)


def test_every_parameter_has_known_logical_names():
    model = nnx.eval_shape(lambda: registry.get("model", "decoder_lm")(
        "tiny", rngs=nnx.Rngs(0), scan_layers=True, qkv_bias=True, lora_rank=2))
    for path, var in jax.tree_util.tree_leaves_with_path(nnx.state(model),
                                                         is_leaf=lambda v: isinstance(v, nnx.Variable)):
        names = var.get_metadata().get("out_sharding")
        assert names and len(names) == var.ndim, path
        assert set(names) <= set(sharding.PARAM_AXES), (path, names)


@pytest.mark.parametrize("preset,scan", [("fsdp", False), ("fsdp_tp", False), ("fsdp_tp", True)])
def test_sharded_equals_unsharded(preset, scan):
    def make():
        return registry.get("model", "decoder_lm")("tiny", rngs=nnx.Rngs(0), scan_layers=scan,
                                                    qkv_bias=True)

    # The batch splits 4 ways (data × fsdp), so use 4 rows.
    tokens, mask = jnp.tile(TOKENS, (2, 1)), jnp.tile(MASK, (2, 1))
    reference = _forward(make(), tokens, mask)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = sharding.create_sharded(make, mesh, preset)
    q_kernel = model.layers.attn.q_proj.kernel if scan else model.layers[0].attn.q_proj.kernel
    spec = q_kernel[...].sharding.spec
    assert "fsdp" in jax.tree.leaves(tuple(spec))
    assert ("tensor" in jax.tree.leaves(tuple(spec))) == (preset == "fsdp_tp")

    with jax.set_mesh(mesh), sharding.use_rules(preset):
        batch = sharding.batch_sharding(mesh, preset)
        tokens, mask = jax.device_put(tokens, batch), jax.device_put(mask, batch)
        logits = nnx.jit(lambda m, t, a: m(t, attention_mask=a))(model, tokens, mask)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(reference), atol=1e-5, rtol=0)
