"""Assemble LLaVA-layout transformers folders: a paper's starting VLM from released parts
(:func:`build_vlm`, ``python -m mathvlm.tools.convert build-vlm``).

**build-vlm**: a vision folder (``CLIPVisionModel`` / ``CLIPModel`` / ``SiglipVisionModel`` /
``SiglipModel``; the image tower is taken) + a causal-LM folder (Llama / Mistral / Qwen2) → a LLaVA
folder: the tower under ``vision_tower.``, a freshly initialised projector (``mlp2x_gelu``, Math-PUMA's
``gated`` or ``linear``; the alignment stage trains it) under ``multi_modal_projector.``, the LLM under
``language_model.``; config.json (``image_token_index``, ``projector_type``, ``mathvlm_template``); the
LLM's tokenizer with the image token added as a special token (embedding / LM-head rows appended when
its id is outside the LLM's vocabulary, initialised as the mean of the old rows); the vision folder's
``preprocessor_config.json``; a ``processor_config.json`` (LlavaProcessor) and the chat template the
trainer renders (``mathvlm.data.templates``) as ``chat_template.jinja``. Tensors are read one at a
time (:func:`mathvlm.hf.io.read_safetensors`) and written in shards, so a 7B LLM is never in memory
twice. ``mlp2x_gelu`` folders load in transformers' ``LlavaForConditionalGeneration``; ``gated`` and
``linear`` ones only in mathvlm (:class:`mathvlm.hf.vision.LlavaFormat`).

**export** lives in :mod:`mathvlm.hf.export`; **import** of the papers' released checkpoints in
:mod:`mathvlm.hf.releases` (both reuse this module's pieces).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import Any

import jax
import numpy as np
from flax import nnx

from mathvlm import hf
from mathvlm.hf import io as hf_io
from mathvlm.hf.llm import config_from_hf
from mathvlm.hf.vision import _LLAVA_STRATEGY, LLAVA_PROJECTORS, transformers_gap, vit_config_from_hf
from mathvlm.models.projectors import make_projector
from mathvlm.models.vlm import VLM, VLMConfig


class ConversionError(ValueError):
    """A folder or run that cannot be converted as asked; the message says what to change."""


# Tokenizer, processor and generation files a transformers folder carries beside the weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
# The template the trainer uses by default for each LLM family (Math-LLaVA / MAVIS: Vicuna v1;
# Math-PUMA Qwen2: ChatML).
DEFAULT_TEMPLATES = {"llama": "vicuna_v1", "mistral": "vicuna_v1", "qwen2": "chatml"}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------------------------ chat templates

def _templates():
    from mathvlm.data import templates   # imported on use: the data package pulls in its pipelines

    return templates


def _literal(text: str) -> str:
    """A Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _content_macro(image: str, images_first: bool) -> str:
    """``content(c)``: a message's text with the image token where its images go (a string with
    ``<image>`` marks, as the trainer's conversations, or a list of ``{"type": "image"|"text"}``)."""
    img = _literal(image)
    if images_first:     # ChatML / Math-PUMA: every image first, each followed by a newline
        string = ("{{ (" + img + " + '\\n') * (c.count('<image>')) }}"
                  "{{ c | replace('<image>\\n', '') | replace('<image>', '') }}")
        items = ("{%- for item in c if item['type'] == 'image' -%}{{ " + img + " + '\\n' }}{%- endfor -%}"
                 "{%- for item in c if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}")
    else:
        string = "{{ c | replace('<image>', " + img + ") }}"
        items = ("{%- for item in c -%}{%- if item['type'] == 'image' -%}{{ " + img + " }}"
                 "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}{%- endfor -%}")
    return ("{%- macro content(c) -%}{%- if c is string -%}" + string + "{%- else -%}" + items
            + "{%- endif -%}{%- endmacro -%}")


def _system(default: str) -> str:
    return ("{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
            "{%- else -%}{%- set system = " + _literal(default) + " -%}{%- set turns = messages -%}"
            "{%- endif -%}")


def _cue(cue: str) -> str:
    """Jinja: the assistant cue ``cue`` after a user turn, unless it is the last one and no generation
    prompt is asked for."""
    return "{%- if not loop.last or add_generation_prompt -%}{{ " + cue + " }}{%- endif -%}"


def _role_turns(user: str, cue: str) -> str:
    """Jinja of :func:`mathvlm.data.templates._role_turns`: ``user`` + content (+ ``cue`` unless last
    without a generation prompt) per user turn, ``' '`` + content + eos per assistant turn."""
    return ("{%- for message in turns -%}"
            "{%- if message['role'] == 'user' -%}{{ " + user + " }}{{ content(message['content']) }}"
            + _cue(cue) + "{%- elif message['role'] == 'assistant' -%}"
            "{{ ' ' }}{{ content(message['content']) }}{{ eos_token }}{%- endif -%}{%- endfor -%}")


def chat_template_jinja(name: str, image_token: str = "<image>") -> str:
    """The Jinja chat template (for ``tokenizer.apply_chat_template``) rendering exactly what
    :func:`mathvlm.data.templates.render` renders for ``name`` (the image token in place of each
    ``<image>``, the tokenizer's ``eos_token`` for each end of turn); ``add_generation_prompt`` adds
    the assistant cue of :func:`~mathvlm.data.templates.render_prompt`."""
    templates_lib = _templates()
    if name == "vicuna_v1":
        return (_content_macro(image_token, False) + _system(templates_lib.VICUNA_SYSTEM)
                + "{{ system + ' ' }}" + _role_turns("'USER: '", "' ASSISTANT:'"))
    if name == "chatml":
        return (_content_macro(image_token, True) + _system(templates_lib.CHATML_SYSTEM)
                + "{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
                "{%- for message in turns -%}{%- if message['role'] == 'user' -%}"
                "{{ '<|im_start|>user\\n' }}{{ content(message['content']) }}{{ '<|im_end|>\\n' }}"
                + _cue("'<|im_start|>assistant\\n'")
                + "{%- elif message['role'] == 'assistant' -%}"
                "{{ content(message['content']) }}{{ eos_token }}{{ '\\n' }}{%- endif -%}{%- endfor -%}")
    if name == "deepseek":   # DeepSeek-VL: "{system}\n\nUser: {q}\n\nAssistant: {a}<eos>User: ..."
        return (_content_macro(image_token, False) + _system(templates_lib.DEEPSEEK_SYSTEM)
                + "{%- if system -%}{{ system + '\n\n' }}{%- endif -%}"
                + _role_turns("'User: '", "'\n\nAssistant:'"))
    if name == "plain":
        return (_content_macro(image_token, False)
                + "{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
                "{{ content(message['content']) }}{%- elif message['role'] == 'assistant' -%}"
                "{{ content(message['content']) }}{{ eos_token }}{%- endif -%}{%- endfor -%}")
    raise ConversionError(f"no chat template {name!r}; templates: {sorted(templates_lib.TEMPLATES)}")


# ------------------------------------------------------------------------------ processor configs

def image_processor_config(flavour: str, image_size: int) -> dict[str, Any]:
    """``preprocessor_config.json`` of the papers' preprocessing (:mod:`mathvlm.data.images`): CLIP's
    shortest-edge resize + centre crop with CLIP mean/std, or SigLIP's plain resize with 0.5/0.5
    (LLaVA-1.5's pad-to-square is the processor-independent step before either)."""
    common = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
              "resample": 3, "rescale_factor": 1 / 255}
    if flavour == "siglip":
        return {**common, "image_processor_type": "SiglipImageProcessor", "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3, "size": {"height": image_size, "width": image_size}}
    return {**common, "image_processor_type": "CLIPImageProcessor", "do_center_crop": True,
            "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
            "size": {"shortest_edge": image_size},
            "crop_size": {"height": image_size, "width": image_size}}


def llava_processor_config(config: VLMConfig, image_token: str, strategy: str) -> dict[str, Any]:
    """``processor_config.json`` of transformers' ``LlavaProcessor``: it expands each image token to
    ``(size / patch)² + class token − (1 if "default")`` = the VLM's tokens per image."""
    return {"processor_class": "LlavaProcessor", "image_token": image_token,
            "patch_size": config.vision.patch_size, "vision_feature_select_strategy": strategy,
            "num_additional_image_tokens": int(config.vision.has_class_token)}


def _write_json(path: str, value: dict) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)


def _clean_tokenizer_config(folder: str) -> None:
    """transformers records the ``from_pretrained`` keyword ``local_files_only`` in the saved
    tokenizer_config.json; it is not a property of the tokenizer."""
    path = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(path):
        with open(path) as f:
            value = json.load(f)
        for key in ("is_local", "local_files_only"):
            value.pop(key, None)
        _write_json(path, value)


# ------------------------------------------------------------------------------------- build-vlm

_VISION_TYPES = {"clip_vision_model": "clip_vision_model", "siglip_vision_model": "siglip_vision_model",
                 "clip": "clip_vision_model", "siglip": "siglip_vision_model"}


def _vision_config(folder: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The image tower's config.json dict of a vision-model or dual-encoder folder, and the key
    prefixes of its tensors there (transformers 4.x nests a standalone tower under ``vision_model.``
    too)."""
    config = hf.read_config(folder)
    kind = config.get("model_type")
    if kind not in _VISION_TYPES:
        raise ConversionError(f"{folder}: model_type {kind!r} is not an image tower; give a "
                              f"CLIPVisionModel, CLIPModel, SiglipVisionModel or SiglipModel folder")
    if kind in ("clip", "siglip"):
        return {**config.get("vision_config", {}), "model_type": _VISION_TYPES[kind]}, ("vision_model.",)
    return config, ("", "vision_model.")


def _find(tensors, key: str, prefixes: tuple[str, ...], folder: str) -> str:
    for prefix in prefixes:
        if prefix + key in tensors:
            return prefix + key
    raise ConversionError(f"{folder} has no tensor {key!r} (looked for {[p + key for p in prefixes]})")


def _check_out(out: str, *sources: str) -> None:
    """``out`` must not be a folder the conversion reads: its weight files are replaced first."""
    real = os.path.realpath(out)
    for source in sources:
        if source and os.path.realpath(source) == real:
            raise ConversionError(f"--out {out} is the source folder {source}; write elsewhere")
    if os.path.isdir(os.path.join(out, "checkpoints")):
        raise ConversionError(f"--out {out} holds a training run (checkpoints/); write elsewhere")


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple) if multiple > 1 else n


def _load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ConversionError(f"cannot load a tokenizer from {folder} ({err}); "
                              "pass --tokenizer DIR") from None


def build_vlm(vision: str, llm: str, out: str, *, projector: str = "mlp2x_gelu",
              image_token: str = "<image>", feature_layer: int | tuple[int, ...] = -2,
              feature_strategy: str = "default", template: str | None = None, seed: int = 0,
              dtype: str | None = None, max_shard_size: int | str | None = "5GB",
              tokenizer: str | None = None, vocab_multiple: int = 64) -> dict[str, Any]:
    """Write a LLaVA folder assembled from a vision folder and an LLM folder (see the module
    docstring) to ``out``; returns a summary (files, shards, bytes, dtype, image token, template).

    ``feature_strategy`` is LLaVA's: ``default`` drops the first token of the tower's output (CLIP's
    class token; for SigLIP, which has none, the first patch, as Math-PUMA does), ``full`` keeps all.
    ``dtype`` casts every floating tensor (default: each part keeps its own, the new projector takes
    the LLM's). The vocabulary grows, when the image token needs it, to a multiple of
    ``vocab_multiple`` (LLaVA-1.5-HF: 32064)."""
    _check_out(out, vision, llm, tokenizer)
    vision_hf, vision_prefixes = _vision_config(vision)
    preprocessor = None
    if os.path.exists(os.path.join(vision, "preprocessor_config.json")):
        preprocessor = hf.load_json(os.path.join(vision, "preprocessor_config.json"))
    generation = os.path.join(llm, "generation_config.json")
    return assemble_vlm(
        Part(vision, vision_hf, hf.read_safetensors(vision), vision_prefixes),
        Part(llm, hf.read_config(llm), hf.read_safetensors(llm)), out,
        projector=projector, tokenizer=tokenizer or llm, image_token=image_token,
        feature_layer=feature_layer, feature_strategy=feature_strategy, template=template, seed=seed,
        dtype=dtype, max_shard_size=max_shard_size, vocab_multiple=vocab_multiple,
        preprocessor=preprocessor, generation_config=generation if os.path.exists(generation) else None)


@dataclasses.dataclass
class Part:
    """One source of an assembled VLM: where it comes from (for messages), its config.json dict, its
    tensors (any mapping with ``info``) and the key prefixes under which its tensors may sit."""
    where: str
    config: dict[str, Any]
    tensors: Any
    prefixes: tuple[str, ...] = ("",)


def assemble_vlm(vision: Part, llm: Part, out: str, *, projector: str, tokenizer: str,
                 image_token: str = "<image>", feature_layer: int | tuple[int, ...] = -2,
                 feature_strategy: str = "default", template: str | None = None, seed: int = 0,
                 dtype: str | None = None, max_shard_size: int | str | None = "5GB",
                 vocab_multiple: int = 64, projector_tensors=None, preprocessor: dict | None = None,
                 generation_config: str | None = None, extra_config: dict | None = None,
                 command: str = "build-vlm") -> dict[str, Any]:
    """The LLaVA folder of ``vision`` (tower keys as in a CLIP/SigLIP vision folder) + ``llm`` (keys
    ``model.*`` / ``lm_head.weight`` of a causal-LM folder) + a projector: fresh (``seed``) or, from a
    released VLM, ``projector_tensors`` keyed ``multi_modal_projector.*`` as this layout names them.
    ``preprocessor`` is written as ``preprocessor_config.json`` (default: the tower's plain one);
    ``extra_config`` adds keys to config.json."""
    if projector not in LLAVA_PROJECTORS:
        raise ConversionError(f"projector {projector!r}; one of {LLAVA_PROJECTORS}")
    if feature_strategy not in _LLAVA_STRATEGY:
        raise ConversionError(f"feature strategy {feature_strategy!r}; one of {sorted(_LLAVA_STRATEGY)}")
    vision_hf, vision_prefixes, vision_tensors = vision.config, vision.prefixes, vision.tensors
    llm_hf, llm_tensors = llm.config, llm.tensors
    vision, llm = vision.where, llm.where
    if llm_hf.get("model_type") not in DEFAULT_TEMPLATES:
        raise ConversionError(f"{llm}: model_type {llm_hf.get('model_type')!r} is not a causal LM "
                              f"mathvlm reads; give a {sorted(DEFAULT_TEMPLATES)} folder")
    template = template or DEFAULT_TEMPLATES[llm_hf["model_type"]]
    chat_template = chat_template_jinja(template, image_token)
    notes = []

    # The tokenizer: reuse the image token if the LLM's tokenizer has it, else add it as special.
    tok = _load_tokenizer(tokenizer)
    vocab = tok.get_vocab()
    if image_token in vocab:
        image_id, added = int(vocab[image_token]), False
    else:
        from tokenizers import AddedToken

        tok.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
        image_id, added = int(tok.convert_tokens_to_ids(image_token)), True
    if image_token not in _trainer_image_names():
        notes.append(f"image token {image_token!r} is not one the trainer's tokenizer wrapper finds "
                     f"({_trainer_image_names()}); data pipelines will not see it")

    try:
        decoder, tower = config_from_hf(llm_hf), vit_config_from_hf(vision_hf)
    except (KeyError, NotImplementedError, ValueError) as err:
        raise ConversionError(f"cannot assemble {vision} + {llm}: {err!r}") from None
    old_vocab = decoder.vocab_size
    needed = max(image_id + 1, len(tok))
    new_vocab = _round_up(needed, vocab_multiple) if needed > old_vocab else old_vocab
    decoder = decoder.replace(vocab_size=new_vocab)
    config = VLMConfig(vision=tower, decoder=decoder, projector=projector,
                       image_token_id=image_id, feature_layer=feature_layer,
                       feature_strategy=_LLAVA_STRATEGY[feature_strategy])

    abstract = nnx.eval_shape(lambda: VLM(config, rngs=nnx.Rngs(seed)))
    fmt = hf.format_for_model(abstract)
    specs = fmt.weights(abstract)
    variables = hf_io._flat_variables(nnx.state(abstract))

    # Where each written tensor comes from (checked before anything is written).
    sources: dict[str, tuple[str, str]] = {}
    for spec in specs:
        key = spec.hf_key
        if key.startswith("vision_tower."):
            sources[key] = ("vision", _find(vision_tensors, key[len("vision_tower."):], vision_prefixes,
                                            vision))
        elif key.startswith("language_model.model."):
            sources[key] = ("llm", _find(llm_tensors, "model." + key[len("language_model.model."):],
                                         ("",), llm))
        elif key == "language_model.lm_head.weight":
            sources[key] = ("llm", _find(llm_tensors, "lm_head.weight", ("",), llm))
        elif projector_tensors is not None:
            if key not in projector_tensors:
                raise ConversionError(f"the release has no projector tensor for {key} (it has "
                                      f"{sorted(projector_tensors)})")
            sources[key] = ("released", key)
        else:
            sources[key] = ("projector", key)
    resized = {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"}
    for spec in specs:
        part, source = sources[spec.hf_key]
        if part == "projector":
            continue
        tensors = {"vision": vision_tensors, "llm": llm_tensors, "released": projector_tensors}[part]
        shape, _ = tensors.info(source)
        if spec.hf_key in resized:
            shape = (new_vocab,) + shape[1:]
        var = variables[spec.path]
        want = tuple(var.shape if spec.layer is None else var.shape[1:])
        got = jax.eval_shape(spec.to_model, jax.ShapeDtypeStruct(shape, np.float32)).shape
        if tuple(got) != want:
            raise ConversionError(f"{source} of {vision if part == 'vision' else llm}: shape {shape} "
                                  f"does not fit {spec.hf_key} of the assembled model ({want})")

    llm_dtype = llm_tensors.info(_find(llm_tensors, "model.embed_tokens.weight", ("",), llm))[1]
    vision_dtype = vision_tensors.info(sources[specs[0].hf_key][1])[1]
    target = hf_io.float_dtype(dtype)
    # The projector, initialised like the VLM's own (fan-in normal kernels, zero biases).
    proj = make_projector(projector, config.vision.hidden_size * config.num_feature_layers,
                          decoder.hidden_size, hidden=config.projector_hidden, rngs=nnx.Rngs(seed))
    proj_vars = hf_io._flat_variables(nnx.state(proj))

    os.makedirs(out, exist_ok=True)
    with hf_io.ShardWriter(out, max_shard_size) as writer:
        for spec in specs:
            part, source = sources[spec.hf_key]
            if part == "projector":
                value = np.asarray(proj_vars[spec.path[1:]].get_value())
                value = np.asarray(spec.to_hf(value)).astype(target or llm_dtype)
            else:
                value = {"vision": vision_tensors, "llm": llm_tensors,
                         "released": projector_tensors}[part][source]
                if spec.hf_key in resized and value.shape[0] < new_vocab:
                    mean = value.astype(np.float32).mean(axis=0, keepdims=True).astype(value.dtype)
                    value = np.concatenate(
                        [value, np.repeat(mean, new_vocab - value.shape[0], axis=0)], axis=0)
                value = hf_io.cast_floating(value, target)
            writer.add(spec.hf_key, value)
            del value
    weights = writer.close()

    hf_config = fmt.hf_config(abstract)
    text_config = hf_config["text_config"]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if llm_hf.get(key) is not None:
            text_config[key] = llm_hf[key]
    hf_io.set_config_dtype(hf_config, (target or llm_dtype).name)
    if target is None:
        hf_config["vision_config"]["dtype"] = vision_dtype.name
    hf_config["mathvlm_template"] = template
    hf_config.update(extra_config or {})
    _write_json(os.path.join(out, "config.json"), hf_config)

    tok.chat_template = chat_template
    tok.save_pretrained(out)
    _clean_tokenizer_config(out)
    if not os.path.exists(os.path.join(out, "chat_template.jinja")):   # older transformers
        with open(os.path.join(out, "chat_template.jinja"), "w") as f:
            f.write(chat_template)
    if preprocessor is None:
        preprocessor = image_processor_config(config.vision.flavour, config.vision.image_size)
        notes.append(f"{vision} has no preprocessor_config.json: wrote the {config.vision.flavour} "
                     "default")
    _write_json(os.path.join(out, "preprocessor_config.json"), preprocessor)
    _write_json(os.path.join(out, "processor_config.json"),
                llava_processor_config(config, image_token, feature_strategy))
    if generation_config:
        shutil.copy(generation_config, os.path.join(out, "generation_config.json"))
    gap = transformers_gap(config)
    if gap:
        notes.append(f"transformers' LlavaForConditionalGeneration cannot run this folder: {gap}; "
                     "load it with mathvlm.hf.from_pretrained")
    return {"command": command, "out": os.path.abspath(out),
            "files": sorted(os.listdir(out)), "shards": weights["shards"], "bytes": weights["bytes"],
            "dtype": target.name if target is not None else "mixed" if len(weights["dtypes"]) > 1
            else next(iter(weights["dtypes"])),
            "projector": projector, "image_token": image_token, "image_token_index": image_id,
            "image_token_added": added, "vocab_size": [old_vocab, new_vocab],
            "tokens_per_image": config.tokens_per_image, "template": template,
            "transformers_loadable": gap is None, "notes": notes}


def _trainer_image_names() -> tuple[str, ...]:
    from mathvlm.data.tokenization import IMAGE_TOKEN_NAMES

    return IMAGE_TOKEN_NAMES
