"""CLIP-Math (MAVIS stage 1) on engine diagrams: the contrastive step learns on a repeated batch, and
with the paper's freezing the text tower stays bit-identical."""

import jax
import numpy as np

from mathvlm import config as mc
from mathvlm import sharding
from mathvlm.data import pipeline
from mathvlm.train.loop import Trainer


def test_clip_math_learns_and_freezes_the_text_tower():
    config = mc.load("configs/mavis/clip_math.py:size=tiny")
    for key, value in {"data.batch_size": "8", "optim.warmup_steps": "0", "optim.lr": "3e-3",
                       "train.trainable": "vision_model,visual_projection,logit_scale"}.items():
        mc.override(config, key, value)
    batch = next(pipeline.make_iterator(config.data, seed=0))
    assert batch["images"].shape == (8, 64, 64, 3) and batch["tokens"].shape == (8, 192)
    assert (batch["tokens"][:, 0] == 257).all()                   # bos, then the caption's bytes
    trainer = Trainer(config, sharding.make_mesh({"data": 4, "fsdp": 2}))
    text_before = jax.tree.map(np.asarray, trainer.state[0]["text_model"])
    metrics = [jax.device_get(trainer.step(batch)) for _ in range(12)]
    losses = [float(m["loss"]) for m in metrics]
    assert abs(losses[0] - np.log(8)) < 0.3                       # ~chance at the start
    assert losses[-1] < 0.6 * losses[0]
    assert metrics[-1]["clip/i2t_accuracy"] > 0.5
    for a, b in zip(jax.tree.leaves(text_before), jax.tree.leaves(trainer.state[0]["text_model"])):
        np.testing.assert_array_equal(a, np.asarray(b))
