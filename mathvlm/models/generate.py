"""Batched KV-cache decoding, compiled once per shape: one prefill call, then a ``lax.while_loop`` of
single-token steps that stops early when every row has emitted a stop token.

Works for any model with the cache protocol of :class:`~mathvlm.models.decoder.DecoderLM`:

* ``model.init_cache(batch, max_length) -> cache``
* ``model(tokens, attention_mask=mask, inputs_embeds=embeds, cache=cache) -> (logits, cache)``

Prompts may be left- or right-padded (any padding pattern): the cache marks which slots hold real
tokens, positions skip pads, and the first new token is read from each row's last real token. A VLM
passes its merged text+image embeddings as ``inputs_embeds`` (with their mask) for the prefill.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx


class Generated(NamedTuple):
    tokens: jax.Array    # [batch, max_new_tokens]; pad_id after a row's stop token
    lengths: jax.Array   # [batch] number of generated tokens including the stop token
    # [batch, max_new_tokens] float32: log-prob of each generated token under the distribution it was
    # drawn from (softmax of logits / temperature; of the raw logits when greedy), 0 after the stop.
    # Top-k / top-p truncation is not renormalised in: RL losses score the tempered full softmax.
    logprobs: jax.Array


def _per_row(rng: jax.Array) -> bool:
    """True for a batch of keys (typed keys of shape [batch], raw uint32 keys of shape [batch, 2])."""
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    return rng.ndim == (1 if typed else 2)


def sample_logits(logits: jax.Array, rng: jax.Array, *, temperature, top_k: int = 0,
                  top_p=1.0) -> jax.Array:
    """Next token per row of ``logits [batch, vocab]``: argmax when ``temperature == 0``, otherwise a
    sample from the temperature-scaled distribution restricted to the top-k tokens and to the smallest
    set whose probability reaches ``top_p``. ``rng``: one key, or one per row."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    if top_k:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    # Nucleus: keep tokens whose preceding (sorted) probability mass is below top_p; the top token
    # always survives because its preceding mass is 0.
    order = jnp.argsort(-scaled, axis=-1)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    sorted_logits = jnp.where(mass_before < top_p, sorted_logits, -jnp.inf)
    if _per_row(rng):
        choice = jax.vmap(lambda key, row: jax.random.categorical(key, row))(rng, sorted_logits)
    else:
        choice = jax.random.categorical(rng, sorted_logits, axis=-1)
    sampled = jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)


def generate(model, tokens: jax.Array | None = None, attention_mask: jax.Array | None = None, *,
             max_new_tokens: int, inputs_embeds: jax.Array | None = None,
             rng: jax.Array | None = None, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, stop_tokens: Sequence[int] = (), pad_id: int = 0) -> Generated:
    """Continue each prompt row by up to ``max_new_tokens`` tokens.

    ``tokens [batch, prompt_len]`` (or ``inputs_embeds [batch, prompt_len, embed]``) with
    ``attention_mask`` (1 = real token). Greedy when ``temperature == 0``; ``rng`` is one key or one
    key per row (see the module docstring). Compiled per
    (shapes, max_new_tokens, top_k, stop_tokens, pad_id); temperature and top_p are traced."""
    if tokens is None and inputs_embeds is None:
        raise ValueError("generate needs tokens or inputs_embeds")
    prompt = tokens if inputs_embeds is None else inputs_embeds
    if attention_mask is None:
        attention_mask = jnp.ones(prompt.shape[:2], jnp.int32)
    rng = jax.random.key(0) if rng is None else rng
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, tokens if inputs_embeds is None else None, inputs_embeds,
                     jnp.asarray(attention_mask), rng, jnp.float32(temperature), jnp.float32(top_p),
                     max_new_tokens=int(max_new_tokens), top_k=int(top_k),
                     stop_tokens=tuple(int(t) for t in stop_tokens), pad_id=int(pad_id))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "stop_tokens",
                                             "pad_id"))
def _generate(graphdef, state, tokens, inputs_embeds, mask, rng, temperature, top_p, *,
              max_new_tokens, top_k, stop_tokens, pad_id):
    model = nnx.merge(graphdef, state)
    prompt = tokens if inputs_embeds is None else inputs_embeds
    batch, prompt_len = prompt.shape[:2]
    cache = model.init_cache(batch, prompt_len + max_new_tokens)
    stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)

    logits, cache = model(tokens, attention_mask=mask, inputs_embeds=inputs_embeds, cache=cache)
    # Each row continues from its last real token (prompt_len - 1 when left-padded).
    last = prompt_len - 1 - jnp.argmax(mask[:, ::-1].astype(bool), axis=-1)
    next_logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]

    def pick(logits, step):
        if _per_row(rng):
            key = jax.vmap(lambda row_key: jax.random.fold_in(row_key, step))(rng)
        else:
            key = jax.random.fold_in(rng, step)

        def sample(logits):
            return sample_logits(logits, key, temperature=temperature, top_k=top_k, top_p=top_p)

        # Greedy decoding skips the sampler at run time: its vocabulary sort (for top-p) dominated
        # every step on CPU, although its result was then discarded for argmax.
        token = jax.lax.cond(temperature > 0, sample,
                             lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32), logits)
        scale = jnp.where(temperature > 0, temperature, 1.0)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32) / scale, axis=-1),
                                      token[:, None], axis=-1)[:, 0]
        return token, logprob

    first, first_logprob = pick(next_logits, 0)
    out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    logprobs = jnp.zeros((batch, max_new_tokens), jnp.float32).at[:, 0].set(first_logprob)
    done = jnp.isin(first, stops)
    lengths = jnp.ones((batch,), jnp.int32)

    def cond(carry):
        step, _, _, done, _, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, token, cache, done, out, logprobs, lengths = carry
        logits, cache = model(token[:, None], cache=cache)
        token, logprob = pick(logits[:, -1], step)
        out = out.at[:, step].set(jnp.where(done, pad_id, token))
        logprobs = logprobs.at[:, step].set(jnp.where(done, 0.0, logprob))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(token, stops)
        return step + 1, token, cache, done, out, logprobs, lengths

    carry = (jnp.int32(1), first, cache, done, out, logprobs, lengths)
    *_, out, logprobs, lengths = jax.lax.while_loop(cond, body, carry)
    return Generated(out, lengths, logprobs)
