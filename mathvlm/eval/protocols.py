"""The papers' evaluation protocols as configs (``configs/eval/<protocol>.py``), one command per table row:

    python -m mathvlm.evaluate run --config configs/eval/<protocol>.py --hf DIR --data DIR --workdir OUT

A protocol config names its evaluators (benchmark, prompt variant, files), the paper's decoding and the
columns of its table row; everything model-specific comes from the transformers folder given with
``--hf`` (:func:`folder_settings`): the tokenizer (the folder's own files), the chat template
(``mathvlm_template`` in config.json, written by ``python -m mathvlm.tools.convert build-vlm`` / ``export``),
the image size and image tokens (``vision_config``, ``vision_feature_select_strategy``) and the image
preprocessing (``preprocessor_config.json``). ``--data`` sets every evaluator's ``data_dir``.

Extraction and scoring are local and rule-based by default (no network); the MathVerse evaluators
accept a judge (``judge_url=...,judge_model=...`` config args: the papers' GPT protocol, off by default).
This module imports no JAX (configs load it).
"""

from __future__ import annotations

import json
import os

from ml_collections import ConfigDict

from mathvlm import config as mc

# The papers' decoding. Greedy decoding has temperature 0.
DECODING = {
    # Math-LLaVA eval_mathvista: temperature 0.2, num_beams 1, max_new_tokens 512 (sampling since T > 0).
    "math_llava": {"temperature": 0.2, "top_p": 1.0, "top_k": 0, "max_new_tokens": 512, "seed": 0},
    # Math-PUMA Qwen2 (HF generate): do_sample, temperature 0.1, top_p 0.8, max_new_tokens 768.
    "puma_qwen2": {"temperature": 0.1, "top_p": 0.8, "top_k": 0, "max_new_tokens": 768, "seed": 0},
    # Math-PUMA DeepSeek-Math (lmdeploy): temperature 0.3, top_k 40, top_p 0.8, 2048 tokens, seed 3407.
    "puma_deepseek": {"temperature": 0.3, "top_p": 0.8, "top_k": 40, "max_new_tokens": 2048, "seed": 3407},
    # MAVIS released no inference code or settings: greedy with room for a chain of thought (our choice).
    "mavis": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 1024, "seed": 0},
}
MODELS = {"math_llava": "math_llava", "puma": "puma_qwen2", "puma_qwen2": "puma_qwen2",
          "puma_deepseek": "puma_deepseek", "mavis": "mavis"}

# Paper table columns: (header, metric key). MathVista tasks and skills as the papers abbreviate them.
MATHVISTA_TASKS = (("FQA", "figure question answering"), ("GPS", "geometry problem solving"),
                   ("MWP", "math word problem"), ("TQA", "textbook question answering"),
                   ("VQA", "visual question answering"))
MATHVISTA_SKILLS = (("ALG", "algebraic reasoning"), ("ARI", "arithmetic reasoning"),
                    ("GEO", "geometry reasoning"), ("LOG", "logical reasoning"), ("NUM", "numeric commonsense"),
                    ("SCI", "scientific reasoning"), ("STA", "statistical reasoning"))
MATHVERSE_VERSIONS = (("TD", "Text Dominant"), ("TL", "Text Lite"), ("VI", "Vision Intensive"),
                      ("VD", "Vision Dominant"), ("VO", "Vision Only"))


def mathvista_table(name: str = "mathvista") -> tuple:
    return ((("ALL", f"{name}/accuracy"),)
            + tuple((h, f"{name}/task/{v}") for h, v in MATHVISTA_TASKS)
            + tuple((h, f"{name}/skills/{v}") for h, v in MATHVISTA_SKILLS))


def mathverse_table(name: str = "mathverse") -> tuple:
    return (("ALL", f"{name}/accuracy"),) + tuple((h, f"{name}/version/{v}") for h, v in MATHVERSE_VERSIONS)


def parse_arg(arg: str | None, **extra) -> ConfigDict:
    """The config args every protocol takes (plus ``extra``): ``template`` / ``image_preprocess``
    override the folder's; ``max_examples`` (0 = all) for a quick slice; ``batch_size``; ``pad_to``
    (prompt length multiple: one compiled shape per bucket); ``dtype`` of
    the loaded weights and compute; ``judge_url`` / ``judge_model`` switch MathVerse to a GPT judge and MathVista's extraction to
    its GPT step (with ``judge_prompt``, the few-shot prompt file)."""
    return mc.parse_arg(arg, template="", image_preprocess="", max_examples=0, batch_size=8, pad_to=256,
                        dtype="bfloat16", judge_url="", judge_model="", judge_prompt="", **extra)


def decoding_for(model: str) -> dict:
    if model not in MODELS:
        raise mc.ConfigError(f"model={model!r}: whose decoding to use; one of {sorted(MODELS)}")
    return dict(DECODING[MODELS[model]])


def protocol_config(name: str, arg: ConfigDict, evaluators: list[dict], decoding: dict,
                    table: tuple = ()) -> ConfigDict:
    """A locked evaluation config: a transformers folder (``--hf``, bf16 by default) sharded FSDP-style
    over the local devices, ``evaluators`` with the decoding in each spec and images required."""
    config = mc.defaults()
    config.name = name
    config.model = ConfigDict({"name": "hf", "dtype": arg.dtype, "param_dtype": arg.dtype})
    # 7B/13B weights sharded over every local chip (generation needs no collectives across processes).
    config.mesh.update({"data": 1, "fsdp": -1, "tensor": 1})
    # Filled from the --hf folder by folder_settings(); the args override template / preprocessing.
    config.data = ConfigDict({"tokenizer": "", "template": arg.template, "image_size": 0,
                              "num_image_tokens": 0, "image_preprocess": arg.image_preprocess})
    specs = []
    for spec in evaluators:
        spec = {**spec, **decoding, "missing_images": "error", "batch_size": arg.batch_size}
        if arg.max_examples:
            spec["max_examples"] = arg.max_examples
        if spec["name"] == "mathverse" and arg.judge_url:
            spec["judge"] = {"base_url": arg.judge_url, "model": arg.judge_model or "gpt-4o-mini",
                             "cache_dir": "judge_cache"}
        if spec["name"] == "mathvista" and arg.judge_url:
            if not arg.judge_prompt:
                raise ValueError("judge_url= for MathVista also needs judge_prompt=FILE: the few-shot "
                                 "extraction prompt (MathVista's evaluation/prompts/ext_ans.py demo_prompt)")
            spec["judge"] = {"base_url": arg.judge_url, "model": arg.judge_model or "gpt-4o-mini",
                             "cache_dir": "judge_cache", "prompt_file": arg.judge_prompt}
        specs.append(spec)
    config.eval.evaluators = tuple(specs)
    config.eval.max_new_tokens = decoding["max_new_tokens"]
    config.eval.batch_size = arg.batch_size
    # Prompts padded to a multiple of 256 tokens: a handful of compiled generation shapes for a whole
    # benchmark (image tokens + text span ~100-1500), at the cost of at most 255 padded prefill tokens.
    config.eval.pad_to = arg.pad_to
    config.eval.table = tuple(table)
    config.protocol = name   # marks a protocol config: evaluate run fills data.* from the folder
    return mc.finalize(config)


# ------------------------------------------------------------------------------- the --hf folder

PREPROCESSORS = {"SiglipImageProcessor": "siglip", "SiglipImageProcessorFast": "siglip",
                 "CLIPImageProcessor": "clip", "CLIPImageProcessorFast": "clip"}


def folder_settings(folder: str, *, template: str = "", image_preprocess: str = "") -> dict:
    """``config.data`` entries for a VLM transformers folder: ``tokenizer`` (the folder), ``template``
    (``mathvlm_template`` unless given), ``image_size`` / ``num_image_tokens`` (its vision config) and
    ``image_preprocess`` (its image processor unless given). Raises ValueError saying what to do."""
    from mathvlm.data import templates
    from mathvlm.recipes import folder_geometry

    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--hf {folder}: no config.json; give a transformers folder (e.g. written by "
                                "`python -m mathvlm.tools.convert build-vlm` or `export`)")
    with open(path) as f:
        hf_config = json.load(f)
    if not hf_config.get("vision_config"):
        raise ValueError(f"{path} has no vision_config: the protocols evaluate a VLM (LLaVA-format) folder")
    template = template or hf_config.get("mathvlm_template", "")
    if not template:
        raise ValueError(f"{path} has no 'mathvlm_template' (folders written by `python -m mathvlm.tools.convert "
                         "build-vlm` or `export` carry it); name the model's chat template with the config arg "
                         f"template=..., e.g. --config configs/eval/<protocol>.py:template=vicuna_v1 "
                         f"(templates: {sorted(templates.TEMPLATES)})")
    if template not in templates.TEMPLATES:
        raise ValueError(f"chat template {template!r} (from {path} or template=) is unknown; templates: "
                         f"{sorted(templates.TEMPLATES)}")
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    if not any(os.path.isfile(os.path.join(folder, name)) for name in tokenizer_files):
        raise ValueError(f"--hf {folder} holds no tokenizer (none of {tokenizer_files}); copy the model's "
                         "tokenizer files into it")
    image_size, num_image_tokens = folder_geometry(folder, 0, 0)
    if not image_preprocess:
        image_preprocess = _folder_preprocess(folder, hf_config)
    return {"tokenizer": folder, "template": template, "image_size": image_size,
            "num_image_tokens": num_image_tokens, "image_preprocess": image_preprocess}


def _folder_preprocess(folder: str, hf_config: dict) -> str:
    """``clip`` (pad to square, CLIP mean/std: LLaVA-1.5's ``pad``), ``clip_nopad`` or ``siglip`` (plain
    resize, 0.5): ``mathvlm_image_preprocess`` of config.json (``convert import`` writes the release's),
    else the folder's image processor."""
    if hf_config.get("mathvlm_image_preprocess"):
        return hf_config["mathvlm_image_preprocess"]
    path = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            processor = json.load(f)
        kind = processor.get("image_processor_type", "")
        if kind in ("LlavaImageProcessor", "LlavaImageProcessorFast"):
            return "clip" if processor.get("do_pad") else "clip_nopad"
        if kind in PREPROCESSORS:
            return PREPROCESSORS[kind]
        raise ValueError(f"{path}: image_processor_type {kind!r} has no mathvlm equivalent (known: "
                         f"{sorted(PREPROCESSORS)}); name one with the config arg image_preprocess=clip|siglip|clip_nopad")
    tower = hf_config["vision_config"].get("model_type", "")
    if tower.startswith(("clip", "siglip")):
        return "siglip" if tower.startswith("siglip") else "clip"
    raise ValueError(f"{folder} has no preprocessor_config.json and its tower ({tower!r}) names no default; "
                     "set the config arg image_preprocess=clip|siglip|clip_nopad")


def prepare(config, *, hf: str | None, data: str | None, specs: list[dict]) -> list[dict]:
    """For a protocol config: fill ``config.data`` from the ``--hf`` folder and set every benchmark
    evaluator's ``data_dir`` to ``--data``; returns the specs. Other configs pass through, with
    ``--data`` still setting ``data_dir``."""
    from mathvlm import registry
    from mathvlm.eval.base import BenchmarkEvaluator

    benchmark = [isinstance(cls, type) and issubclass(cls, BenchmarkEvaluator)
                 for cls in (registry.get("evaluator", s["name"]) for s in specs)]
    if data:
        if not os.path.isdir(data):
            raise FileNotFoundError(f"--data {data}: no such folder (the benchmark's local copy)")
        specs = [{**s, "data_dir": data} if is_benchmark else s for s, is_benchmark in zip(specs, benchmark)]
    if not config.get("protocol"):
        return specs
    if not hf:
        raise ValueError(f"{config.protocol}: a protocol config evaluates a transformers folder; pass --hf DIR "
                         "(a training run: `python -m mathvlm.tools.convert export RUN --out DIR` first)")
    missing = [s["name"] for s, is_benchmark in zip(specs, benchmark) if is_benchmark and not s.get("data_dir")]
    if missing:
        raise ValueError(f"{config.protocol}: pass --data DIR, the local copy of the benchmark ({missing}); "
                         "the config's docstring shows the folder layout")
    with config.unlocked():
        config.data.update(folder_settings(hf, template=config.data.template,
                                           image_preprocess=config.data.image_preprocess))
    return specs


def write_table(config, metrics: dict, workdir: str) -> str | None:
    """The protocol's paper-table row (``config.eval.table``: (header, metric)) as percentages in
    ``workdir/table.md``; a metric the run lacks (a category absent from a slice) shows as –."""
    columns = config.eval.get("table", ())
    if not columns:
        return None
    cells = [f"{100 * metrics[key]:.1f}" if key in metrics else "–" for _, key in columns]
    text = (f"{config.get('protocol', config.name)}\n\n| " + " | ".join(h for h, _ in columns) + " |\n|"
            + "---:|" * len(columns) + "\n| " + " | ".join(cells) + " |\n")
    path = os.path.join(workdir, "table.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text
