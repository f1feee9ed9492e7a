"""KV-cache decoding equals uncached greedy decoding; padding side, stop tokens and sampling knobs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mathvlm.models.decoder import DECODER_PRESETS, DecoderConfig, DecoderLM
from mathvlm.models.generate import _generate, generate, sample_logits


@pytest.fixture(scope="module")
def model():
    return DecoderLM(DecoderConfig(**DECODER_PRESETS["tiny"]), rngs=nnx.Rngs(3))


@nnx.jit
def _forward(model, tokens, mask):
    return model(tokens, attention_mask=mask)


def _uncached_greedy(model, prompts, steps):
    """Reference without a cache: re-run every whole sequence (right-padded to one fixed width, so
    one compilation) for each new token and take the argmax at its last real token."""
    width = max(map(len, prompts)) + steps
    seqs = [list(p) for p in prompts]
    for _ in range(steps):
        tokens = np.zeros((len(seqs), width), np.int32)
        mask = np.zeros_like(tokens)
        for row, seq in enumerate(seqs):
            tokens[row, :len(seq)], mask[row, :len(seq)] = seq, 1
        logits = np.asarray(_forward(model, tokens, mask))
        for row, seq in enumerate(seqs):
            seq.append(int(np.argmax(logits[row, len(seq) - 1])))
    return np.asarray([seq[len(p):] for seq, p in zip(seqs, prompts)])


def _pad(prompts, side, pad=0):
    width = max(map(len, prompts))
    tokens = np.full((len(prompts), width), pad, np.int32)
    mask = np.zeros_like(tokens)
    for row, p in enumerate(prompts):
        cols = slice(width - len(p), width) if side == "left" else slice(0, len(p))
        tokens[row, cols] = p
        mask[row, cols] = 1
    return tokens, mask


PROMPTS = [[5, 17, 200, 3, 9, 44], [7, 8], [100, 101, 102, 103]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_cached_equals_uncached_greedy(model, side):
    tokens, mask = _pad(PROMPTS, side)
    out = generate(model, tokens, mask, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(out.tokens), _uncached_greedy(model, PROMPTS, 6))


def test_inputs_embeds_prefill_equals_tokens(model):
    tokens, mask = _pad(PROMPTS, "left")
    by_tokens = generate(model, tokens, mask, max_new_tokens=4)
    by_embeds = generate(model, None, mask, inputs_embeds=model.embed(jnp.asarray(tokens)),
                         max_new_tokens=4)
    np.testing.assert_array_equal(np.asarray(by_tokens.tokens), np.asarray(by_embeds.tokens))


def test_stop_tokens_pad_the_rest(model):
    tokens, mask = _pad(PROMPTS, "left")
    free = np.asarray(generate(model, tokens, mask, max_new_tokens=6).tokens)
    stop = int(free[0, 2])      # row 0 stops at its third token (or earlier if it repeats)
    out = generate(model, tokens, mask, max_new_tokens=6, stop_tokens=[stop], pad_id=-1)
    got, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(free[row] == stop)
        n = hits[0] + 1 if hits.size else 6
        assert lengths[row] == n
        np.testing.assert_array_equal(got[row, :n], free[row, :n])
        assert (got[row, n:] == -1).all()


def test_sampling_knobs():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 256))
    keys = jax.random.split(jax.random.key(0), 256)
    draw = jax.vmap(lambda k, l: sample_logits(l[None], k, temperature=1.0, top_k=2)[0])
    assert set(np.asarray(draw(keys, logits)).tolist()) == {0, 1}
    draw = jax.vmap(lambda k, l: sample_logits(l[None], k, temperature=1.0, top_p=0.7)[0])
    assert set(np.asarray(draw(keys, logits)).tolist()) == {0, 1}   # 0.5 < 0.7 ≤ 0.8
    draw = jax.vmap(lambda k, l: sample_logits(l[None], k, temperature=1.0)[0])
    assert set(np.asarray(draw(keys, logits)).tolist()) == {0, 1, 2, 3}
    greedy = sample_logits(logits[:2], jax.random.key(1), temperature=0.0, top_k=3)
    np.testing.assert_array_equal(np.asarray(greedy), [0, 0])


def test_temperature_sampling_is_seeded(model):
    tokens, mask = _pad(PROMPTS, "left")
    kw = {"max_new_tokens": 5, "temperature": 1.0, "top_k": 20, "top_p": 0.9}
    a = generate(model, tokens, mask, rng=jax.random.key(1), **kw).tokens
    b = generate(model, tokens, mask, rng=jax.random.key(1), **kw).tokens
    c = generate(model, tokens, mask, rng=jax.random.key(2), **kw).tokens
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_bf16_cache_is_updated_in_place():
    """A bf16 cache is stored as bits so XLA's CPU backend updates it in place: the compiled decoding
    program holds no float32 copy of the whole cache (which cost ~2x at batch 8), and it runs (a
    bf16 x bf16 -> f32 batched attention dot used to fail on CPU at batch 2)."""
    config = DecoderConfig(**DECODER_PRESETS["tiny"], param_dtype="bfloat16", dtype="bfloat16")
    model = DecoderLM(config, rngs=nnx.Rngs(3))
    tokens, mask = _pad(PROMPTS[:2], "left")
    new = 4
    assert model.init_cache(2, 8)["k"].dtype == jnp.uint16
    out = generate(model, tokens, mask, max_new_tokens=new)
    assert out.tokens.shape == (2, new)
    graphdef, state = nnx.split(model)
    hlo = _generate.lower(graphdef, state, jnp.asarray(tokens), None, jnp.asarray(mask),
                          jax.random.key(0), jnp.float32(0), jnp.float32(1), max_new_tokens=new,
                          top_k=0, stop_tokens=(), pad_id=0).compile().as_text()
    c = config
    full = f"[{c.num_layers},2,{c.num_kv_heads},{tokens.shape[1] + new},{c.head_dim}]"
    assert f"u16{full}" in hlo and f"f32{full}" not in hlo and f"bf16{full}" not in hlo


def test_per_row_keys_make_a_rows_samples_independent_of_its_batch(model):
    """One key per row: a row draws the same tokens whatever shares its batch and wherever it sits (what
    lets evaluate run split items over processes and still reproduce one process's samples)."""
    tokens, mask = _pad([PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[0]], "left")
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(5), jnp.arange(4))
    kw = {"max_new_tokens": 6, "temperature": 1.0}
    out = np.asarray(generate(model, tokens, mask, rng=keys, **kw).tokens)
    order = [2, 0, 3, 1]
    permuted = np.asarray(generate(model, tokens[order], mask[order], rng=keys[np.asarray(order)], **kw).tokens)
    np.testing.assert_array_equal(permuted, out[order])
    assert not np.array_equal(out[0], out[3])  # same prompt, own keys: other draws
