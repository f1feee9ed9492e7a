"""Load and save Hugging Face ``transformers`` folders (config.json + safetensors) without torch.

    model = mathvlm.hf.from_pretrained("/ckpt/qwen2-1.5b", dtype="bfloat16")
    mathvlm.hf.save_pretrained(model, "/out/qwen2-1.5b")     # transformers can load the folder
    mathvlm.hf.save_pretrained(model, "/out/7b", dtype="bfloat16", max_shard_size="5GB")  # sharded

Never touches the network, pickle files or remote code.

**Adding a model family** (e.g. in ``mathvlm/hf/vision.py``): subclass :class:`HFFormat` and register it
for the ``model_type`` values of config.json it reads and the model classes it writes::

    @register_hf("clip", "clip_vision_model", classes=(CLIPVisionTower,))
    class CLIPFormat(HFFormat):
        def build(self, hf_config, **options): ...        # random-init model from config.json
        def weights(self, model): ...                      # list[WeightSpec]: HF key ↔ state path
        def hf_config(self, model): ...                    # config.json dict for save_pretrained

then add the module to ``_FORMAT_MODULES`` below so the dispatcher imports it. The generic code does
the rest: lazy (sharded) safetensors reading, dtype casting, stacking scanned layers, optional
placement on a mesh, and an error listing missing / unexpected tensors. Composite models (LLaVA)
can reuse :func:`mathvlm.hf.llm.decoder_weights` with their key prefixes.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

from mathvlm.hf.io import (  # noqa: F401
    HFFormat,
    RenamedTensors,
    WeightSpec,
    load_from_tensors,
    read_config,
    read_safetensors,
    write_pretrained,
)

# Modules that register formats; imported on the first dispatch. Missing ones are skipped so the
# vision side may land independently.
_FORMAT_MODULES = ("mathvlm.hf.llm", "mathvlm.hf.vision", "mathvlm.hf.deepseek_vl")
FORMATS: dict[str, HFFormat] = {}            # config.json model_type → format
_SAVERS: list[tuple[tuple[type, ...], HFFormat]] = []


def register_hf(*model_types: str, classes: tuple[type, ...] = ()):
    """Class decorator registering an :class:`HFFormat` for ``model_types`` (reading) and model
    ``classes`` (writing)."""

    def decorate(cls):
        fmt = cls()
        for name in model_types:
            if name in FORMATS and type(FORMATS[name]) is not cls:
                raise ValueError(f"HF model_type {name!r} registered twice: "
                                 f"{type(FORMATS[name]).__name__} and {cls.__name__}")
            FORMATS[name] = fmt
        if classes:
            _SAVERS.append((tuple(classes), fmt))
        return cls

    return decorate


def _import_formats() -> None:
    for module in _FORMAT_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:   # a real import error inside an existing module
                raise


def format_for_config(hf_config: dict[str, Any]) -> HFFormat:
    _import_formats()
    model_type = hf_config.get("model_type")
    if model_type not in FORMATS:
        raise ValueError(f"no mathvlm loader for model_type {model_type!r} (architectures "
                         f"{hf_config.get('architectures')}); supported: {sorted(FORMATS)}")
    return FORMATS[model_type]


def format_for_model(model) -> HFFormat:
    _import_formats()
    for classes, fmt in _SAVERS:
        if isinstance(model, classes):
            return fmt
    raise TypeError(f"no HF writer for {type(model).__name__}; registered classes: "
                    f"{[c.__name__ for classes, _ in _SAVERS for c in classes]}")


def from_pretrained(path: str | os.PathLike, *, mesh=None, rules=None, rename_keys=None, **options):
    """Load a local HF folder into the matching mathvlm model.

    ``options`` go to the format's ``build`` (for decoders: ``dtype``, ``param_dtype``,
    ``scan_layers``, ``remat`` and other :class:`~mathvlm.models.decoder.DecoderConfig` overrides;
    for a LLaVA VLM the same apply to its language model, and ``vision={"scan_layers": True,
    "remat": "full"}`` — :data:`mathvlm.hf.vision.VISION_BUILD_OPTIONS`: ``scan_layers``, ``remat``,
    ``dtype``, ``param_dtype`` — to its image tower; CLIP/SigLIP towers and dual encoders take the
    same ``vision`` dict). ``remat`` is a policy name of :mod:`mathvlm.models.remat` (True/False
    mean ``full``/``none``).
    With ``mesh`` and ``rules`` every parameter is placed sharded as it is read. ``rename_keys``
    (``{old_prefix: new_prefix}`` or a callable ``key -> key | None``) renames checkpoint keys before
    they are matched, for files with a non-standard layout; the key prefixes of other transformers
    versions are already accepted (each format's ``key_aliases``)."""
    hf_config = read_config(path)
    fmt = format_for_config(hf_config)
    return load_from_tensors(fmt, hf_config, read_safetensors(path), mesh=mesh, rules=rules,
                             rename_keys=rename_keys, **options)


def save_pretrained(model, path: str | os.PathLike, *, dtype: str | None = None,
                    max_shard_size: int | str | None = None) -> dict[str, Any]:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers`` loads.

    ``dtype`` (e.g. ``"bfloat16"``) casts floating-point tensors on the devices as they are fetched;
    ``max_shard_size`` (bytes or ``"5GB"``) splits the weights into ``model-0000i-of-0000N.safetensors``
    + ``model.safetensors.index.json`` when they do not fit one file. Parameters are fetched and
    written one at a time, so the host holds at most one shard. Returns ``{"files", "shards",
    "bytes", "dtype", "dtypes"}``."""
    fmt = format_for_model(model)
    return write_pretrained(fmt, model, path, dtype=dtype, max_shard_size=max_shard_size)


def build_from_config(hf_config: dict[str, Any], **options):
    """A randomly initialised model for a config.json dict (use under ``nnx.eval_shape``)."""
    return format_for_config(hf_config).build(hf_config, **options)


def load_json(path) -> dict:
    with open(path) as f:
        return json.load(f)
