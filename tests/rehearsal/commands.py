"""The commands docs/scale.md documents, called in-process with their own argument handling (an
interpreter start-up per command would double the rehearsal's time), and the checks the chains share."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from mathvlm import config as mc
from mathvlm import main as entry

BUDGET = ("--config.data.batch_size=8",)


def train(spec: str, workdir, *overrides: str) -> dict:
    """``python -m mathvlm.main --config SPEC --workdir W [--config.k=v ...]``: the same argument checks
    (``preflight``) and the same run."""
    config = mc.preflight(["main", f"--config={spec}", *BUDGET, *overrides])
    metrics = entry.run(config, str(workdir))
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["mesh"] == {"data": 1, "fsdp": -1, "tensor": 1}, saved["mesh"]   # the recipe's own
    assert np.isfinite(metrics["loss"]), metrics
    return metrics


def convert(*argv: str) -> None:
    """``python -m mathvlm.tools.convert ARGV``."""
    from mathvlm.tools import convert as convert_cli

    convert_cli.main(list(argv))


def trained_lora(workdir) -> dict[str, np.ndarray]:
    from flax import nnx

    from mathvlm import sharding
    from mathvlm.train.build import init_model

    config = mc.load_run_config(str(workdir))
    model = init_model(config, sharding.make_mesh(config.mesh), restore=str(workdir))
    return {sharding.path_name(p): np.asarray(v) for p, v in
            jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.LoRAParam))}


def image_prompt(c) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, pixels) of one random prompt with the VLM config ``c``'s image placeholders inline."""
    rng = np.random.default_rng(0)
    size = c.vision.image_size
    pixels = rng.normal(size=(1, size, size, 3)).astype(np.float32)
    text = rng.integers(5, c.image_token_id - 1, size=(1, 6))
    tokens = np.concatenate([text[:, :2], np.full((1, c.tokens_per_image), c.image_token_id), text[:, 2:]],
                            axis=1).astype(np.int32)
    return tokens, pixels


def assert_exported_logits_equal(run, exported):
    """The exported folder in transformers (float32) gives the logits of the run's own model (its LoRA
    adapters applied, float32 compute) on a prompt with an image."""
    import torch
    import transformers

    from mathvlm import sharding
    from mathvlm.train.build import init_model

    config = mc.load_run_config(str(run))
    config.model.dtype = "float32"
    model = init_model(config, sharding.make_mesh(config.mesh), restore=str(run))
    hf_model = transformers.AutoModelForImageTextToText.from_pretrained(exported).eval()
    tokens, pixels = image_prompt(model.config)
    ours = np.asarray(model(tokens, pixels))
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                          pixel_values=torch.tensor(pixels).permute(0, 3, 1, 2)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
