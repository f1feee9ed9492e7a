"""Every paper recipe at size tiny trains on 8 (fake) devices: a few steps on one repeated batch lower
its loss (the whole path: recipe → data rows → sharded model → step kind → loss terms → update)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mathvlm import config as mc
from mathvlm import sharding
from mathvlm.data import engine_prompts, pipeline
from mathvlm.engine import core
from mathvlm.train.loop import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = ["mavis/clip_math.py:size=tiny", "mavis/align.py:size=tiny", "mavis/instruct.py:size=tiny",
           "mavis/dpo.py:size=tiny", "math_llava/finetune.py:size=tiny",
           "math_puma/text_sft.py:size=tiny", "math_puma/text_sft.py:size=tiny-vlm",
           "math_puma/kl_align.py:size=tiny", "math_puma/instruct.py:size=tiny"]


def preference_file(folder) -> str:
    """DPO rows in the pair builder's format: engine prompts, the engine CoT chosen, a wrong one rejected."""
    rows = []
    for index in range(8):
        record = core.make_record(0, index, kind="instruct", version="vision_dominant", image_size=224)
        image = os.path.join(folder, f"{index}.png")
        Image.fromarray(record["image"]).save(image)
        rows.append({"id": str(index), "image": image, "prompt": engine_prompts.engine_prompt(record),
                     "chosen": engine_prompts.engine_target(record),
                     "rejected": "Step 1: Guess.\nThe answer is 0."})
    path = os.path.join(folder, "pairs.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("recipe", RECIPES)
def test_tiny_recipe_loss_falls_on_a_repeated_batch(recipe, tmp_path):
    spec = os.path.join(ROOT, "configs", recipe)
    if "dpo.py" in recipe:
        spec += f",data={preference_file(str(tmp_path))}"
    config = mc.load(spec)
    config.unlock()
    config.optim.warmup_steps = 1     # the recipes warm up over 10-20 steps; this test takes 6
    config.train.steps = 6
    config.data.batch_size = 8
    mesh = sharding.make_mesh(config.mesh)
    assert mesh.size == 8
    trainer = Trainer(config, mesh)
    batch = next(pipeline.make_iterator(config.data, seed=0))
    batch = pipeline.sync_bucket(batch, config.data.get("length_buckets", None), 1)
    losses = [float(trainer.step(batch)["loss"]) for _ in range(6)]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 1e-3, (recipe, losses)
