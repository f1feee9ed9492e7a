"""Import of the original DeepSeek-VL release layout and the release's image preprocessing (see
:mod:`mathvlm.hf.deepseek_vl`, which re-exports everything here).

The release's config.json (``model_type: multi_modality``) names its towers by preset
(``sam_b_downsample``, ``siglip_large_patch16_384``) and leaves most LLaMA fields at
``LlamaConfig``'s defaults; :func:`convert_config` writes them all out. Keys beyond the release's in
``high_res_cfg`` / ``low_res_cfg`` (``width``, ``layers``, ``heads``, ``patch_size``, ``window_size``,
``global_attn_indexes``, ``prompt_embed_dim``, ``downsample_channels``, ``mlp_ratio``) override the
preset; the release never sets them, mathvlm's tests use them for tiny checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import jax
import numpy as np
from flax import nnx

from mathvlm.hf.assemble import ConversionError, chat_template_jinja
from mathvlm.hf.io import ShardWriter, _flat_variables, cast_floating, float_dtype
from mathvlm.hf.releases import BinTensors, read_release_tensors
from mathvlm.models.hybrid_vision import CLIP_MEAN, CLIP_STD, resize_weights

IMAGE_TOKEN = "<image_placeholder>"
EOS = "<｜end▁of▁sentence｜>"
# DeepSeek-VL's "deepseek" conversation (deepseek_vl/utils/conversation.py, SeparatorStyle.DeepSeek):
# system + "\n\n", then "Role: message" + ["\n\n", EOS][i % 2] per turn, "Assistant:" to generate —
# the trainer's ``deepseek`` template, as Jinja.
CHAT_TEMPLATE = chat_template_jinja("deepseek", IMAGE_TOKEN)

# Release presets (deepseek_vl/models/sam.py SAM_MODEL_CONFIG + create_sam_vit's fixed arguments;
# siglip_vit.py SigLIP_MODEL_CONFIG).
SAM_PRESETS = {"sam_b_downsample": {"width": 768, "layers": 12, "heads": 12, "patch_size": 16,
                                    "window_size": 14, "global_attn_indexes": [2, 5, 8, 11],
                                    "prompt_embed_dim": 256, "downsample_channels": [512, 1024],
                                    "mlp_ratio": 4}}
SIGLIP_PRESETS = {"siglip_large_patch16_384": {"width": 1024, "layers": 24, "heads": 16,
                                               "patch_size": 16, "mlp_ratio": 4}}
# transformers' LlamaConfig defaults at the release (4.38), for the fields its config.json omits.
LLAMA_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                  "num_hidden_layers": 32, "num_attention_heads": 32, "hidden_act": "silu",
                  "max_position_embeddings": 2048, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
                  "rope_theta": 10000.0, "attention_bias": False, "tie_word_embeddings": False}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "added_tokens.json", "generation_config.json")


def _params(cfg: dict, presets: dict, what: str) -> tuple[dict, list[str]]:
    name = cfg.get("model_name")
    if name not in presets:
        raise ConversionError(f"config.json {what}.model_name {name!r}: known {sorted(presets)}")
    extra = sorted(k for k in cfg if k in presets[name])
    return {**presets[name], **{k: cfg[k] for k in extra}}, extra


def convert_config(orig: dict, *, image_token_id: int = 100015) -> tuple[dict, dict, list[str]]:
    """Release config.json → (``deepseek_vl_hybrid`` config.json, per-branch normalisation, notes)."""
    notes: list[str] = []
    if orig.get("model_type") != "multi_modality":
        raise ConversionError(f"config.json model_type {orig.get('model_type')!r}: the DeepSeek-VL "
                              "importer reads the release layout (model_type 'multi_modality')")
    vision = orig.get("vision_config", {})
    if vision.get("cls") != "HybridVisionTower":
        raise ConversionError(f"config.json vision_config.cls {vision.get('cls')!r}: only "
                              "HybridVisionTower (SAM + SigLIP) checkpoints are supported")
    p = vision.get("params", {})
    if p.get("concat_type", "tuple") != "tuple":
        raise ConversionError(f"vision_config.params.concat_type {p['concat_type']!r} (only 'tuple')")
    high, low = p.get("high_res_cfg", {}), p.get("low_res_cfg", {})
    sam, sam_extra = _params(high, SAM_PRESETS, "vision_config.params.high_res_cfg")
    sig, sig_extra = _params(low, SIGLIP_PRESETS, "vision_config.params.low_res_cfg")
    if sam_extra or sig_extra:
        notes.append(f"preset overrides: high_res_cfg {sam_extra}, low_res_cfg {sig_extra}")
    out_ch = sam["prompt_embed_dim"]
    if list(sam["downsample_channels"]) != [2 * out_ch, 4 * out_ch]:
        raise ConversionError(f"high_res_cfg downsample_channels {sam['downsample_channels']}: the "
                              f"deepseek_vl_hybrid layout needs [{2 * out_ch}, {4 * out_ch}]")
    for cfg, what in ((high, "high_res_cfg"), (low, "low_res_cfg")):
        if cfg.get("select_feature", "same") != "same":
            raise ConversionError(f"{what}.select_feature {cfg['select_feature']!r} (only 'same')")
    if high.get("select_layer", -1) != -1:
        raise ConversionError(f"high_res_cfg.select_layer {high['select_layer']} (SAM runs whole)")
    # The release builds SigLIP with only the layers up to select_layer (timm depth).
    sel = low.get("select_layer", -1)
    depth = min(sig["layers"], sig["layers"] + sel + 1) if sel <= 0 else min(sig["layers"], sel)

    aligner = orig.get("aligner_config", {}).get("params", {})
    if aligner.get("projector_type") != "low_high_hybrid_split_mlp_gelu" or aligner.get("depth", 1) != 2:
        raise ConversionError(f"aligner_config.params {aligner}: only projector_type "
                              "'low_high_hybrid_split_mlp_gelu' with depth 2 is supported")
    text = {**LLAMA_DEFAULTS, **orig.get("language_config", {}), "model_type": "llama"}
    for key in ("torch_dtype", "dtype"):
        text.pop(key, None)
    text.setdefault("num_key_value_heads", text["num_attention_heads"])
    defaulted = sorted(k for k in LLAMA_DEFAULTS if k not in orig.get("language_config", {}))
    if defaulted:
        notes.append(f"language_config fields at LlamaConfig defaults: {defaulted}")
    for dim, what in ((4 * out_ch, "SAM output"), (sig["width"], "SigLIP width")):
        if aligner.get("input_dim", dim) != dim:
            raise ConversionError(f"aligner input_dim {aligner['input_dim']} != {what} {dim}")
    if aligner.get("n_embed", text["hidden_size"]) != text["hidden_size"]:
        raise ConversionError(f"aligner n_embed {aligner['n_embed']} != LLM hidden_size "
                              f"{text['hidden_size']}")
    tie = bool(text["tie_word_embeddings"])
    hf = {
        "architectures": ["DeepseekVLHybridForConditionalGeneration"],
        "model_type": "deepseek_vl_hybrid", "image_token_id": image_token_id,
        "tie_word_embeddings": tie, "text_config": text,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": sig["width"],
                          "intermediate_size": int(sig["width"] * sig["mlp_ratio"]),
                          "image_size": low.get("image_size", 384), "patch_size": sig["patch_size"],
                          "num_attention_heads": sig["heads"], "num_hidden_layers": depth,
                          "hidden_act": "gelu", "layer_norm_eps": 1e-6, "vision_use_head": False},
        "high_res_vision_config": {
            "model_type": "sam_vision_model", "hidden_size": sam["width"],
            "mlp_dim": int(sam["width"] * sam["mlp_ratio"]), "image_size": high.get("image_size", 1024),
            "patch_size": sam["patch_size"], "num_attention_heads": sam["heads"],
            "num_hidden_layers": sam["layers"], "window_size": sam["window_size"],
            "global_attn_indexes": list(sam["global_attn_indexes"]), "output_channels": out_ch,
            "layer_norm_eps": 1e-6, "hidden_act": "gelu", "qkv_bias": True, "use_abs_pos": True,
            "use_rel_pos": True}}
    norm = {"high_res_image_mean": list(high.get("pixel_mean") or CLIP_MEAN),
            "high_res_image_std": list(high.get("pixel_std") or CLIP_STD),
            "image_mean": list(low.get("pixel_mean") or (0.5,) * 3),
            "image_std": list(low.get("pixel_std") or (0.5,) * 3)}
    return hf, norm, notes


_H = r"vision_model\.vision_tower_high\.vision_tower\."
_L = r"vision_model\.vision_tower_low\.vision_tower\."
_SAM = "model.high_res_vision_model.vision_encoder."
_SIG = "model.vision_model."
_NECK = {"0.weight": "conv1.weight", "1.weight": "layer_norm1.weight", "1.bias": "layer_norm1.bias",
         "2.weight": "conv2.weight", "3.weight": "layer_norm2.weight", "3.bias": "layer_norm2.bias"}
_RULES = [
    (_H + r"pos_embed$", _SAM + "pos_embed"),
    (_H + r"patch_embed\.proj\.(weight|bias)$", _SAM + r"patch_embed.projection.\1"),
    (_H + r"blocks\.(\d+)\.norm(\d)\.(weight|bias)$", _SAM + r"layers.\1.layer_norm\2.\3"),
    (_H + r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)$", _SAM + r"layers.\1.attn.\2.\3"),
    (_H + r"blocks\.(\d+)\.attn\.rel_pos_(h|w)$", _SAM + r"layers.\1.attn.rel_pos_\2"),
    (_H + r"blocks\.(\d+)\.mlp\.lin(\d)\.(weight|bias)$", _SAM + r"layers.\1.mlp.lin\2.\3"),
    (_H + r"neck\.(\d\.(?:weight|bias))$", lambda m: _SAM + "neck." + _NECK.get(m.group(1), "?")),
    (_H + r"neck_hd\.(\d\.(?:weight|bias))$",
     lambda m: "model.high_res_vision_neck." + _NECK.get(m.group(1), "?")),
    (_H + r"downsamples\.0\.weight$", "model.high_res_vision_proj.conv1.weight"),
    (_H + r"downsamples\.1\.weight$", "model.high_res_vision_proj.conv2.weight"),
    (_H + r"hd_alpha_downsamples$", "model.high_res_vision_alpha"),
    (_L + r"pos_embed$", _SIG + "embeddings.position_embedding.weight"),
    (_L + r"patch_embed\.proj\.(weight|bias)$", _SIG + r"embeddings.patch_embedding.\1"),
    (_L + r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", _SIG + r"encoder.layers.\1.self_attn.{}_proj.\2"),
    (_L + r"blocks\.(\d+)\.attn\.proj\.(weight|bias)$", _SIG + r"encoder.layers.\1.self_attn.out_proj.\2"),
    (_L + r"blocks\.(\d+)\.norm(\d)\.(weight|bias)$", _SIG + r"encoder.layers.\1.layer_norm\2.\3"),
    (_L + r"blocks\.(\d+)\.mlp\.fc(\d)\.(weight|bias)$", _SIG + r"encoder.layers.\1.mlp.fc\2.\3"),
    (_L + r"norm\.(weight|bias)$", _SIG + r"post_layernorm.\1"),
    # Built but never used by the release's forward: SigLIP's pooling head (ignore_head=True) and
    # HybridVisionTower's high/low_layer_norm.
    (_L + r"attn_pool\..*$", None),
    (r"vision_model\.(high|low)_layer_norm\.(weight|bias)$", None),
    (r"aligner\.high_up_proj\.(weight|bias)$", r"model.aligner.high_res_vision_proj.\1"),
    (r"aligner\.low_up_proj\.(weight|bias)$", r"model.aligner.vision_proj.\1"),
    (r"aligner\.layers\.1\.(weight|bias)$", r"model.aligner.proj.\1"),
    (r"language_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$", None),
    (r"language_model\.model\.(.+)$", r"model.language_model.\1"),
    (r"language_model\.lm_head\.weight$", "lm_head.weight"),
]
_RULES = [(re.compile(p), r) for p, r in _RULES]


def convert_key(key: str) -> list[str] | None:
    """The ``deepseek_vl_hybrid`` keys of one release key: one key, three for SigLIP's fused ``qkv``
    (q, k, v), or None for tensors the release never uses. Raises ConversionError for unknown keys."""
    for pattern, repl in _RULES:
        m = pattern.match(key)
        if m:
            if repl is None:
                return None
            new = repl(m) if callable(repl) else m.expand(repl)
            if "?" in new:
                break
            return [new.format(x) for x in "qkv"] if "{}" in new else [new]
    raise ConversionError(f"unexpected tensor {key!r}: not a DeepSeek-VL hybrid release key")


def _convert_tensor(key: str, new: list[str], array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if len(new) == 3:                       # timm's fused qkv rows are [q; k; v]
        return list(zip(new, np.split(array, 3, axis=0)))
    if new[0] == _SIG + "embeddings.position_embedding.weight" and array.ndim == 3:
        array = array[0]                    # timm [1, N, E] → HF [N, E]
    return [(new[0], array)]


def _image_token_id(src: str, notes: list[str]) -> int:
    for name in ("tokenizer.json", "added_tokens.json", "tokenizer_config.json"):
        path = os.path.join(src, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            data = json.load(f)
        if name == "tokenizer.json":
            found = [t["id"] for t in data.get("added_tokens", []) if t.get("content") == IMAGE_TOKEN]
        elif name == "added_tokens.json":
            found = [data[IMAGE_TOKEN]] if IMAGE_TOKEN in data else []
        else:
            found = [int(i) for i, t in data.get("added_tokens_decoder", {}).items()
                     if t.get("content") == IMAGE_TOKEN]
        if found:
            return int(found[0])
    notes.append(f"no tokenizer file names {IMAGE_TOKEN}: image_token_id set to the release's 100015")
    return 100015


def _expected(hf_config: dict) -> dict[str, tuple[int, ...]]:
    """HF key → shape of every tensor the converted folder must hold (from the abstract model)."""
    from mathvlm.hf.deepseek_vl import DeepseekVLHybridFormat

    fmt = DeepseekVLHybridFormat()
    model = nnx.eval_shape(lambda: fmt.build(hf_config))
    variables = _flat_variables(nnx.state(model))
    out = {}
    for spec in fmt.weights(model):
        var = variables[spec.path]
        shape = jax.eval_shape(spec.to_hf, jax.ShapeDtypeStruct(var.shape, var.dtype)).shape
        out[spec.hf_key] = tuple(shape)
    return out


def import_deepseek_vl(src: str, out: str, *, dtype: str | None = None,
                       max_shard_size: str = "5GB") -> dict[str, Any]:
    """Release-layout DeepSeek-VL folder ``src`` → ``deepseek_vl_hybrid`` folder ``out`` (weights,
    config, tokenizer files, image processor config, chat template). Returns a JSON-able summary."""
    src, out = os.fspath(src), os.fspath(out)
    if not os.path.isfile(os.path.join(src, "config.json")):
        raise ConversionError(f"{src}: no config.json")
    if os.path.realpath(src) == os.path.realpath(out):
        raise ConversionError(f"--out {out} is the source folder; write elsewhere")
    with open(os.path.join(src, "config.json")) as f:
        orig = json.load(f)
    notes: list[str] = []
    image_token_id = _image_token_id(src, notes)
    hf_config, norm, config_notes = convert_config(orig, image_token_id=image_token_id)
    notes += config_notes
    expected = _expected(hf_config)
    tensors = read_release_tensors(src)
    kind = "bin" if isinstance(tensors, BinTensors) else "safetensors"
    target = float_dtype(dtype)
    dropped: list[str] = []
    seen: set[str] = set()

    def emit(writer, key, array, where):
        new = convert_key(key)
        if new is None:
            dropped.append(key)
            return
        for hf_key, value in _convert_tensor(key, new, array):
            if hf_key not in expected:
                raise ConversionError(f"{where}: tensor {key!r} (→ {hf_key!r}) is not part of a model "
                                      "with this config.json")
            if tuple(value.shape) != expected[hf_key]:
                raise ConversionError(f"{where}: tensor {key!r} has shape {tuple(value.shape)}; the "
                                      f"config wants {expected[hf_key]} for {hf_key!r}")
            seen.add(hf_key)
            writer.add(hf_key, cast_floating(np.asarray(value), target))

    with ShardWriter(out, max_shard_size) as writer:
        for key in tensors:              # unknown keys fail before any data is read
            convert_key(key)
        for key in tensors:
            emit(writer, key, tensors[key], os.path.basename(tensors.file(key)))
        missing = sorted(set(expected) - seen)
        if missing:
            raise ConversionError(f"{src} lacks tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}"
                                  f" ({len(missing)} missing; the config needs them)")
    summary = writer.close()
    with open(os.path.join(out, "config.json"), "w") as f:
        # The evaluation protocols and predictor read the release's template and preprocessing here.
        json.dump({**hf_config, "dtype": dtype or next(iter(summary["dtypes"]), "float32"),
                   "mathvlm_template": "deepseek", "mathvlm_image_preprocess": "deepseek"}, f,
                  indent=2, sort_keys=True)
    files = ["config.json"] + summary["files"] + _write_processor(src, out, hf_config, norm, notes)
    if dropped:
        notes.append(f"dropped {len(dropped)} tensors the release never uses "
                     "(SigLIP attn_pool, HybridVisionTower high/low_layer_norm, rotary inv_freq)")
    return {"format": "deepseek_vl_hybrid", "out": out, "files": sorted(files), "notes": notes,
            "source": kind, "tensors": len(seen), "dropped": dropped, "shards": summary["shards"],
            "dtypes": summary["dtypes"], "image_token_id": hf_config["image_token_id"],
            "tokens_per_image": (hf_config["vision_config"]["image_size"]
                                 // hf_config["vision_config"]["patch_size"]) ** 2}


def _write_processor(src, out, hf_config, norm, notes) -> list[str]:
    files = []
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out, name))
            files.append(name)
    if "tokenizer.json" not in files and "tokenizer.model" not in files:
        notes.append(f"{src} has no tokenizer files; add the DeepSeek tokenizer to {out}")
    tok_cfg = os.path.join(out, "tokenizer_config.json")
    if os.path.exists(tok_cfg):
        with open(tok_cfg) as f:
            data = json.load(f)
        data["chat_template"] = CHAT_TEMPLATE
        with open(tok_cfg, "w") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATE)
    files.append("chat_template.jinja")
    release = {}
    if os.path.exists(os.path.join(src, "preprocessor_config.json")):
        with open(os.path.join(src, "preprocessor_config.json")) as f:
            release = json.load(f)
    high = hf_config["high_res_vision_config"]["image_size"]
    low = hf_config["vision_config"]["image_size"]
    background = [int(x * 255) for x in norm["high_res_image_mean"]]
    if release.get("background_color") and list(release["background_color"]) != background:
        notes.append(f"release background_color {release['background_color']} differs from the "
                     f"{background} transformers derives from the high-res mean; kept as "
                     "'background_color' for mathvlm's preprocess_image")
        background = list(release["background_color"])
    proc = {"image_processor_type": "DeepseekVLHybridImageProcessor",
            "processor_class": "DeepseekVLHybridProcessor",
            "size": {"height": low, "width": low}, "high_res_size": {"height": high, "width": high},
            "resample": 2, "high_res_resample": 3,            # bilinear (low), bicubic (high)
            "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "do_pad": True, "min_size": int(release.get("min_size", 14)),
            "background_color": background, **norm}
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump(proc, f, indent=2)
    with open(os.path.join(out, "processor_config.json"), "w") as f:
        json.dump({"processor_class": "DeepseekVLHybridProcessor", "num_image_tokens":
                   (low // hf_config["vision_config"]["patch_size"]) ** 2}, f, indent=2)
    return files + ["preprocessor_config.json", "processor_config.json"]


def preprocess_image(image, config: dict | None = None) -> dict[str, np.ndarray]:
    """One image (PIL or ``[H, W, 3]`` uint8) → ``{"high": [S_h, S_h, 3], "low": [S_l, S_l, 3]}``
    float32, each normalised for its branch, as the release does: PIL bicubic resize of the longer
    side to ``S_h`` (shorter side truncated, ≥ ``min_size``), centred pad to a square with the
    background colour, rescale by 1/255; the low branch is that square resized to ``S_l`` with an
    antialiased bilinear filter in float (the tower's ``torchvision Resize``). ``config``: a
    ``preprocessor_config.json`` dict written by :func:`import_deepseek_vl` (defaults: the release's)."""
    from mathvlm.data.images import deepseek_preprocess

    c = config or {}
    high = c.get("high_res_size", {}).get("height", 1024)
    low = c.get("size", {}).get("height", 384)
    mean_h = np.asarray(c.get("high_res_image_mean", CLIP_MEAN), np.float32)
    std_h = np.asarray(c.get("high_res_image_std", CLIP_STD), np.float32)
    mean_l = np.asarray(c.get("image_mean", (0.5,) * 3), np.float32)
    std_l = np.asarray(c.get("image_std", (0.5,) * 3), np.float32)
    background = c.get("background_color") or [int(v * 255) for v in mean_h]
    x = deepseek_preprocess(image if isinstance(image, np.ndarray) else image.convert("RGB"),
                            high, c.get("min_size", 14), tuple(int(v) for v in background))
    wl = resize_weights(x.shape[0], low, antialias=True)
    small = np.einsum("oh,hwc->owc", wl, x)
    small = np.einsum("pw,owc->opc", wl, small)
    return {"high": (x - mean_h) / std_h, "low": ((small - mean_l) / std_l).astype(np.float32)}
