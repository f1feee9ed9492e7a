"""``python -m mathvlm.tools.convert export``: any training run's model as a transformers folder.

A run's config (``config.json`` beside ``checkpoints/``) rebuilds the trained model
(:func:`mathvlm.train.build.init_model` with ``restore=``), LoRA adapters are folded (``merge_lora``,
only when asked: a transformers folder has no place for adapters), and :func:`mathvlm.hf.save_pretrained`
writes it, plus the tokenizer files, image processor and chat template the run used.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from flax import nnx

from mathvlm import hf
from mathvlm.hf.assemble import (
    PROCESSOR_FILES,
    TOKENIZER_FILES,
    ConversionError,
    _check_out,
    _templates,
    _trainer_image_names,
    _write_json,
    chat_template_jinja,
    image_processor_config,
    llava_processor_config,
)
from mathvlm.hf.vision import transformers_gap
from mathvlm.models.vlm import VLM


def checkpoint_location(location: str, step: int | None) -> str:
    """``location`` (a workdir, its ``checkpoints`` folder or ``checkpoints/<step>``) or, with
    ``step``, that step's ``checkpoints/<step>`` folder."""
    if step is None:
        return location
    location = os.path.abspath(location)
    folders = (os.path.join(location, "checkpoints"), location, os.path.dirname(location))
    for folder in folders:
        if os.path.isdir(os.path.join(folder, str(step), "state")):
            return os.path.join(folder, str(step))
    saved = sorted({int(d) for f in folders if os.path.isdir(f) for d in os.listdir(f) if d.isdigit()})
    raise ConversionError(f"{location}: no checkpoint of step {step}; saved steps: {saved}")


def _tokenizer_sources(config) -> list[tuple[str, str]]:
    """``(what, folder)`` pairs where the run's tokenizer files may be, in order."""
    from mathvlm.data.tokenization import ENGINE_TOKENIZER

    out = []
    init_hf = config.get("init", {}).get("hf", "")
    if init_hf:
        out.append(("init.hf", init_hf))
    spec = config.get("data", {}).get("tokenizer", "")
    if spec == "engine":
        out.append(("data.tokenizer=engine", ENGINE_TOKENIZER))
    elif spec and spec != "bytes":
        out.append(("data.tokenizer", spec))
    return [(what, folder) for what, folder in out if os.path.isdir(folder)]


def _image_token(folder: str) -> str | None:
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        added = {t["content"] for t in json.load(f).get("added_tokens", [])}
    return next((name for name in _trainer_image_names() if name in added), None)


def _lora_layers(model) -> int:
    from mathvlm.models.lora import LoRADense

    return sum(isinstance(m, LoRADense) for _, m in nnx.iter_modules(model))


def export_run(location: str, out: str, *, merge_lora: bool = False, dtype: str | None = None,
               max_shard_size: int | str | None = "5GB", step: int | None = None) -> dict[str, Any]:
    """Write the model a run trained (its newest checkpoint, or ``step``'s) as a transformers folder.

    LoRA adapters are folded into their base kernels with ``merge_lora``; without it a run with
    adapters is refused (:class:`ConversionError`). Tokenizer, image processor and chat template come
    from ``init.hf`` if set, else from ``data.tokenizer`` when it is a folder (``engine``: the shipped
    engine BPE); a ``bytes`` tokenizer has no files, which the summary notes."""
    from mathvlm import config as mc
    from mathvlm import sharding
    from mathvlm.models.lora import merge_lora as fold
    from mathvlm.train import build
    from mathvlm.train import warm_start

    try:
        config = mc.load_run_config(location)
    except mc.ConfigError as err:
        raise ConversionError(str(err)) from None
    restore = checkpoint_location(location, step)
    _check_out(out, location, config.get("init", {}).get("hf", ""),
               config.get("data", {}).get("tokenizer", ""))
    try:
        _, restored_step = warm_start.checkpoint_state_dir(restore)
    except FileNotFoundError as err:
        raise ConversionError(str(err)) from None
    lora = config.get("lora", None)
    rank = int(lora.get("rank", 0) or 0) if lora else 0
    if rank and not merge_lora:
        raise ConversionError(
            f"{location} trained LoRA adapters (rank {rank} on {list(lora.get('targets', ()))}) and a "
            "transformers folder has no place for adapters: pass --merge-lora to fold them into the "
            "base weights (W + alpha/rank · A·B)")
    notes = []
    try:
        mesh = sharding.make_mesh(config.mesh)
    except ValueError as err:
        mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
        notes.append(f"the run's mesh {dict(config.mesh)} does not fit here ({err}); restored FSDP "
                     f"over {mesh.size} devices")
    try:
        model = build.init_model(config, mesh, restore=restore)
    except FileNotFoundError as err:
        raise ConversionError(f"{err} (folders in the run's config.json are relative to the directory "
                              "it was trained from)") from None
    merged = _lora_layers(model)
    if merged:
        if not merge_lora:
            raise ConversionError(f"{location}: the model has {merged} LoRA layers; pass --merge-lora")
        fold(model)
    try:
        hf.format_for_model(model)
    except TypeError as err:
        raise ConversionError(f"{location}: {err}") from None
    written = hf.save_pretrained(model, out, dtype=dtype, max_shard_size=max_shard_size)

    # Tokenizer, processor and chat template from where the run got them.
    templates_lib = _templates()
    template = config.get("data", {}).get("template", "") or None
    copied, source = [], None
    for what, folder in _tokenizer_sources(config):
        names = [n for n in TOKENIZER_FILES + PROCESSOR_FILES + ("generation_config.json",)
                 if os.path.exists(os.path.join(folder, n))]
        if any(n in TOKENIZER_FILES for n in names):
            for name in names:
                shutil.copy(os.path.join(folder, name), os.path.join(out, name))
            copied, source = names, f"{what} ({folder})"
            break
    if source is None:
        spec = config.get("data", {}).get("tokenizer", "")
        notes.append(f"no tokenizer files written: data.tokenizer={spec!r}"
                     + (" has no files (byte ids 0-255 + pad/bos/eos/image 256-259)"
                        if spec == "bytes" else " and init.hf hold none"))
    has_template = "chat_template.jinja" in copied or "chat_template.json" in copied
    if source and not has_template and os.path.exists(os.path.join(out, "tokenizer_config.json")):
        with open(os.path.join(out, "tokenizer_config.json")) as f:
            has_template = "chat_template" in json.load(f)
    image_token = _image_token(out) if source else None
    if source and not has_template and template in templates_lib.TEMPLATES:
        with open(os.path.join(out, "chat_template.jinja"), "w") as f:
            f.write(chat_template_jinja(template, image_token or templates_lib.IMAGE))
        notes.append(f"wrote chat_template.jinja for the run's template {template!r}")
    if isinstance(model, VLM) and "preprocessor_config.json" not in copied:
        data = config.get("data", {})
        kind = data.get("image_preprocess", "clip" if model.config.vision.has_class_token else "siglip")
        _write_json(os.path.join(out, "preprocessor_config.json"), image_processor_config(
            "siglip" if kind == "siglip" else "clip", data.get("image_size", model.config.vision.image_size)))
        notes.append(f"wrote preprocessor_config.json for the run's {kind!r} image preprocessing")
    if isinstance(model, VLM) and source and "processor_config.json" not in copied and image_token:
        with open(os.path.join(out, "config.json")) as f:
            strategy = json.load(f)["vision_feature_select_strategy"]
        _write_json(os.path.join(out, "processor_config.json"),
                    llava_processor_config(model.config, image_token, strategy))

    with open(os.path.join(out, "config.json")) as f:
        hf_config = json.load(f)
    if template:
        hf_config["mathvlm_template"] = template
        _write_json(os.path.join(out, "config.json"), hf_config)
    gap = transformers_gap(model.config) if isinstance(model, VLM) else None
    if gap:
        notes.append(f"transformers' LlavaForConditionalGeneration cannot run this folder: {gap}; "
                     "load it with mathvlm.hf.from_pretrained")
    return {"command": "export", "out": os.path.abspath(out), "run": os.path.abspath(location),
            "step": restored_step, "class": (hf_config.get("architectures") or [None])[0],
            "files": sorted(os.listdir(out)), "shards": written["shards"], "bytes": written["bytes"],
            "dtype": written["dtype"], "lora_merged": merged, "tokenizer": source,
            "template": template, "transformers_loadable": gap is None, "notes": notes}
