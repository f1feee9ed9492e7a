"""``python -m mathvlm.tools.convert import``: the papers' released checkpoints as folders mathvlm reads.

    python -m mathvlm.tools.convert import --format llava-original /ckpt/Math-LLaVA \\
        --vision /ckpt/clip-vit-large-patch14-336 --out /ckpt/math-llava-13b
    python -m mathvlm.tools.convert import --format puma-qwen2vlm /ckpt/Math-PUMA_Qwen2VL-7B --out /ckpt/puma-7b
    python -m mathvlm.tools.convert import --format deepseek-vl /ckpt/Math-PUMA_DeepSeek-Math-VL-7B --out DIR

* ``llava-original`` — the LLaVA repository's layout (LLaVA-1.5 7B/13B, Math-LLaVA-13B):
  ``LlavaLlamaForCausalLM``, keys ``model.embed_tokens`` / ``model.layers.*`` / ``model.norm`` /
  ``lm_head`` / ``model.mm_projector.{0,2}`` (``mlp2x_gelu``) or ``model.mm_projector`` (``linear``),
  config keys ``mm_vision_tower``, ``mm_hidden_size``, ``mm_projector_type``,
  ``mm_vision_select_layer``, ``mm_vision_select_feature``, ``image_aspect_ratio``. The image tower is
  not in the checkpoint (config.json only names it): ``--vision`` is a local copy of that folder
  (``openai/clip-vit-large-patch14-336``). LLaVA splices image features at a sentinel id (−200) that
  no tokenizer holds; the imported folder has a real ``<image>`` token instead (appended to the
  vocabulary, rows initialised as the mean, vocabulary rounded up to a multiple of 64 — the layout of
  transformers' ``llava-hf`` folders), which changes nothing for any other token. ``image_aspect_ratio:
  pad`` becomes ``LlavaImageProcessor`` with ``do_pad`` (pad to a square with the CLIP mean colour,
  then CLIP 336), so transformers' processor preprocesses as the release did. Chat template: Vicuna v1.
* ``puma-qwen2vlm`` — Math-PUMA_Qwen2VL-1.5B/-7B (``model_type: qwen2vlm``): SigLIP tower under
  ``vision_model.vision_model.*`` (its pooling ``head`` is unused and dropped), the bias-free gated
  aligner ``aligner.{gate,up,down}_proj`` (``down(gelu(gate(x)) * up(x))``), Qwen2 under
  ``language_model.*``; ``<|image|>`` (already in the tokenizer), hidden state −2 with the first
  token dropped (728 tokens at 384 px), SigLIP plain resize, ChatML with images first.
* ``deepseek-vl`` — Math-PUMA_DeepSeek-Math-VL-7B (``model_type: multi_modality``):
  :func:`mathvlm.hf.deepseek_vl.import_deepseek_vl`.

Weights may be safetensors or ``.bin`` shards. A ``.bin`` file is a pickle: this command is the only
place mathvlm reads one, with ``torch.load(weights_only=True)`` (tensors and plain containers only,
no code), and torch is needed for it. Every tensor of the release must be used or known to be unused;
anything else is an error naming it, so a release of another layout is not converted silently wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from mathvlm import hf
from mathvlm.hf import io as hf_io
from mathvlm.hf.assemble import (
    CLIP_MEAN,
    CLIP_STD,
    ConversionError,
    Part,
    _check_out,
    _vision_config,
    assemble_vlm,
    image_processor_config,
)

FORMATS = ("llava-original", "puma-qwen2vlm", "deepseek-vl")


# ------------------------------------------------------------------------------- reading a release

class BinTensors(Mapping):
    """``{key: np.ndarray}`` over ``.bin`` shards, one shard loaded (memory-mapped) at a time."""

    def __init__(self, files_by_key: dict[str, str]):
        # Iteration goes shard by shard, so a pass over the keys loads each file once.
        self._files = dict(sorted(files_by_key.items(), key=lambda item: item[1]))
        self._loaded: dict[str, dict] = {}   # memory-mapped: untouched tensors cost no memory

    def file(self, key: str) -> str:
        return self._files[key]

    def _shard(self, path: str) -> dict:
        if path not in self._loaded:
            torch = _torch()
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # noqa: BLE001  (weights_only refuses code; say which file)
                raise ConversionError(f"cannot read {path} with torch.load(weights_only=True): {err}") \
                    from None
            if not isinstance(state, Mapping):
                raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict")
            self._loaded[path] = state
        return self._loaded[path]

    def __getitem__(self, key: str) -> np.ndarray:
        tensor = self._shard(self._files[key])[key]
        return _numpy(tensor)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def info(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        tensor = self._shard(self._files[key])[key]
        return tuple(tensor.shape), _numpy(tensor.reshape(-1)[:1]).dtype


def _torch():
    try:
        import torch
    except ImportError:
        raise ConversionError("this release has .bin (pickle) weights, which only torch reads: "
                              "`pip install torch==2.13.0 --index-url "
                              "https://download.pytorch.org/whl/cpu`, or convert the shards to "
                              "safetensors first") from None
    return torch


def _numpy(tensor) -> np.ndarray:
    torch = _torch()
    tensor = tensor.detach().contiguous()
    if tensor.dtype == torch.bfloat16:     # numpy has no bfloat16: reinterpret the bits
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def read_release_tensors(path: str) -> Mapping:
    """The release's tensors: its safetensors when it has any, else its ``.bin`` shards (through
    ``pytorch_model.bin.index.json`` or a single ``pytorch_model.bin``)."""
    names = os.listdir(path)
    if any(n.endswith(".safetensors") for n in names):
        return hf.read_safetensors(path)
    index = os.path.join(path, "pytorch_model.bin.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return BinTensors({k: os.path.join(path, v) for k, v in weight_map.items()})
    bins = sorted(n for n in names if n.endswith(".bin") and n.startswith("pytorch_model"))
    if len(bins) == 1:
        files = os.path.join(path, bins[0])
        reader = BinTensors({})
        return BinTensors(dict.fromkeys(reader._shard(files), files))
    raise ConversionError(f"{path}: no *.safetensors, no pytorch_model.bin.index.json and "
                          f"{len(bins)} pytorch_model*.bin files; is this the release folder?")


def _unused(tensors: Mapping, used_prefixes: tuple[str, ...], ignored_prefixes: tuple[str, ...],
            src: str) -> None:
    """Refuse a release holding tensors outside the parts this layout has."""
    strays = [k for k in tensors if not k.startswith(used_prefixes + ignored_prefixes)
              and not k.endswith("rotary_emb.inv_freq")]
    if strays:
        raise ConversionError(f"{src} holds {len(strays)} tensors this layout has no place for, e.g. "
                              f"{strays[:5]}; is --format right?")


def _check_config(src: str, config: dict, want: str, hint: str) -> None:
    if config.get("model_type") != want or (want == "llava" and "mm_vision_tower" not in config):
        raise ConversionError(f"{src}/config.json: model_type {config.get('model_type')!r}"
                              f"{'' if 'mm_vision_tower' in config else ' without mm_vision_tower'} is "
                              f"not the {hint} layout; see `python -m mathvlm.tools.convert import --help`")


# ---------------------------------------------------------------------------------- llava-original

_LLAVA_LLMS = {"LlavaLlamaForCausalLM": ("llama", "LlamaForCausalLM"),
               "LlavaMistralForCausalLM": ("mistral", "MistralForCausalLM")}
_LLAVA_CONFIG_ONLY = ("mm_", "tune_mm", "freeze_mm", "use_mm", "image_aspect_ratio", "image_grid",
                      "tokenizer_padding_side", "tokenizer_model_max_length", "unfreeze_mm")


def llava_preprocessor(vision: str | None, pad: bool) -> dict[str, Any]:
    """transformers' ``LlavaImageProcessor`` config: the tower's CLIP settings, plus ``do_pad`` for
    LLaVA's ``image_aspect_ratio: pad`` (the square is filled with ``int(mean · 255)``, as the release's
    ``expand2square``)."""
    path = os.path.join(vision or "", "preprocessor_config.json")
    base = hf.load_json(path) if vision and os.path.exists(path) else image_processor_config("clip", 336)
    base = {**base, "image_processor_type": "LlavaImageProcessor", "do_pad": pad}
    base.setdefault("image_mean", list(CLIP_MEAN))
    base.setdefault("image_std", list(CLIP_STD))
    base.pop("processor_class", None)
    return base


def import_llava_original(src: str, out: str, *, vision: str | None, template: str = "vicuna_v1",
                          dtype: str | None = None, max_shard_size: str = "5GB") -> dict[str, Any]:
    config = hf.read_config(src)
    _check_config(src, config, "llava", "original LLaVA (LlavaLlamaForCausalLM)")
    arch = (config.get("architectures") or ["LlavaLlamaForCausalLM"])[0]
    if arch not in _LLAVA_LLMS:
        raise ConversionError(f"{src}: architecture {arch!r}; this import reads {sorted(_LLAVA_LLMS)}")
    for key in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if config.get(key):
            raise ConversionError(f"{src}/config.json: {key}=true (image start/end or patch tokens) "
                                  "is a LLaVA variant this import does not read")
    projector = config.get("mm_projector_type", "linear")
    if projector not in ("mlp2x_gelu", "linear"):
        raise ConversionError(f"{src}: mm_projector_type {projector!r}; readable: mlp2x_gelu, linear")
    select = config.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise ConversionError(f"{src}: mm_vision_select_feature {select!r}; readable: patch, cls_patch")
    tower = config.get("mm_vision_tower", "?")
    if not vision:
        raise ConversionError(f"{src}/config.json names the image tower {tower!r}, whose weights the "
                              "release does not hold: pass --vision DIR, a local copy of that folder")
    _check_out(out, src, vision)
    vision_hf, vision_prefixes = _vision_config(vision)
    if vision_hf.get("hidden_size") != config.get("mm_hidden_size", vision_hf.get("hidden_size")):
        raise ConversionError(f"--vision {vision}: width {vision_hf.get('hidden_size')}, but the release's "
                              f"projector reads mm_hidden_size={config['mm_hidden_size']} ({tower})")

    tensors = read_release_tensors(src)
    in_release = "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"
    if in_release in tensors:   # some fine-tunes save the tower too: theirs wins over --vision's
        vision_part = Part(src, vision_hf, tensors, ("model.vision_tower.vision_tower.vision_model.",))
    else:
        vision_part = Part(vision, vision_hf, hf.read_safetensors(vision), vision_prefixes)
    _unused(tensors, ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.",
                      "model.mm_projector.", "model.vision_tower.vision_tower.vision_model."), (), src)
    model_type, llm_arch = _LLAVA_LLMS[arch]
    llm_hf = {k: v for k, v in config.items() if not k.startswith(_LLAVA_CONFIG_ONLY)}
    llm_hf.update(model_type=model_type, architectures=[llm_arch])
    llm_view = hf_io.RenamedTensors(
        tensors, lambda k: None if k.startswith(("model.mm_projector.", "model.vision_tower.")) else k)
    names = ({"multi_modal_projector.linear_1.": "model.mm_projector.0.",
              "multi_modal_projector.linear_2.": "model.mm_projector.2."} if projector == "mlp2x_gelu"
             else {"multi_modal_projector.linear.": "model.mm_projector."})
    inverse = {v: k for k, v in names.items()}
    proj_view = hf_io.RenamedTensors(tensors, lambda k: next(
        (inverse[p] + k[len(p):] for p in inverse if k.startswith(p)), None))
    pad = config.get("image_aspect_ratio", "square") == "pad"
    return assemble_vlm(
        vision_part, Part(src, llm_hf, llm_view), out, projector=projector, tokenizer=src,
        image_token="<image>", feature_layer=config.get("mm_vision_select_layer", -2),
        feature_strategy="default" if select == "patch" else "full", template=template,
        dtype=dtype, max_shard_size=max_shard_size, projector_tensors=proj_view,
        preprocessor=llava_preprocessor(vision, pad), generation_config=_generation(src),
        extra_config={"mathvlm_image_preprocess": "clip" if pad else "clip_nopad",
                      "mathvlm_release": {"format": "llava-original", "architectures": [arch],
                                          "mm_vision_tower": tower,
                                          "image_aspect_ratio": config.get("image_aspect_ratio")}},
        command="import")


def _generation(src: str) -> str | None:
    path = os.path.join(src, "generation_config.json")
    return path if os.path.exists(path) else None


# ---------------------------------------------------------------------------------- puma-qwen2vlm

def import_puma_qwen2vlm(src: str, out: str, *, template: str = "chatml", dtype: str | None = None,
                         max_shard_size: str = "5GB") -> dict[str, Any]:
    config = hf.read_config(src)
    _check_config(src, config, "qwen2vlm", "Math-PUMA Qwen2VL (Qwen2vlmForConditionalGeneration)")
    vision_hf = dict(config.get("vision_config") or {})
    text_hf = dict(config.get("text_config") or {})
    if vision_hf.get("model_type", "siglip_vision_model") != "siglip_vision_model":
        raise ConversionError(f"{src}: vision_config.model_type {vision_hf.get('model_type')!r}; the "
                              "Math-PUMA Qwen2VL release has a SigLIP tower")
    if text_hf.get("model_type") != "qwen2":
        raise ConversionError(f"{src}: text_config.model_type {text_hf.get('model_type')!r}; the "
                              "Math-PUMA Qwen2VL release has a Qwen2 LLM")
    if config.get("projector_hidden_act", "gelu") != "gelu":
        raise ConversionError(f"{src}: projector_hidden_act {config['projector_hidden_act']!r}; the "
                              "aligner this import reads uses gelu")
    vision_hf["model_type"] = "siglip_vision_model"
    _check_out(out, src)
    tensors = read_release_tensors(src)
    # SigLIP's attention-pooling head feeds nothing the VLM uses.
    _unused(tensors, ("vision_model.vision_model.embeddings.", "vision_model.vision_model.encoder.",
                      "vision_model.vision_model.post_layernorm.", "aligner.gate_proj.",
                      "aligner.up_proj.", "aligner.down_proj.", "language_model.model.embed_tokens.",
                      "language_model.model.layers.", "language_model.model.norm.",
                      "language_model.lm_head."),
            ("vision_model.vision_model.head.",), src)
    image_id = int(config.get("image_token_index", 151646))
    from mathvlm.hf.assemble import _load_tokenizer

    image_token = _load_tokenizer(src).convert_ids_to_tokens(image_id)
    if not image_token:
        raise ConversionError(f"{src}: image_token_index {image_id} is not a token of its tokenizer")
    text_hf.setdefault("tie_word_embeddings", config.get("tie_word_embeddings", False))
    llm_view = hf_io.RenamedTensors(
        tensors, lambda k: k[len("language_model."):] if k.startswith("language_model.") else None)
    proj_view = hf_io.RenamedTensors(tensors, {
        "aligner.gate_proj.": "multi_modal_projector.gate.",
        "aligner.up_proj.": "multi_modal_projector.up.",
        "aligner.down_proj.": "multi_modal_projector.down."})
    preprocessor_path = os.path.join(src, "preprocessor_config.json")
    preprocessor = (hf.load_json(preprocessor_path) if os.path.exists(preprocessor_path)
                    else image_processor_config("siglip", vision_hf.get("image_size", 384)))
    layer = config.get("vision_feature_layer", -2)
    return assemble_vlm(
        Part(src, vision_hf, tensors, ("vision_model.vision_model.",)), Part(src, text_hf, llm_view),
        out, projector="gated", tokenizer=src, image_token=image_token,
        feature_layer=layer if isinstance(layer, int) else tuple(layer),
        feature_strategy=config.get("vision_feature_select_strategy", "default"), template=template,
        dtype=dtype, max_shard_size=max_shard_size, projector_tensors=proj_view,
        preprocessor=preprocessor, generation_config=_generation(src),
        extra_config={"mathvlm_image_preprocess": "siglip",
                      "mathvlm_release": {"format": "puma-qwen2vlm",
                                          "architectures": config.get("architectures")}},
        command="import")


# --------------------------------------------------------------------------------------- dispatch

def import_release(fmt: str, src: str, out: str, *, vision: str | None = None,
                   dtype: str | None = None, max_shard_size: str = "5GB",
                   template: str | None = None) -> dict[str, Any]:
    """Convert the release folder ``src`` (layout ``fmt``, one of :data:`FORMATS`) to ``out``."""
    if not os.path.isdir(src):
        raise ConversionError(f"{src} is not a folder")
    kw = {"dtype": dtype, "max_shard_size": max_shard_size}
    if fmt == "llava-original":
        return import_llava_original(src, out, vision=vision, template=template or "vicuna_v1", **kw)
    if vision:
        raise ConversionError(f"--vision is for llava-original; the {fmt} release holds its tower")
    if fmt == "puma-qwen2vlm":
        return import_puma_qwen2vlm(src, out, template=template or "chatml", **kw)
    if fmt == "deepseek-vl":
        if template:
            raise ConversionError("--template: the deepseek-vl import writes DeepSeek-VL's own template")
        from mathvlm.hf.deepseek_vl import import_deepseek_vl

        return import_deepseek_vl(src, out, **kw)
    raise ConversionError(f"--format {fmt!r}; one of {FORMATS}")
