"""Pieces the paper recipes in ``configs/`` share, so each recipe states only what its stage changes.

The tiny sizes are one model family on the built-in data engine (64-px diagrams, the shipped engine BPE
tokenizer), so
the stages of every paper chain into each other on CPU: a CLIP-Math image tower loads into the VLM,
an LLM trained on text loads into the VLM's decoder, and so on. The real sizes start from local
transformers folders (``hf=``) and the papers' hyper-parameters.
"""

from __future__ import annotations

import json
import os

from ml_collections import ConfigDict

from mathvlm import config as mc

TINY_IMAGE_SIZE = 64
# The shipped engine tokenizer (load_tokenizer("engine")): 1024 ids, "<image>" = 3 (tests check both).
ENGINE_VOCAB, ENGINE_IMAGE_ID = 1024, 3
TINY_VISION = {"image_size": TINY_IMAGE_SIZE, "patch_size": 8}          # 64 patches, width 32
TINY_DECODER = {"vocab_size": ENGINE_VOCAB, "hidden_size": 128, "intermediate_size": 384, "num_layers": 4,
                "num_heads": 4, "num_kv_heads": 2, "head_dim": 32, "max_position": 1024}
TINY_IMAGE_TOKENS = 64       # CLIP flavour: 64 patches (the class token is dropped)
# The LLM's attention projections only: LoRA must not touch the image tower's own q/v projections.
DECODER_LORA_TARGETS = (r"decoder/.*(q_proj|v_proj)",)
# Math-LLaVA's complexity-ratio ablation (its Table 8): mixes of levels 0:1:2:3, the chosen one first.
TABLE8_MIXES = ("2:3:4:1", "3:3:3:1", "4:3:2:1", "2:4:3:1", "1:1:1:1")


def split_mixes(text: str) -> tuple[str, ...]:
    """A sweep config's ``mixes`` arg (``"2:3:4:1/1:1:1:1"``: ``/`` between mixes, as ``,`` separates
    args) as a tuple of mixes."""
    mixes = tuple(m.strip() for m in str(text).split("/") if m.strip())
    if not mixes:
        raise mc.ConfigError(f"mixes={text!r}: give mixes like 2:3:4:1/1:1:1:1")
    return mixes


def check_size(size: str, sizes: tuple[str, ...]) -> None:
    if size not in sizes:
        raise mc.ConfigError(f"size={size!r}; sizes: {sizes}")


def tiny_vlm(projector: str = "mlp2x_gelu") -> ConfigDict:
    """The tiny VLM every tiny multimodal recipe trains (CLIP-flavour tower, LLaMA-style decoder)."""
    return ConfigDict({"name": "vlm", "vision_preset": "tiny", "decoder_preset": "tiny",
                       "vision": dict(TINY_VISION), "decoder": dict(TINY_DECODER),
                       "image_token_id": ENGINE_IMAGE_ID, "projector": projector,
                       "feature_strategy": "drop_cls", "feature_norm": ""})


def tiny_engine_data(task: str, *, batch_size: int, seq_len: int, version="mixed",
                     multiple_choice: float = 1.0, template: str = "vicuna_v1",
                     families=("analytic_geometry", "function")) -> ConfigDict:
    """Engine rows (``engine_vlm`` source) at the tiny model's resolution and token count.

    Multiple choice by default: a tiny model can learn to pick a letter well before it can write a
    free-form exact answer, which is what makes its accuracy per version readable."""
    data = ConfigDict({"source": "engine_vlm", "task": task, "version": version,
                       "multiple_choice": multiple_choice, "answer": "cot", "families": tuple(families),
                       "tokenizer": "engine", "template": template, "batch_size": batch_size,
                       "seq_len": seq_len, "image_size": TINY_IMAGE_SIZE, "render_size": 224,
                       "num_image_tokens": TINY_IMAGE_TOKENS, "max_bad_fraction": 0.05,
                       # Most rows are far shorter than the longest: three shapes, three compiles.
                       "length_buckets": (seq_len // 2, 3 * seq_len // 4, seq_len),
                       # experiments' row transforms (mathvlm.data.pipeline); none in any recipe
                       "row_transforms": ()})
    return data


def engine_eval(versions=("text_dominant", "text_lite", "vision_intensive", "vision_dominant",
                          "vision_only", "text_only"), num_examples: int = 48,
                families=("analytic_geometry", "function")) -> dict:
    """The held-out engine evaluator (accuracy per version, family, complexity), its diagrams drawn at
    the training rows' canvas size (the predictor then preprocesses them like training images)."""
    return {"name": "engine_heldout", "num_examples": num_examples, "versions": tuple(versions),
            "families": tuple(families), "image_size": 224, "multiple_choice": True}


def engine_blind_eval(versions=("vision_dominant",), num_examples: int = 48,
                      families=("analytic_geometry", "function"), mode: str = "zeros") -> dict:
    """The held-out evaluator with every picture replaced by zeros (metrics ``engine_blind/...``): the
    gap to :func:`engine_eval` on the same versions is what the model reads from the image. Other modes
    (``blank``, ``shuffled``: see ``engine_heldout``) log as ``engine_<mode>/...``."""
    label = "engine_blind" if mode == "zeros" else f"engine_{mode}"
    return {**engine_eval(versions, num_examples, families), "label": label, "blind": mode}


def real_size(config) -> None:
    """Real sizes shard parameters and optimizer moments over every chip (FSDP, ZeRO-3 style) with the
    batch split over the same chips: a 7B/13B state replicated per chip fits on none. Override with
    ``--config.mesh.*`` / ``--config.sharding.rules`` (e.g. ``fsdp_tp`` with ``mesh.tensor``)."""
    config.mesh.update({"data": 1, "fsdp": -1, "tensor": 1})
    config.sharding.rules = "fsdp"
    if config.train.step in TOKEN_STEPS:
        # Logits a chunk of positions at a time: [batch, L, vocab] float32 logits are 1.2 GiB per
        # sequence of 2048 tokens at Qwen2's 152K vocabulary, more than a 7B layer's activations.
        config.train.logits_chunk = LOGITS_CHUNK


# The step kinds whose losses read token log-probs (they take train.logits_chunk).
TOKEN_STEPS = ("next_token", "pair", "preference", "grpo")
LOGITS_CHUNK = 512


def real_vlm(hf: str) -> ConfigDict:
    """A real-size VLM loaded from a local LLaVA-format transformers folder, bf16 compute over f32
    master weights, the decoder's layers scanned, both towers' layers rematerialised (compile time and
    memory at 7B/13B); attention is the platform's fused kernel (the models' ``attention_impl="auto"``)."""
    if not hf:
        raise mc.ConfigError("real sizes need hf=<local LLaVA-format transformers folder> (image tower, "
                             "projector and LLM; assemble one from released parts with `python -m mathvlm.tools.convert "
                             "build-vlm --vision DIR --llm DIR --projector KIND --out DIR`)")
    return ConfigDict({"name": "hf", "dtype": "bfloat16", "param_dtype": "float32",
                       "scan_layers": True, "remat": "full",
                       # The tower unscanned: its parameters keep the per-layer layout of CLIP-Math's
                       # stage-1 checkpoint, which initialises it.
                       "vision": {"remat": "full"}})


def folder_geometry(hf: str, image_size: int, num_image_tokens: int) -> tuple[int, int]:
    """``(image size, image tokens)`` of the VLM or CLIP folder ``hf`` from its config.json (any tower
    size, e.g. a miniature one in the release's layout); the paper's numbers when the folder is not
    there yet (writing a config for a later machine, AOT compilation)."""
    path = os.path.join(hf, "config.json") if hf else ""
    if not path or not os.path.isfile(path):
        return image_size, num_image_tokens
    with open(path) as f:
        folder = json.load(f)
    vision = folder.get("vision_config")
    if not vision:
        return image_size, num_image_tokens
    if folder.get("model_type") == "deepseek_vl_hybrid":   # one 1024-px image in, SigLIP's patches out
        return (folder["high_res_vision_config"]["image_size"],
                (vision["image_size"] // vision["patch_size"]) ** 2)
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    has_class = vision.get("model_type", "clip_vision_model").startswith("clip")
    # LLaVA's "default" feature strategy drops the first token (CLIP's class token; a SigLIP patch).
    keep_all = folder.get("vision_feature_select_strategy", "default") == "full"
    return vision["image_size"], patches + has_class - (0 if keep_all else 1)


def real_engine_data(task: str, hf: str, *, batch_size: int, template: str = "vicuna_v1",
                     image_size: int = 336, num_image_tokens: int = 576, seq_len: int = 2048,
                     preprocess: str = "clip") -> ConfigDict:
    """Engine rows at a real model's resolution (read from the folder when it exists), tokenised with
    its own tokenizer."""
    image_size, num_image_tokens = folder_geometry(hf, image_size, num_image_tokens)
    return ConfigDict({"source": "engine_vlm", "task": task, "version": "mixed", "multiple_choice": 0.5,
                       "tokenizer": hf, "template": template, "batch_size": batch_size,
                       "seq_len": seq_len, "image_size": image_size, "render_size": image_size,
                       "image_preprocess": preprocess, "num_image_tokens": num_image_tokens,
                       "length_buckets": (512, 1024, seq_len), "max_bad_fraction": 0.01})


def tiny_vlm_stage(config, task: str, *, steps: int, lr: float, seq_len: int, batch_size: int = 16,
                   eval_examples: int = 0, **data_options) -> None:
    """Fill ``config`` for a tiny VLM stage on engine rows: model, data, schedule and, with
    ``eval_examples``, the held-out evaluator with room for the chain of thought."""
    config.model = tiny_vlm()
    config.data = tiny_engine_data(task, batch_size=batch_size, seq_len=seq_len, template="plain",
                                   **data_options)
    config.train.steps = steps
    config.optim.update({"lr": lr, "warmup_steps": max(1, min(20, steps // 10)), "weight_decay": 0.01})
    if eval_examples:
        config.eval.evaluators = (engine_eval(num_examples=eval_examples),
                                  engine_blind_eval(num_examples=eval_examples))
        config.eval.max_new_tokens = 160  # the chain of thought and its answer line


def puma_real_stage(config, task: str, hf: str, *, steps: int, data_format: str, data_path: str,
                    image_root: str = "") -> None:
    """Math-PUMA's released settings at 7B: Qwen2 + SigLIP-so400m (728 image
    tokens, plain 384-px resize), ChatML with images first, AdamW lr 3e-5, cosine, warmup 1%, weight
    decay 0.1, global batch 128, seed 3407, FSDP over every chip; engine rows unless ``data_path``
    names a Math-PUMA file (image paths relative to ``image_root``)."""
    config.seed = 3407
    config.model = real_vlm(hf)
    config.init.hf = hf
    data = real_engine_data(task, hf, batch_size=128, template="chatml", image_size=384,
                            num_image_tokens=728, preprocess="siglip")
    if data_path:
        data.update({"source": "conversations", "format": data_format, "path": data_path, "shuffle": True,
                     "image_root": image_root})
    config.data = data
    real_size(config)
    config.train.steps = steps
    config.optim.update({"lr": 3e-5, "warmup_steps": max(1, steps // 100), "weight_decay": 0.1})
    config.checkpoint.every_steps = 200
