"""Decoder-only language model: LLaMA-2 / Vicuna, Mistral, Qwen2 and DeepSeek-Math (LLaMA) layouts.

``DecoderLM(config, rngs=...)(tokens) -> logits [batch, length, vocab]`` (float32). Options:

* ``scan_layers`` — the blocks are one module whose parameters have a leading ``"layers"`` axis
  (built with ``nnx.vmap``) and run under ``jax.lax.scan``: one compiled block instead of N.
* ``remat`` — a rematerialisation policy name for each block (:mod:`mathvlm.models.remat`):
  ``none``, ``full`` (save nothing, recompute the block), ``dots_saveable``,
  ``dots_with_no_batch_dims`` or ``offload`` (those matmul outputs kept in pinned host memory).
  ``True`` / ``False`` are accepted for ``full`` / ``none``.
* ``dtype`` — compute dtype (e.g. bfloat16) independent of ``param_dtype`` (e.g. float32).
* ``attention_impl`` — the training-time attention (:mod:`mathvlm.models.attention`): ``auto`` runs
  the Pallas splash kernel on TPU, cuDNN's on GPU and the einsum on CPU; decoding with a cache always
  runs the einsum.

KV cache (for :mod:`mathvlm.models.generate`): ``cache = model.init_cache(batch, max_length)``
(``k``/``v`` ``[layers, batch, kv_heads, max_length, head_dim]``, 16-bit floats stored as bits), then
``logits, cache = model(tokens, attention_mask=mask, cache=cache)`` appends the chunk at the cache's
write slot. ``attention_mask`` always covers the tokens of *this call* (1 = real token, 0 = pad); the
cache remembers which of its slots are real, so padding may sit anywhere (left, right, inside).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mathvlm import registry
from mathvlm.models.attention import resolve as resolve_attention
from mathvlm.models.layers import (
    Attention,
    Dense,
    Embedding,
    RMSNorm,
    SwiGLU,
    cache_storage_dtype,
    check_rope_scaling,
    positions_from_mask,
    positions_in_segments,
)
from mathvlm.models.remat import canonical_remat, checkpoint, nnx_checkpoint
from mathvlm.sharding import constrain


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rope_theta: float = 10000.0
    # transformers-style RoPE scaling ({"rope_type": "linear" | "dynamic" | "llama3", ...}) or
    # None; stored as sorted (key, value) pairs so the config stays hashable.
    rope_scaling: tuple | None = None
    rms_eps: float = 1e-6
    qkv_bias: bool = False          # Qwen2: True
    o_bias: bool = False            # LLaMA with attention_bias=True has an o_proj bias too
    tie_embeddings: bool = False    # Qwen2-1.5B: True
    max_position: int = 4096
    sliding_window: int | None = None  # Mistral v0.1 (4096); irrelevant below that length
    arch: str = "llama"             # HF family written by save_pretrained: llama | mistral | qwen2
    init_std: float = 0.02
    param_dtype: str = "float32"
    dtype: str | None = None        # compute dtype; None = param_dtype
    # Rematerialisation policy name (mathvlm.models.remat.REMAT_POLICIES); True/False → "full"/"none".
    remat: str = "none"
    scan_layers: bool = False
    # Attention without a KV cache (mathvlm.models.attention): auto (splash on TPU, cuDNN on GPU, einsum
    # on CPU) | xla | cudnn | splash.
    attention_impl: str = "auto"
    # Backward-pass precision of the float32 logits' gradient in the LM-head matmuls: None keeps it
    # float32 (exact autodiff); "bfloat16" rounds it like PyTorch autocast, which lets XLA's CPU
    # backend run those two matmuls in bf16 at about twice the speed (see mathvlm.bench).
    logits_grad_dtype: str | None = None

    def __post_init__(self):
        # Canonical dtype names keep the config hashable, comparable and JSON-serialisable.
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype).name)
        object.__setattr__(self, "remat", canonical_remat(self.remat))
        resolve_attention(self.attention_impl)   # an unknown name fails here, not at trace time
        if self.dtype is not None:
            object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
        if self.logits_grad_dtype is not None:
            object.__setattr__(self, "logits_grad_dtype", jnp.dtype(self.logits_grad_dtype).name)
        if self.rope_scaling is not None:
            scaling = dict(self.rope_scaling)
            if scaling.get("rope_type") == "dynamic":
                # Dynamic NTK scales relative to the pretraining length (transformers uses
                # max_position_embeddings).
                scaling.setdefault("original_max_position_embeddings", self.max_position)
            object.__setattr__(self, "rope_scaling",
                               tuple(sorted(check_rope_scaling(scaling).items())))
        if self.arch not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"arch must be llama, mistral or qwen2, got {self.arch!r}")

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype or self.param_dtype)

    def replace(self, **changes) -> DecoderConfig:
        return dataclasses.replace(self, **changes)


# Sizes from the released HF config.json files.
_LLAMA2_7B = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_layers": 32,
    "num_heads": 32, "num_kv_heads": 32, "head_dim": 128, "rope_theta": 10000.0, "rms_eps": 1e-5,
    "max_position": 4096, "arch": "llama",
}
DECODER_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
        "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "max_position": 512,
    },
    "vicuna-7b": _LLAMA2_7B,
    "vicuna-13b": {
        **_LLAMA2_7B, "hidden_size": 5120, "intermediate_size": 13824, "num_layers": 40,
        "num_heads": 40, "num_kv_heads": 40,
    },
    # Mistral-7B-v0.1 (MAmmoTH2-7B's base family); v0.2-based releases use theta 1e6, no window.
    "mistral-7b": {
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_layers": 32,
        "num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "rope_theta": 10000.0, "rms_eps": 1e-5,
        "max_position": 32768, "sliding_window": 4096, "arch": "mistral",
    },
    "qwen2-1.5b": {
        "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_layers": 28,
        "num_heads": 12, "num_kv_heads": 2, "head_dim": 128, "rope_theta": 1e6, "rms_eps": 1e-6,
        "qkv_bias": True, "tie_embeddings": True, "max_position": 32768, "arch": "qwen2",
    },
    "qwen2-7b": {
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_layers": 28,
        "num_heads": 28, "num_kv_heads": 4, "head_dim": 128, "rope_theta": 1e6, "rms_eps": 1e-6,
        "qkv_bias": True, "max_position": 32768, "arch": "qwen2",
    },
    "deepseek-math-7b": {**_LLAMA2_7B, "vocab_size": 102400, "num_layers": 30, "rms_eps": 1e-6},
}


class Block(nnx.Module):
    """Pre-norm transformer block: ``h + attn(norm(h))``, then ``h + mlp(norm(h))``."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        c = config
        kw = {"dtype": c.compute_dtype, "param_dtype": c.param_dtype}
        self.input_norm = RMSNorm(c.hidden_size, eps=c.rms_eps, **kw)
        self.attn = Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
                              qkv_bias=c.qkv_bias, o_bias=c.o_bias, rope_theta=c.rope_theta,
                              rope_scaling=c.rope_scaling, sliding_window=c.sliding_window,
                              attention_impl=c.attention_impl, rngs=rngs, **kw)
        self.post_attn_norm = RMSNorm(c.hidden_size, eps=c.rms_eps, **kw)
        self.mlp = SwiGLU(c.hidden_size, c.intermediate_size, rngs=rngs, **kw)

    def __call__(self, h, positions, key_valid, query_slots, kv_cache=None, cache_index=None,
                 layer=0):
        attn_out, kv_cache = self.attn(self.input_norm(h), positions=positions, key_valid=key_valid,
                                       query_slots=query_slots, kv_cache=kv_cache,
                                       cache_index=cache_index, layer=layer)
        h = constrain(h + attn_out, ("batch", "length", "act_embed"))
        h = constrain(h + self.mlp(self.post_attn_norm(h)), ("batch", "length", "act_embed"))
        return h, kv_cache


def _run_block(block, h, positions, key_valid, query_slots, kv_cache, cache_index, layer=0):
    return block(h, positions, key_valid, query_slots, kv_cache, cache_index, layer)


def _run_block_remat(remat: str):
    """:func:`_run_block` checkpointed with the named policy (itself for ``none``)."""
    return nnx_checkpoint(_run_block, remat)


class DecoderLM(nnx.Module):
    """Token embedding → N blocks → RMSNorm → LM head (or the tied embedding table)."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        kw = {"dtype": c.compute_dtype, "param_dtype": c.param_dtype}
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size, init_std=c.init_std, rngs=rngs, **kw)
        if c.scan_layers:
            self.layers = _stacked_blocks(config, rngs)
        else:
            self.layers = nnx.List([Block(c, rngs=rngs) for _ in range(c.num_layers)])
        self.norm = RMSNorm(c.hidden_size, eps=c.rms_eps, **kw)
        self.lm_head = None if c.tie_embeddings else Dense(
            c.hidden_size, c.vocab_size, axes=("embed", "vocab"),
            kernel_init=nnx.initializers.normal(c.init_std), grad_dtype=c.logits_grad_dtype,
            rngs=rngs, **kw)

    def embed(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings ``[batch, length, embed]`` in the compute dtype (for splicing images in)."""
        return self.embed_tokens(tokens)

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> dict:
        """An empty KV cache: ``k``/``v`` ``[layers, batch, kv_heads, max_length, head_dim]``, ``valid``
        ``[batch, max_length]`` (slots holding real tokens) and ``index`` (the next write slot).

        A cache in the compute dtype holds 16-bit floats as raw bits (uint16, see
        :func:`~mathvlm.models.layers.cache_storage_dtype`) so that CPU decoding updates it in place."""
        c = self.config
        shape = (c.num_layers, batch_size, c.num_kv_heads, max_length, c.head_dim)
        dtype = jnp.dtype(dtype or c.compute_dtype)
        # Bits are read back as the compute dtype, so only a cache in that dtype may store bits.
        if dtype == c.compute_dtype:
            dtype = cache_storage_dtype(dtype)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                "valid": jnp.zeros((batch_size, max_length), bool), "index": jnp.zeros((), jnp.int32)}

    def __call__(self, tokens: jax.Array | None = None, *, positions=None, attention_mask=None,
                 inputs_embeds=None, cache: dict | None = None, segment_ids=None):
        """Logits ``[batch, length, vocab]`` in float32, or ``(logits, new_cache)`` when ``cache`` is given.

        ``inputs_embeds`` replaces the token lookup (the VLM passes text embeddings with image features
        spliced in). ``positions`` default to the count of real tokens before each one (continuing
        from the cache), so left-padded rows get the same positions as unpadded ones.

        ``segment_ids [batch, length]`` (packed rows: 1, 2, ... per example, 0 = pad) keep attention
        inside each example; positions then default to restarting at 0 in every segment.
        """
        out = self.hidden(tokens, positions=positions, attention_mask=attention_mask,
                          inputs_embeds=inputs_embeds, cache=cache, segment_ids=segment_ids)
        h, new_cache = (out, None) if cache is None else out
        logits = self.unembed(h)
        return logits if cache is None else (logits, new_cache)

    def unembed(self, h: jax.Array) -> jax.Array:
        """float32 logits ``[..., vocab]`` of final-norm hidden states ``h [..., embed]``: the LM head
        (or the tied table) exactly as :meth:`__call__` applies it, so a chunked loss can call it on a
        slice of positions at a time."""
        if self.lm_head is None:
            logits = self.embed_tokens.attend(h)
        else:
            # float32 straight from the accumulator: a bf16 round trip of logits costs accuracy.
            logits = self.lm_head(h, out_dtype=jnp.float32)
        if logits.ndim == 3:
            logits = constrain(logits, ("batch", "length", "act_vocab"))
        return logits

    def hidden(self, tokens: jax.Array | None = None, *, positions=None, attention_mask=None,
               inputs_embeds=None, cache: dict | None = None, segment_ids=None):
        """Final-norm hidden states ``[batch, length, embed]`` (plus the new cache when given one):
        what :meth:`__call__` multiplies by :meth:`unembed_kernel`. Lets a chunked loss skip the full
        ``[batch, length, vocab]`` logits."""
        if inputs_embeds is None:
            h = self.embed(tokens)
        else:
            h = inputs_embeds.astype(self.config.compute_dtype)
        h = constrain(h, ("batch", "length", "act_embed"))
        batch, length = h.shape[:2]
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed rows) are for training; generation with a KV cache "
                             "runs one example per row")
        if attention_mask is not None:
            mask = jnp.asarray(attention_mask).astype(bool)
        elif segment_ids is not None:
            mask = jnp.asarray(segment_ids) > 0
        else:
            mask = jnp.ones((batch, length), bool)
        if segment_ids is not None:
            segment_ids = jnp.asarray(segment_ids, jnp.int32)
            # Padding and segment boundaries as integer segment ids (0 = padding): each attention
            # layer turns them into its mask (the einsum's [batch, L, L], or a fused kernel's segments).
            key_valid = jnp.where(mask, segment_ids, 0)
            query_slots, cache_index, start = jnp.arange(length)[None], None, 0
            if positions is None:
                positions = positions_in_segments(segment_ids)
        elif cache is None:
            key_valid, query_slots, cache_index, start = mask, jnp.arange(length)[None], None, 0
        else:
            cache_index = cache["index"]
            start = jnp.sum(cache["valid"], axis=-1, dtype=jnp.int32)
            key_valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], mask, cache_index, axis=1)
            query_slots = (cache_index + jnp.arange(length))[None]
        if positions is None:
            positions = positions_from_mask(mask, start)

        h, new_kv = self._run_layers(h, positions, key_valid, query_slots, cache, cache_index)
        h = self.norm(h)
        if cache is None:
            return h
        return h, {"k": new_kv[0], "v": new_kv[1], "valid": key_valid, "index": cache_index + length}

    def unembed_kernel(self) -> jax.Array:
        """The ``[embed, vocab]`` output projection (the embedding table transposed when tied; with
        LoRA on ``lm_head``, the merged kernel)."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...].T
        if hasattr(self.lm_head, "merged_kernel"):
            return self.lm_head.merged_kernel()
        return self.lm_head.kernel[...]

    def _run_layers(self, h, positions, key_valid, query_slots, cache, cache_index):
        c = self.config
        if c.scan_layers:
            return _scan_blocks(self.layers, h, positions, key_valid, query_slots, cache, cache_index,
                                remat=c.remat, num_layers=c.num_layers)
        run = _run_block_remat(c.remat)
        if cache is None:
            for block in self.layers:
                h, _ = run(block, h, positions, key_valid, query_slots, None, cache_index)
            return h, None
        # Every layer writes its slot straight into the whole [layers, ...] buffers (in place inside
        # the decoding loop; see mathvlm.models.layers.cache_write).
        kv = (cache["k"], cache["v"])
        for i, block in enumerate(self.layers):
            h, kv = run(block, h, positions, key_valid, query_slots, kv, cache_index, i)
        return h, kv


def _stacked_blocks(config: DecoderConfig, rngs: nnx.Rngs) -> Block:
    """One Block whose every parameter has a leading ``layers`` axis of size ``num_layers``."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return Block(config, rngs=rngs)

    return make(rngs)


def _scan_blocks(blocks: Block, h, positions, key_valid, query_slots, cache, cache_index, *, remat,
                 num_layers):
    """Run stacked blocks with ``jax.lax.scan``: layer ``i`` sees slice ``i`` of every parameter and
    writes layer ``i`` of the KV cache, which rides in the carry (updated in place, not re-stacked)."""
    graphdef, state = nnx.split(blocks)

    def body(carry, xs):
        h, kv = carry
        layer_state, layer = xs
        block = nnx.merge(graphdef, layer_state)
        return block(h, positions, key_valid, query_slots, kv, cache_index, layer), None

    # Inside the loop, common-subexpression elimination cannot undo the recomputation.
    body = checkpoint(body, remat, prevent_cse=False)
    kv = None if cache is None else (cache["k"], cache["v"])
    layers = None if cache is None else jnp.arange(num_layers)
    return jax.lax.scan(body, (h, kv), (state, layers))[0]


@registry.register("model", "decoder_lm")
def decoder_lm(preset: str | None = None, *, rngs: nnx.Rngs, lora_rank: int = 0,
               lora_alpha: float = 16.0, lora_targets=("q_proj", "v_proj"), **fields) -> DecoderLM:
    """A :class:`DecoderLM` from a preset name and/or :class:`DecoderConfig` fields (fields win).

    ``lora_rank > 0`` adds LoRA adapters (:mod:`mathvlm.models.lora`) to the ``lora_targets`` layers."""
    values = dict(DECODER_PRESETS[preset]) if preset else {}
    values.update(fields)
    model = DecoderLM(DecoderConfig(**values), rngs=rngs)
    if lora_rank:
        from mathvlm.models.lora import apply_lora
        apply_lora(model, rank=lora_rank, alpha=lora_alpha, targets=tuple(lora_targets), rngs=rngs)
    return model
