"""HF vision families ↔ mathvlm: ``CLIPVisionModel``, ``SiglipVisionModel``, ``CLIPModel``,
``SiglipModel``, ``CLIPTextModel``, ``SiglipTextModel`` and ``LlavaForConditionalGeneration``. Read from config.json + safetensors only (no
torch, pickle or remote code).

Torch layouts: linear ``(out, in)`` → our ``(in, out)`` (attention kernels with heads split out);
patch conv ``(out, in, kh, kw)`` → ``(kh, kw, in, out)``. Checkpoints of other transformers versions
use other key prefixes (``vision_model.``, ``model.vision_tower.``, ``model.language_model.`` ...):
each format's ``key_aliases`` rename them to the transformers-5.23 layout first.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from flax import nnx

from mathvlm.hf import HFFormat, WeightSpec, register_hf
from mathvlm.hf.llm import config_from_hf, config_to_hf, decoder_build_options, decoder_weights
from mathvlm.models.dual_encoder import DualEncoder
from mathvlm.models.text_tower import TextTower, TextTowerConfig
from mathvlm.models.vit import ViT, ViTConfig
from mathvlm.models.vlm import VLM, VLMConfig

# ------------------------------------------------------------------------------------ layouts

def _linear():
    return (lambda w: w.T, lambda k: k.T)


def _heads_out(E, H):   # (H*D, E) ↔ (E, H, D)
    return (lambda w: w.T.reshape(E, H, -1), lambda k: k.reshape(E, -1).T)


def _heads_in(E, H):    # (E, H*D) ↔ (H, D, E)
    return (lambda w: w.T.reshape(H, -1, E), lambda k: k.reshape(-1, E).T)


def _bias_heads(H):
    return (lambda b: b.reshape(H, -1), lambda b: b.reshape(-1))


def encoder_weights(num_layers, E, H, hf_prefix, path_prefix, *, scan_layers: bool = False
                    ) -> list[WeightSpec]:
    """Pre-norm encoder layers shared by CLIP/SigLIP image and CLIP text towers. With
    ``scan_layers`` layer ``i`` is slice ``i`` of one stacked module at ``path_prefix + ("layers",)``
    (``WeightSpec.layer``), as :func:`mathvlm.hf.llm.decoder_weights` maps scanned decoder blocks."""
    specs = []
    for i in range(num_layers):
        hf = f"{hf_prefix}encoder.layers.{i}."
        p, layer = ((path_prefix + ("layers",), i) if scan_layers
                    else (path_prefix + ("layers", i), None))
        layer_specs = []
        for ln in ("layer_norm1", "layer_norm2"):
            layer_specs += [WeightSpec(hf + f"{ln}.weight", p + (ln, "scale")),
                            WeightSpec(hf + f"{ln}.bias", p + (ln, "bias"))]
        for name in ("q_proj", "k_proj", "v_proj"):
            layer_specs += [
                WeightSpec(hf + f"self_attn.{name}.weight", p + ("self_attn", name, "kernel"),
                           *_heads_out(E, H)),
                WeightSpec(hf + f"self_attn.{name}.bias", p + ("self_attn", name, "bias"),
                           *_bias_heads(H))]
        layer_specs += [
            WeightSpec(hf + "self_attn.out_proj.weight", p + ("self_attn", "out_proj", "kernel"),
                       *_heads_in(E, H)),
            WeightSpec(hf + "self_attn.out_proj.bias", p + ("self_attn", "out_proj", "bias"))]
        for fc in ("fc1", "fc2"):
            layer_specs += [WeightSpec(hf + f"mlp.{fc}.weight", p + ("mlp", fc, "kernel"), *_linear()),
                            WeightSpec(hf + f"mlp.{fc}.bias", p + ("mlp", fc, "bias"))]
        specs += [dataclasses.replace(spec, layer=layer) for spec in layer_specs]
    return specs


def vit_weights(c: ViTConfig, hf_prefix: str = "", path_prefix: tuple = ()) -> list[WeightSpec]:
    E, H, p = c.hidden_size, c.num_heads, tuple(path_prefix)
    conv = (lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))
    specs = [WeightSpec(f"{hf_prefix}embeddings.patch_embedding.weight", p + ("patch_kernel",), *conv),
             WeightSpec(f"{hf_prefix}embeddings.position_embedding.weight", p + ("position_embedding",)),
             WeightSpec(f"{hf_prefix}post_layernorm.weight", p + ("post_layernorm", "scale")),
             WeightSpec(f"{hf_prefix}post_layernorm.bias", p + ("post_layernorm", "bias"))]
    if c.has_class_token:
        specs += [WeightSpec(f"{hf_prefix}embeddings.class_embedding", p + ("class_embedding",)),
                  WeightSpec(f"{hf_prefix}pre_layrnorm.weight", p + ("pre_layrnorm", "scale")),
                  WeightSpec(f"{hf_prefix}pre_layrnorm.bias", p + ("pre_layrnorm", "bias"))]
    else:
        specs.append(WeightSpec(f"{hf_prefix}embeddings.patch_embedding.bias", p + ("patch_bias",)))
    specs += encoder_weights(c.num_layers, E, H, hf_prefix, p, scan_layers=c.scan_layers)
    if c.use_head:
        hf, hp = f"{hf_prefix}head.", p + ("head",)
        specs += [
            WeightSpec(hf + "probe", hp + ("probe",)),
            # Fused (3E, E) MultiheadAttention weight ↔ (E, 3, H, D).
            WeightSpec(hf + "attention.in_proj_weight", hp + ("in_proj", "kernel"),
                       lambda w: w.T.reshape(E, 3, H, -1), lambda k: k.reshape(E, -1).T),
            WeightSpec(hf + "attention.in_proj_bias", hp + ("in_proj", "bias"),
                       lambda b: b.reshape(3, H, -1), lambda b: b.reshape(-1)),
            WeightSpec(hf + "attention.out_proj.weight", hp + ("out_proj", "kernel"), *_heads_in(E, H)),
            WeightSpec(hf + "attention.out_proj.bias", hp + ("out_proj", "bias")),
            WeightSpec(hf + "layernorm.weight", hp + ("layernorm", "scale")),
            WeightSpec(hf + "layernorm.bias", hp + ("layernorm", "bias"))]
        for fc in ("fc1", "fc2"):
            specs += [WeightSpec(hf + f"mlp.{fc}.weight", hp + ("mlp", fc, "kernel"), *_linear()),
                      WeightSpec(hf + f"mlp.{fc}.bias", hp + ("mlp", fc, "bias"))]
    return specs


# ------------------------------------------------------------------------------------ configs

def vit_config_from_hf(hf: dict, **overrides) -> ViTConfig:
    siglip = hf.get("model_type", "").startswith("siglip")
    values = {
        "flavour": "siglip" if siglip else "clip", "image_size": hf["image_size"],
        "patch_size": hf["patch_size"], "num_channels": hf.get("num_channels", 3),
        "hidden_size": hf["hidden_size"], "intermediate_size": hf["intermediate_size"],
        "num_layers": hf["num_hidden_layers"], "num_heads": hf["num_attention_heads"],
        "layer_norm_eps": hf.get("layer_norm_eps", 1e-6 if siglip else 1e-5),
        "hidden_act": hf.get("hidden_act", "gelu_pytorch_tanh" if siglip else "quick_gelu"),
        "use_head": bool(siglip and hf.get("vision_use_head", True)),
    }
    values.update(overrides)
    return ViTConfig(**values)


# ViTConfig fields config.json fixes (vit_config_from_hf reads them); every other field is a build
# option: how the tower is laid out and computed (scan_layers, remat, dtype, param_dtype, ...).
VISION_ARCHITECTURE = ("flavour", "image_size", "patch_size", "num_channels", "hidden_size",
                       "intermediate_size", "num_layers", "num_heads", "layer_norm_eps", "hidden_act",
                       "use_head")
VISION_BUILD_OPTIONS = tuple(f.name for f in dataclasses.fields(ViTConfig)
                             if f.name not in VISION_ARCHITECTURE)


def vision_options(options) -> dict:
    """The :class:`ViTConfig` overrides of a loader's ``vision`` option: a dict (None: none) of
    :data:`VISION_BUILD_OPTIONS` (``scan_layers``, ``remat``, ``dtype``, ``param_dtype``).
    Architecture fields and unknown keys raise ``ValueError``."""
    if options is None:
        return {}
    options = dict(options)
    unknown = sorted(set(options) - set(VISION_BUILD_OPTIONS))
    if unknown:
        raise ValueError(f"image-tower options {unknown}: the loader's vision options are "
                         f"{list(VISION_BUILD_OPTIONS)} (config.json fixes the tower's architecture)")
    return options


def vision_build_options(c: ViTConfig) -> dict:
    """The ``vision`` loader option that rebuilds a tower with config ``c`` in the same layout."""
    return {name: getattr(c, name) for name in VISION_BUILD_OPTIONS}


def vit_config_to_hf(c: ViTConfig) -> dict:
    siglip = c.flavour == "siglip"
    out = {"model_type": "siglip_vision_model" if siglip else "clip_vision_model",
           "architectures": ["SiglipVisionModel" if siglip else "CLIPVisionModel"],
           "image_size": c.image_size, "patch_size": c.patch_size, "num_channels": c.num_channels,
           "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
           "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
           "layer_norm_eps": c.layer_norm_eps, "hidden_act": c.hidden_act, "dtype": c.param_dtype}
    if siglip:
        out["vision_use_head"] = c.use_head
    return out


def text_config_from_hf(hf: dict) -> TextTowerConfig:
    """CLIP (``clip_text_model``) or SigLIP (``siglip_text_model``) text config."""
    siglip = hf.get("model_type", "").startswith("siglip")
    values = {
        "vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"], "num_layers": hf["num_hidden_layers"],
        "num_heads": hf["num_attention_heads"],
        "max_position": hf.get("max_position_embeddings", 64 if siglip else 77),
        "layer_norm_eps": hf.get("layer_norm_eps", 1e-6 if siglip else 1e-5),
        "hidden_act": hf.get("hidden_act", "gelu_pytorch_tanh" if siglip else "quick_gelu"),
        "eos_token_id": hf.get("eos_token_id", 49407 if siglip else 2)}
    if siglip:
        values.update(flavour="siglip",
                      projection_size=hf.get("projection_size") or hf["hidden_size"])
    return TextTowerConfig(**values)


def text_config_to_hf(c: TextTowerConfig) -> dict:
    out = {"model_type": f"{c.flavour}_text_model", "vocab_size": c.vocab_size,
           "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
           "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
           "max_position_embeddings": c.max_position, "layer_norm_eps": c.layer_norm_eps,
           "hidden_act": c.hidden_act, "eos_token_id": c.eos_token_id}
    if c.flavour == "siglip":
        out["projection_size"] = c.projection_size or c.hidden_size
    return out


def text_weights(c: TextTowerConfig, hf_prefix: str = "text_model.",
                 path_prefix: tuple = ("text_model",)) -> list[WeightSpec]:
    """``CLIPTextTransformer`` / ``SiglipTextTransformer`` keys (SigLIP adds ``head``)."""
    p = tuple(path_prefix)
    specs = [WeightSpec(f"{hf_prefix}embeddings.token_embedding.weight", p + ("token_embedding",)),
             WeightSpec(f"{hf_prefix}embeddings.position_embedding.weight",
                        p + ("position_embedding",)),
             WeightSpec(f"{hf_prefix}final_layer_norm.weight", p + ("final_layer_norm", "scale")),
             WeightSpec(f"{hf_prefix}final_layer_norm.bias", p + ("final_layer_norm", "bias"))]
    specs += encoder_weights(c.num_layers, c.hidden_size, c.num_heads, hf_prefix, p)
    if c.flavour == "siglip":
        specs += [WeightSpec(f"{hf_prefix}head.weight", p + ("head", "kernel"), *_linear()),
                  WeightSpec(f"{hf_prefix}head.bias", p + ("head", "bias"))]
    return specs


# ------------------------------------------------------------------------------------ formats

@register_hf("clip_vision_model", "siglip_vision_model", classes=(ViT,))
class VisionTowerFormat(HFFormat):
    """Standalone ``CLIPVisionModel`` / ``SiglipVisionModel`` folders. Build options: ViTConfig
    fields (``scan_layers``, ``remat``, dtypes), flat or as a ``vision`` dict as for a VLM."""
    ignore_suffixes = ("position_ids",)
    key_aliases = (("vision_model.", ""),)     # transformers 4.x nests the tower one level deeper

    def build(self, hf_config, *, rngs=None, vision=None, **overrides):
        overrides = {**overrides, **vision_options(vision)}
        return ViT(vit_config_from_hf(hf_config, **overrides), rngs=rngs or nnx.Rngs(0))

    def weights(self, model):
        return vit_weights(model.config)

    def hf_config(self, model):
        return vit_config_to_hf(model.config)

    def build_options(self, model):
        return vision_build_options(model.config)


@register_hf("clip_text_model", "siglip_text_model", classes=(TextTower,))
class TextTowerFormat(HFFormat):
    """Standalone ``CLIPTextModel`` / ``SiglipTextModel`` folders."""
    ignore_suffixes = ("position_ids",)
    key_aliases = (("text_model.", ""),)       # transformers 4.x nests the tower one level deeper

    def build(self, hf_config, *, rngs=None, **overrides):
        return TextTower(dataclasses.replace(text_config_from_hf(hf_config), **overrides),
                         rngs=rngs or nnx.Rngs(0))

    def weights(self, model):
        return text_weights(model.config, "", ())

    def hf_config(self, model):
        c = model.config
        return {**text_config_to_hf(c),
                "architectures": ["SiglipTextModel" if c.flavour == "siglip" else "CLIPTextModel"]}


# SiglipModel stores its scalars as shape-(1,) tensors, CLIPModel as 0-d ones; ours are 0-d.
_SCALAR_1 = (lambda x: x.reshape(()), lambda x: x.reshape(1))


@register_hf("clip", "siglip", classes=(DualEncoder,))
class DualEncoderFormat(HFFormat):
    """``CLIPModel`` (projections, ``logit_scale``) and ``SiglipModel`` (no projections, text
    ``head``, ``logit_scale`` + ``logit_bias``); the text tower's flavour picks the layout."""
    ignore_suffixes = ("position_ids",)

    def build(self, hf_config, *, rngs=None, vision=None, **overrides):
        """``overrides`` (flat) and ``vision`` (a dict of :data:`VISION_BUILD_OPTIONS`) set image-tower
        fields; the text tower has none."""
        kind = hf_config["model_type"]
        vision_type = hf_config.get("vision_config", {}).get("model_type", f"{kind}_vision_model")
        if vision_type != f"{kind}_vision_model":
            raise NotImplementedError(f"{kind} model with a {vision_type!r} vision config")
        vision = vit_config_from_hf({**hf_config["vision_config"], "model_type": vision_type},
                                    **{**overrides, **vision_options(vision)})
        text = text_config_from_hf({**hf_config["text_config"], "model_type": f"{kind}_text_model"})
        if kind == "siglip":
            # The real scalars come from the file; these inits only matter for random builds.
            return DualEncoder(vision, text, None, logit_scale_init=math.log(10.0),
                               logit_bias_init=-10.0, rngs=rngs or nnx.Rngs(0))
        return DualEncoder(vision, text, hf_config.get("projection_dim", 512),
                           logit_scale_init=hf_config.get("logit_scale_init_value", math.log(1 / 0.07)),
                           rngs=rngs or nnx.Rngs(0))

    def weights(self, model: DualEncoder):
        t = model.text_model.config
        specs = vit_weights(model.vision_model.config, "vision_model.", ("vision_model",))
        specs += text_weights(t)
        if t.flavour == "siglip":
            return specs + [WeightSpec("logit_scale", ("logit_scale",), *_SCALAR_1),
                            WeightSpec("logit_bias", ("logit_bias",), *_SCALAR_1)]
        return specs + [
            WeightSpec("visual_projection.weight", ("visual_projection", "kernel"), *_linear()),
            WeightSpec("text_projection.weight", ("text_projection", "kernel"), *_linear()),
            WeightSpec("logit_scale", ("logit_scale",))]

    def build_options(self, model: DualEncoder):
        return {"vision": vision_build_options(model.vision_model.config)}

    def hf_config(self, model: DualEncoder):
        t = model.text_model.config
        vision = vit_config_to_hf(model.vision_model.config)
        vision.pop("architectures")
        text = text_config_to_hf(t)
        if t.flavour == "siglip":
            if model.projection_dim is not None or model.logit_bias is None:
                raise ValueError("the SiglipModel layout has no projections and needs a logit_bias")
            if vision["model_type"] != "siglip_vision_model":
                raise ValueError("the SiglipModel layout needs a SigLIP image tower")
            return {"architectures": ["SiglipModel"], "model_type": "siglip",
                    "vision_config": vision, "text_config": text}
        if model.projection_dim is None or model.logit_bias is not None:
            raise ValueError("the CLIPModel layout needs projections and no logit_bias")
        if vision["model_type"] != "clip_vision_model":
            raise ValueError("the CLIPModel layout needs a CLIP image tower (use a SigLIP text tower "
                             "for a SigLIP image tower)")
        return {"architectures": ["CLIPModel"], "model_type": "clip",
                "projection_dim": model.projection_dim,
                "logit_scale_init_value": float(np.asarray(model.logit_scale.get_value())),
                "vision_config": vision, "text_config": text}


_LLAVA_STRATEGY = {"default": "drop_first", "full": "keep_all"}
LLAVA_PROJECTORS = ("mlp2x_gelu", "gated", "linear")


def _check_llava_projector(c: VLMConfig) -> None:
    """The projectors a LLaVA folder can hold: transformers' ``mlp2x_gelu`` and, in the same layout
    with ``"projector_type"`` in config.json, Math-PUMA's ``gated`` and the single ``linear``."""
    if c.projector not in LLAVA_PROJECTORS:
        raise ValueError(f"cannot write a VLM with the {c.projector!r} projector as a LLaVA folder; "
                         f"LLaVA folders hold the projectors {LLAVA_PROJECTORS}")


def transformers_gap(c: VLMConfig) -> str | None:
    """Why transformers' ``LlavaForConditionalGeneration`` cannot run a VLM with config ``c`` as
    mathvlm does (its folder is then for mathvlm only), or None when it can."""
    if c.projector != "mlp2x_gelu":
        return (f"the {c.projector!r} projector (transformers' LlavaMultiModalProjector is only the "
                f"2-layer MLP): config.json says projector_type={c.projector!r}")
    if c.projector_hidden not in (None, c.decoder.hidden_size):
        return (f"projector hidden width {c.projector_hidden} (transformers' is the decoder width "
                f"{c.decoder.hidden_size})")
    if c.feature_norm:
        return (f"feature_norm={c.feature_norm!r} (image features standardised with "
                f"multi_modal_projector.feature_stats; transformers ignores that tensor)")
    return None


def projector_weights(c: VLMConfig, hf_prefix: str = "multi_modal_projector.",
                      path_prefix: tuple = ("projector",)) -> list[WeightSpec]:
    """``linear_1``/``linear_2`` (mlp2x_gelu, with biases), ``gate``/``up``/``down`` (gated, no biases)
    or ``linear`` (with bias)."""
    p = tuple(path_prefix)
    names = {"mlp2x_gelu": ("linear_1", "linear_2"), "gated": ("gate", "up", "down"),
             "linear": ("linear",)}[c.projector]
    specs = []
    for name in names:
        specs.append(WeightSpec(f"{hf_prefix}{name}.weight", p + (name, "kernel"), *_linear()))
        if c.projector != "gated":
            specs.append(WeightSpec(f"{hf_prefix}{name}.bias", p + (name, "bias")))
    return specs


@register_hf("llava", classes=(VLM,))
class LlavaFormat(HFFormat):
    """transformers' LLaVA layout. Besides its ``mlp2x_gelu`` projector, the same layout holds (for
    mathvlm; transformers has no class for them) the ``gated`` and ``linear`` projectors
    (``"projector_type"`` in config.json; keys ``multi_modal_projector.{gate,up,down}.weight`` and
    ``multi_modal_projector.linear.{weight,bias}``), a projector hidden width other than the decoder's
    (``"projector_hidden_size"``) and a calibrated feature norm (``"feature_norm": "calibrated"``,
    key ``multi_modal_projector.feature_stats``)."""
    ignore_suffixes = ("position_ids", "rotary_emb.inv_freq")
    # Layouts of other transformers versions (4.4x nests the towers under ``model.``).
    key_aliases = (("model.vision_tower.vision_model.", "vision_tower."),
                   ("model.vision_tower.", "vision_tower."),
                   ("vision_tower.vision_model.", "vision_tower."),
                   ("model.multi_modal_projector.", "multi_modal_projector."),
                   ("model.language_model.model.", "language_model.model."),
                   ("model.language_model.", "language_model.model."),
                   ("lm_head.", "language_model.lm_head."))

    def build(self, hf_config, *, rngs=None, vision=None, **overrides):
        """``overrides`` are :class:`~mathvlm.models.decoder.DecoderConfig` fields of the language
        model (dtypes, ``scan_layers``, ``remat``, ...); ``vision`` a dict of the image tower's
        :data:`VISION_BUILD_OPTIONS` (e.g. ``{"scan_layers": True, "remat": "full"}``)."""
        projector = hf_config.get("projector_type", "mlp2x_gelu")
        if projector not in LLAVA_PROJECTORS:
            raise NotImplementedError(f"projector_type {projector!r}; LLaVA folders hold "
                                      f"{LLAVA_PROJECTORS}")
        if projector != "linear" and hf_config.get("projector_hidden_act", "gelu") != "gelu":
            raise NotImplementedError(f"projector_hidden_act {hf_config['projector_hidden_act']!r}")
        if projector == "mlp2x_gelu" and not hf_config.get("multimodal_projector_bias", True):
            raise NotImplementedError("multimodal_projector_bias=False")
        layer = hf_config.get("vision_feature_layer", -2)
        v = vit_config_from_hf(hf_config["vision_config"], **vision_options(vision))
        d = config_from_hf(hf_config["text_config"], **overrides)
        strategy = _LLAVA_STRATEGY[hf_config.get("vision_feature_select_strategy", "default")]
        config = VLMConfig(vision=v, decoder=d, projector=projector,
                           projector_hidden=hf_config.get("projector_hidden_size"),
                           image_token_id=hf_config.get("image_token_index",
                                                        hf_config.get("image_token_id", 32000)),
                           feature_layer=layer if isinstance(layer, int) else tuple(layer),
                           feature_strategy=strategy, feature_norm=hf_config.get("feature_norm", ""))
        return VLM(config, rngs=rngs or nnx.Rngs(0))

    def weights(self, model: VLM):
        c = model.config
        _check_llava_projector(c)
        specs = vit_weights(c.vision, "vision_tower.", ("vision_tower",))
        specs += projector_weights(c)
        if c.feature_norm:
            specs.append(WeightSpec("multi_modal_projector.feature_stats", ("feature_stats",)))
        specs += decoder_weights(c.decoder, hf_prefix="language_model.model.",
                                 head_key="language_model.lm_head.weight", path_prefix=("decoder",))
        return specs

    def hf_config(self, model: VLM):
        c = model.config
        _check_llava_projector(c)
        vision = vit_config_to_hf(c.vision)
        vision.pop("architectures")
        # drop_cls drops the CLIP class token (LLaVA's "default") and nothing of a SigLIP tower ("full").
        strategy = {"drop_first": "default", "keep_all": "full"}.get(
            c.feature_strategy, "default" if c.vision.has_class_token else "full")
        text = config_to_hf(c.decoder)
        text.pop("architectures")
        layer = c.feature_layer if isinstance(c.feature_layer, int) else list(c.feature_layer)
        out = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
               "vision_config": vision, "text_config": text, "image_token_index": c.image_token_id,
               "projector_type": c.projector, "projector_hidden_act": "gelu",
               "vision_feature_layer": layer, "vision_feature_select_strategy": strategy,
               "multimodal_projector_bias": c.projector != "gated",
               "image_seq_length": c.tokens_per_image,
               "tie_word_embeddings": c.decoder.tie_embeddings}
        if c.projector_hidden not in (None, c.decoder.hidden_size):
            out["projector_hidden_size"] = c.projector_hidden
        if c.feature_norm:
            out["feature_norm"] = c.feature_norm
        return out

    def build_options(self, model: VLM):
        c = model.config
        return {**decoder_build_options(c.decoder), "vision": vision_build_options(c.vision)}

    def ignored(self, model, key):
        return super().ignored(model, key) or (model.config.decoder.tie_embeddings
                                               and key.endswith("lm_head.weight"))


def from_pretrained(path, *, mesh=None, rules=None, **options):
    """Kept for callers of the old name: :func:`mathvlm.hf.from_pretrained` itself now accepts the
    key prefixes of other transformers versions (each format's ``key_aliases``)."""
    from mathvlm import hf
    return hf.from_pretrained(path, mesh=mesh, rules=rules, **options)
