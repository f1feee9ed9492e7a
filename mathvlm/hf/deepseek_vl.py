"""DeepSeek-VL hybrid checkpoints (Math-PUMA's DeepSeek-Math-VL-7B) ↔ :class:`HybridVLM`.

* ``deepseek_vl_hybrid`` folders (transformers' ``DeepseekVLHybridForConditionalGeneration``) load
  with :func:`mathvlm.hf.from_pretrained` and are written by :func:`mathvlm.hf.save_pretrained`.
* :func:`import_deepseek_vl` turns a folder of the original release (config.json ``multi_modality``,
  safetensors or ``.bin`` shards) into such a folder, with tokenizer, image processor and chat template.
* :func:`preprocess_image` gives both resolutions as the release's processor and tower do.

The renames follow transformers' ``convert_deepseek_vl_hybrid_weights_to_hf.py``: the SAM keys
move from ``vision_model.vision_tower_high.vision_tower.`` to ``model.high_res_vision_model.
vision_encoder.`` (``neck_hd`` → ``model.high_res_vision_neck``, ``downsamples`` →
``model.high_res_vision_proj``, ``hd_alpha_downsamples`` → ``model.high_res_vision_alpha``), timm's
SigLIP (fused ``qkv``) becomes HF SigLIP under ``model.vision_model.``, the aligner's ``high_up_proj`` /
``low_up_proj`` / ``layers.1`` become ``high_res_vision_proj`` / ``vision_proj`` / ``proj``.
"""

from __future__ import annotations

from flax import nnx

from mathvlm.hf import HFFormat, WeightSpec, register_hf
from mathvlm.hf.llm import config_from_hf, config_to_hf, decoder_weights
from mathvlm.hf.vision import vit_config_from_hf, vit_config_to_hf, vit_weights
from mathvlm.models.hybrid_vision import HybridVLM, HybridVLMConfig, SamConfig

# The convert_* functions and preprocess_image live in deepseek_vl_import (torch-free except the
# .bin reader) and are re-exported here: ``mathvlm.hf.deepseek_vl.import_deepseek_vl``.


def _linear():
    return (lambda w: w.T, lambda k: k.T)


def _conv():   # torch (out, in, kh, kw) ↔ ours (kh, kw, in, out)
    return (lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))


def _neck(hf, p):
    return [WeightSpec(hf + "conv1.weight", p + ("conv1", "kernel"), *_conv()),
            WeightSpec(hf + "conv2.weight", p + ("conv2", "kernel"), *_conv()),
            WeightSpec(hf + "layer_norm1.weight", p + ("layer_norm1", "scale")),
            WeightSpec(hf + "layer_norm1.bias", p + ("layer_norm1", "bias")),
            WeightSpec(hf + "layer_norm2.weight", p + ("layer_norm2", "scale")),
            WeightSpec(hf + "layer_norm2.bias", p + ("layer_norm2", "bias"))]


def sam_weights(c: SamConfig, hf: str, p: tuple) -> list[WeightSpec]:
    """``SamVisionEncoder`` keys (``hf`` ends with ``vision_encoder.``) ↔ :class:`SamEncoder` at ``p``."""
    E, H = c.hidden_size, c.num_heads
    specs = [WeightSpec(hf + "patch_embed.projection.weight", p + ("patch_kernel",), *_conv()),
             WeightSpec(hf + "patch_embed.projection.bias", p + ("patch_bias",)),
             WeightSpec(hf + "pos_embed", p + ("pos_embed",), lambda w: w[0], lambda k: k[None])]
    for i in range(c.num_layers):
        h, q = f"{hf}layers.{i}.", p + ("layers", i)
        specs += [
            WeightSpec(h + "attn.qkv.weight", q + ("attn", "qkv", "kernel"),
                       lambda w: w.T.reshape(E, 3, H, -1), lambda k: k.reshape(E, -1).T),
            WeightSpec(h + "attn.qkv.bias", q + ("attn", "qkv", "bias"),
                       lambda b: b.reshape(3, H, -1), lambda b: b.reshape(-1)),
            WeightSpec(h + "attn.proj.weight", q + ("attn", "proj", "kernel"),
                       lambda w: w.T.reshape(H, -1, E), lambda k: k.reshape(-1, E).T),
            WeightSpec(h + "attn.proj.bias", q + ("attn", "proj", "bias")),
            WeightSpec(h + "attn.rel_pos_h", q + ("attn", "rel_pos_h")),
            WeightSpec(h + "attn.rel_pos_w", q + ("attn", "rel_pos_w"))]
        for ln in ("layer_norm1", "layer_norm2"):
            specs += [WeightSpec(h + f"{ln}.weight", q + (ln, "scale")),
                      WeightSpec(h + f"{ln}.bias", q + (ln, "bias"))]
        for lin in ("lin1", "lin2"):
            specs += [WeightSpec(h + f"mlp.{lin}.weight", q + (lin, "kernel"), *_linear()),
                      WeightSpec(h + f"mlp.{lin}.bias", q + (lin, "bias"))]
    return specs + _neck(hf + "neck.", p + ("neck",))


def sam_config_from_hf(hf: dict, **overrides) -> SamConfig:
    for key, want in (("use_abs_pos", True), ("use_rel_pos", True), ("qkv_bias", True),
                      ("hidden_act", "gelu")):
        if hf.get(key, want) != want:
            raise NotImplementedError(f"SAM high_res_vision_config {key}={hf[key]!r} (only {want!r})")
    mlp = hf.get("mlp_dim") or int(hf["hidden_size"] * hf.get("mlp_ratio", 4.0))
    return SamConfig(image_size=hf["image_size"], patch_size=hf["patch_size"],
                     num_channels=hf.get("num_channels", 3), hidden_size=hf["hidden_size"],
                     mlp_dim=mlp, num_layers=hf["num_hidden_layers"],
                     num_heads=hf["num_attention_heads"], window_size=hf["window_size"],
                     global_attn_indexes=tuple(hf["global_attn_indexes"]),
                     output_channels=hf["output_channels"],
                     layer_norm_eps=hf.get("layer_norm_eps", 1e-6), **overrides)


def sam_config_to_hf(c: SamConfig) -> dict:
    return {"model_type": "sam_vision_model", "image_size": c.image_size, "patch_size": c.patch_size,
            "num_channels": c.num_channels, "hidden_size": c.hidden_size, "mlp_dim": c.mlp_dim,
            "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
            "window_size": c.window_size, "global_attn_indexes": list(c.global_attn_indexes),
            "output_channels": c.output_channels, "layer_norm_eps": c.layer_norm_eps,
            "hidden_act": "gelu", "qkv_bias": True, "use_abs_pos": True, "use_rel_pos": True}


def _tied(hf_config: dict) -> bool:
    # DeepseekVLHybridConfig defaults tie_word_embeddings to True at the top level; the LLaMA text
    # config says False. A folder must say the same in both places (import writes both).
    top = hf_config.get("tie_word_embeddings", True)
    text = hf_config.get("text_config", {}).get("tie_word_embeddings", top)
    if bool(top) != bool(text):
        raise ValueError(f"config.json says tie_word_embeddings={top} but text_config says {text}; "
                         "make them agree")
    return bool(top)


@register_hf("deepseek_vl_hybrid", classes=(HybridVLM,))
class DeepseekVLHybridFormat(HFFormat):
    ignore_suffixes = ("position_ids",)
    # transformers 4.x nests the SigLIP tower one level deeper.
    key_aliases = (("model.vision_model.vision_model.", "model.vision_model."),)

    def build(self, hf_config, *, rngs=None, **overrides):
        # (vision_use_head defaults to True as in transformers; the head is loaded but never used.)
        vision_hf = {**hf_config["vision_config"], "model_type": "siglip_vision_model"}
        text = dict(hf_config["text_config"])
        text.setdefault("model_type", "llama")
        text["tie_word_embeddings"] = _tied(hf_config)
        config = HybridVLMConfig(
            sam=sam_config_from_hf(hf_config["high_res_vision_config"],
                                   **{k: v for k, v in overrides.items() if k in ("param_dtype", "dtype")}),
            vision=vit_config_from_hf(vision_hf, **{k: v for k, v in overrides.items()
                                                    if k in ("param_dtype", "dtype")}),
            decoder=config_from_hf(text, **overrides),
            image_token_id=hf_config.get("image_token_id", 100015))
        return HybridVLM(config, rngs=rngs or nnx.Rngs(0))

    def weights(self, model: HybridVLM):
        c = model.config
        specs = sam_weights(c.sam, "model.high_res_vision_model.vision_encoder.",
                            ("vision_tower", "sam"))
        specs += _neck("model.high_res_vision_neck.", ("vision_tower", "neck_hd"))
        specs += [WeightSpec("model.high_res_vision_proj.conv1.weight",
                             ("vision_tower", "downsample", "conv1", "kernel"), *_conv()),
                  WeightSpec("model.high_res_vision_proj.conv2.weight",
                             ("vision_tower", "downsample", "conv2", "kernel"), *_conv()),
                  WeightSpec("model.high_res_vision_alpha", ("vision_tower", "alpha"))]
        specs += vit_weights(c.vision, "model.vision_model.", ("vision_tower", "siglip"))
        for hf, ours in (("vision_proj", "low_up_proj"), ("high_res_vision_proj", "high_up_proj"),
                         ("proj", "proj")):
            specs += [WeightSpec(f"model.aligner.{hf}.weight", ("projector", ours, "kernel"), *_linear()),
                      WeightSpec(f"model.aligner.{hf}.bias", ("projector", ours, "bias"))]
        specs += decoder_weights(c.decoder, hf_prefix="model.language_model.",
                                 head_key="lm_head.weight", path_prefix=("decoder",))
        return specs

    def hf_config(self, model: HybridVLM):
        c = model.config
        vision = vit_config_to_hf(c.vision)
        vision.pop("architectures")
        vision["vision_use_head"] = c.vision.use_head
        text = config_to_hf(c.decoder)
        text.pop("architectures")
        return {"architectures": ["DeepseekVLHybridForConditionalGeneration"],
                "model_type": "deepseek_vl_hybrid", "text_config": text, "vision_config": vision,
                "high_res_vision_config": sam_config_to_hf(c.sam), "image_token_id": c.image_token_id,
                "tie_word_embeddings": c.decoder.tie_embeddings}

    def build_options(self, model: HybridVLM):
        d = model.config.decoder
        return {"param_dtype": d.param_dtype, "dtype": d.dtype}

    def ignored(self, model, key):
        return super().ignored(model, key) or (model.config.decoder.tie_embeddings
                                               and key == "lm_head.weight")


from mathvlm.hf.deepseek_vl_import import (  # noqa: E402,F401  (re-exported; imports this module)
    CHAT_TEMPLATE,
    convert_config,
    convert_key,
    import_deepseek_vl,
    preprocess_image,
)
