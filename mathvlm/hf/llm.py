"""HF ``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Qwen2ForCausalLM`` ↔ :class:`DecoderLM`.

Key layout (transformers 5): ``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj
.{weight,bias}``, ``model.layers.{i}.mlp.{gate,up,down}_proj.weight``,
``model.layers.{i}.{input,post_attention}_layernorm.weight``, ``model.norm.weight``, ``lm_head.weight``
(absent when embeddings are tied). Linear weights are ``(out, in)``; ours are ``(in, out)`` with the
head axes split out.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from mathvlm.hf import HFFormat, WeightSpec, register_hf
from mathvlm.models.decoder import DecoderConfig, DecoderLM
from mathvlm.models.layers import check_rope_scaling

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM"}


# Scaling parameters mathvlm models (see mathvlm.models.layers.rope_inv_freq); others must be absent.
_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_from_hf(hf: dict) -> tuple[float, dict | None]:
    """``(rope_theta, rope_scaling or None)`` from a config.json dict.

    transformers ≥ 5 writes ``rope_parameters`` (type, θ and scaling together); older files have a
    top-level ``rope_theta`` and an optional ``rope_scaling`` (``type`` or ``rope_type``). Like
    transformers 5.23, a ``rope_scaling`` entry wins over ``rope_parameters``."""
    params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    if params.pop("partial_rotary_factor", 1.0) != 1.0:
        raise NotImplementedError("partial_rotary_factor != 1")
    if kind == "default":
        return theta, None
    unknown = sorted(set(params) - set(_SCALING_KEYS))
    if unknown:
        raise NotImplementedError(f"rope scaling {kind!r} with parameters {unknown}")
    if kind == "llama3":
        params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    elif kind == "dynamic":
        # transformers' dynamic NTK always scales relative to max_position_embeddings.
        params["original_max_position_embeddings"] = hf.get("max_position_embeddings", 4096)
    return theta, check_rope_scaling({"rope_type": kind, **params})


def rope_to_hf(c: DecoderConfig) -> dict[str, Any]:
    """config.json RoPE entries: ``rope_theta`` + ``rope_parameters`` (transformers 5) and, with
    scaling, ``rope_scaling`` (what transformers 4.x reads; 5.23 reads it too, identically)."""
    out = {"rope_theta": c.rope_theta,
           "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}}
    if c.rope_scaling is None:
        return out
    scaling = dict(c.rope_scaling)
    if scaling["rope_type"] == "dynamic":
        # Not a transformers key for dynamic: it is max_position_embeddings there.
        if scaling.pop("original_max_position_embeddings") != c.max_position:
            raise ValueError("transformers' dynamic RoPE scales relative to max_position_embeddings; "
                             "original_max_position_embeddings must equal max_position")
    out["rope_parameters"] = {**scaling, "rope_theta": c.rope_theta}
    out["rope_scaling"] = dict(scaling)
    return out


def config_from_hf(hf: dict[str, Any], **overrides) -> DecoderConfig:
    """A :class:`DecoderConfig` from a LLaMA / Mistral / Qwen2 config.json dict (or a LLaVA
    ``text_config``); ``overrides`` set other fields (dtype, scan_layers, ...)."""
    arch = hf.get("model_type", "llama")
    if arch not in _ARCHITECTURES:
        raise ValueError(f"not a decoder config: model_type {arch!r}")
    if hf.get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"hidden_act {hf['hidden_act']!r} (only silu / SwiGLU)")
    if hf.get("mlp_bias"):
        raise NotImplementedError("mlp_bias=True")
    heads = hf["num_attention_heads"]
    sliding = None
    if arch == "mistral":
        sliding = hf.get("sliding_window")
    elif arch == "qwen2" and hf.get("use_sliding_window"):
        raise NotImplementedError("Qwen2 use_sliding_window=True")
    attention_bias = bool(hf.get("attention_bias", False))
    theta, scaling = rope_from_hf(hf)
    values = {
        "vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"], "num_layers": hf["num_hidden_layers"],
        "num_heads": heads, "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "rope_theta": theta, "rope_scaling": scaling, "rms_eps": hf.get("rms_norm_eps", 1e-6),
        "qkv_bias": arch == "qwen2" or attention_bias, "o_bias": arch != "qwen2" and attention_bias,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "max_position": hf.get("max_position_embeddings", 4096), "sliding_window": sliding,
        "arch": arch, "init_std": hf.get("initializer_range", 0.02),
    }
    values.update(overrides)
    return DecoderConfig(**values)


def config_to_hf(c: DecoderConfig) -> dict[str, Any]:
    """config.json for ``c`` (transformers 5 reads ``rope_parameters``, older versions ``rope_theta``)."""
    if c.arch == "qwen2" and (not c.qkv_bias or c.o_bias):
        raise ValueError("Qwen2 layout needs qkv_bias=True and o_bias=False")
    if c.arch != "qwen2" and c.qkv_bias != c.o_bias:
        raise ValueError(f"{c.arch} layout has one attention_bias flag; got qkv_bias={c.qkv_bias}, "
                         f"o_bias={c.o_bias}")
    out = {
        "architectures": [_ARCHITECTURES[c.arch]], "model_type": c.arch,
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim, "hidden_act": "silu", "rms_norm_eps": c.rms_eps,
        **rope_to_hf(c),
        "max_position_embeddings": c.max_position, "tie_word_embeddings": c.tie_embeddings,
        "initializer_range": c.init_std, "dtype": c.param_dtype, "torch_dtype": c.param_dtype,
    }
    if c.arch == "llama":
        out.update(attention_bias=c.qkv_bias, mlp_bias=False)
    elif c.arch == "mistral":
        out["sliding_window"] = c.sliding_window
    else:
        out.update(use_sliding_window=False, sliding_window=None)
    return out


def decoder_weights(c: DecoderConfig, *, hf_prefix: str = "model.", head_key: str = "lm_head.weight",
                    path_prefix: tuple = ()) -> list[WeightSpec]:
    """WeightSpecs of a :class:`DecoderLM` with config ``c``.

    A composite model passes its own ``hf_prefix`` (e.g. ``"language_model.model."``), ``head_key`` and
    ``path_prefix`` (the decoder's attribute path inside it, e.g. ``("decoder",)``)."""
    E, H, K, D = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim

    def linear(heads_out=None, heads_in=None):
        """(out, in) torch weight ↔ our (in..., out...) kernel."""
        if heads_out:   # (heads*D, E) ↔ (E, heads, D)
            return (lambda w: w.T.reshape(E, heads_out, D), lambda k: k.reshape(E, heads_out * D).T)
        if heads_in:    # (E, H*D) ↔ (H, D, E)
            return (lambda w: w.T.reshape(heads_in, D, E), lambda k: k.reshape(heads_in * D, E).T)
        return (lambda w: w.T, lambda k: k.T)

    def bias(heads):
        return (lambda b: b.reshape(heads, D), lambda b: b.reshape(heads * D))

    p = tuple(path_prefix)
    specs = [WeightSpec(f"{hf_prefix}embed_tokens.weight", p + ("embed_tokens", "embedding")),
             WeightSpec(f"{hf_prefix}norm.weight", p + ("norm", "scale"))]
    if not c.tie_embeddings:
        specs.append(WeightSpec(head_key, p + ("lm_head", "kernel"), *linear()))
    for i in range(c.num_layers):
        hf = f"{hf_prefix}layers.{i}."
        # Scanned layers live in one stacked module; plain ones in a list indexed by i.
        block, layer = (p + ("layers",), i) if c.scan_layers else (p + ("layers", i), None)
        entries = [
            ("input_layernorm.weight", ("input_norm", "scale"), None),
            ("post_attention_layernorm.weight", ("post_attn_norm", "scale"), None),
            ("self_attn.q_proj.weight", ("attn", "q_proj", "kernel"), linear(heads_out=H)),
            ("self_attn.k_proj.weight", ("attn", "k_proj", "kernel"), linear(heads_out=K)),
            ("self_attn.v_proj.weight", ("attn", "v_proj", "kernel"), linear(heads_out=K)),
            ("self_attn.o_proj.weight", ("attn", "o_proj", "kernel"), linear(heads_in=H)),
            ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), linear()),
            ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), linear()),
            ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), linear()),
        ]
        if c.qkv_bias:
            entries += [("self_attn.q_proj.bias", ("attn", "q_proj", "bias"), bias(H)),
                        ("self_attn.k_proj.bias", ("attn", "k_proj", "bias"), bias(K)),
                        ("self_attn.v_proj.bias", ("attn", "v_proj", "bias"), bias(K))]
        if c.o_bias:
            entries.append(("self_attn.o_proj.bias", ("attn", "o_proj", "bias"), None))
        for key, path, fns in entries:
            specs.append(WeightSpec(hf + key, block + path, *(fns or ()), layer=layer))
    return specs


def decoder_build_options(c: DecoderConfig) -> dict[str, Any]:
    """Build options beyond config.json that recreate a decoder's layout: dtypes, ``scan_layers`` and
    the ``remat`` policy name (older records may hold true/false: DecoderConfig reads them as
    ``full`` / ``none``)."""
    return {"param_dtype": c.param_dtype, "dtype": c.dtype, "scan_layers": c.scan_layers,
            "remat": c.remat}


@register_hf("llama", "mistral", "qwen2", classes=(DecoderLM,))
class DecoderFormat(HFFormat):
    # Old LLaMA checkpoints store the rotary frequencies; tied models may still carry lm_head.
    ignore_suffixes = ("rotary_emb.inv_freq",)

    def build(self, hf_config, *, rngs: nnx.Rngs | None = None, **overrides) -> DecoderLM:
        if "vision" in overrides:
            raise ValueError(f"image-tower options vision={overrides['vision']!r} given for a "
                             f"{hf_config.get('model_type')!r} language model, which has no image tower")
        return DecoderLM(config_from_hf(hf_config, **overrides), rngs=rngs or nnx.Rngs(0))

    def weights(self, model: DecoderLM):
        return decoder_weights(model.config)

    def hf_config(self, model: DecoderLM):
        return config_to_hf(model.config)

    def build_options(self, model: DecoderLM):
        return decoder_build_options(model.config)

    def ignored(self, model, key):
        return super().ignored(model, key) or (model.config.tie_embeddings and key == "lm_head.weight")
