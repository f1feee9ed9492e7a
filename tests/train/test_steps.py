"""Step kinds on the tiny decoder, 8 fake devices: learning on a repeated batch, freezing (bit-identical,
no optimizer state), Math-PUMA pairs, DPO against a frozen reference."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from mathvlm import config as mc
from mathvlm import sharding
from mathvlm.data import pipeline
from mathvlm.train.loop import Trainer


def make_config(data, loss_terms, step, trainable="all", lr=3e-3, fsdp=2):
    config = mc.defaults()
    config.mesh.fsdp = fsdp
    config.model = mc.ConfigDict({"name": "decoder_lm", "preset": "tiny", "vocab_size": 260})
    config.data = mc.ConfigDict({"tokenizer": "bytes", "template": "plain", "seq_len": 96,
                                 "batch_size": 8, **data})
    config.loss.terms = loss_terms
    config.train.step = step
    config.train.trainable = trainable
    config.train.steps = 30
    config.optim.lr = lr
    config.optim.warmup_steps = 0
    config.optim.schedule = "constant"
    return mc.finalize(config)


def run(config, steps):
    mesh = sharding.make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    batch = next(pipeline.make_iterator(config.data, seed=0))   # one batch, repeated
    losses = [float(trainer.step(batch)["loss"]) for _ in range(steps)]
    return trainer, losses


def test_next_token_freezing_keeps_params_bit_identical_without_optimizer_state():
    config = make_config({"source": "text_math"}, [{"name": "next_token", "weight": 1.0}],
                         "next_token", trainable="lm_head,norm")
    mesh = sharding.make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    before = jax.tree.map(np.asarray, nnx.state(trainer.model))
    batch = next(pipeline.make_iterator(config.data, seed=0))
    losses = [float(trainer.step(batch)["loss"]) for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0]
    after = nnx.state(trainer.model)
    changed = []
    for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after)):
        name = sharding.path_name(path)
        same = np.array_equal(old, np.asarray(new))
        if name.startswith(("embed_tokens", "layers")):
            assert same, f"frozen parameter {name} changed"
        else:
            changed.append(name)
    assert "lm_head/kernel" in changed
    optimizer_paths = [sharding.path_name(p) for p, _ in
                       jax.tree_util.tree_leaves_with_path(trainer.state[1])]
    assert not [p for p in optimizer_paths if "embed_tokens" in p or "layers/" in p]
    assert [p for p in optimizer_paths if "lm_head" in p]


def write_rows(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return str(path)


def test_pair_step_learns(tmp_path):
    rows = [{"instruction": f"In a right triangle the legs are {a} and {b}. Find the area.",
             "output": f"{a * b / 2:g}", "instruction_2": "Find the area.", "output_2": f"{a * b / 2:g}"}
            for a, b in [(3, 4), (5, 2), (6, 7), (8, 3), (2, 9), (4, 4), (7, 5), (9, 9)]]
    config = make_config({"source": "conversations", "format": "puma_pairs",
                          "path": write_rows(tmp_path, "pairs.json", rows)},
                         [{"name": "puma_kl", "weight": 1.0, "mode": "official"}], "pair")
    _, losses = run(config, 20)
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]


def test_pair_step_with_chunked_logits_equals_full_logits_on_the_mesh(tmp_path):
    """``train.logits_chunk`` (40 positions: does not divide seq_len 96) through the
    Trainer on 8 devices with FSDP: the first step's loss, metrics and gradient norm are those of
    the full logits."""
    rows = [{"instruction": f"A rectangle is {a} by {b}. Find its area.", "output": f"{a * b}",
             "instruction_2": "Find the area.", "output_2": f"{a * b}"}
            for a, b in [(3, 4), (5, 2), (6, 7), (8, 3), (2, 9), (4, 4), (7, 5), (9, 9)]]
    data = {"source": "conversations", "format": "puma_pairs",
            "path": write_rows(tmp_path, "pairs.json", rows)}
    terms = [{"name": "puma_kl", "weight": 1.0, "mode": "official"},
             {"name": "next_token", "weight": 0.5, "prefix": "weak_", "label": "weak_ce"}]
    metrics = []
    for chunk in (0, 40):
        config = make_config(data, terms, "pair")
        config.unlock()
        config.train.logits_chunk = chunk
        trainer = Trainer(config, sharding.make_mesh(config.mesh))
        batch = next(pipeline.make_iterator(config.data, seed=0))
        metrics.append(jax.tree.map(np.asarray, trainer.step(batch)))
    full, chunked = metrics
    assert np.isfinite(full["loss"]) and float(full["puma_kl/kl"]) > 0
    for key in full:
        np.testing.assert_allclose(chunked[key], full[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_preference_step_starts_at_log2_and_learns(tmp_path):
    rows = [{"prompt": f"What is {a}+{b}?", "chosen": f"{a + b}", "rejected": f"{a + b + 1}"}
            for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (4, 1), (6, 3), (9, 9)]]
    config = make_config({"source": "conversations", "format": "preference_rows",
                          "path": write_rows(tmp_path, "prefs.json", rows)},
                         [{"name": "dpo", "weight": 1.0, "beta": 0.5}], "preference", lr=1e-3)
    trainer, losses = run(config, 15)
    assert losses[0] == pytest.approx(np.log(2), abs=1e-5)   # policy == reference at the first step
    assert losses[-1] < losses[0] - 0.1
    assert trainer.reference_state is not None


def test_stage_chaining_loads_previous_checkpoint(tmp_path):
    """Stage 2 starts from stage 1's saved weights for the named parameters only."""
    from mathvlm import main as entry
    from mathvlm.train.checkpoint import Checkpointer

    stage1 = make_config({"source": "text_math"}, [{"name": "next_token", "weight": 1.0}], "next_token")
    stage1.unlock()
    stage1.train.steps = 3
    entry.run(stage1, str(tmp_path / "stage1"))
    saved = Trainer(stage1, sharding.make_mesh(stage1.mesh))
    saved.state, _ = Checkpointer(str(tmp_path / "stage1")).restore(3, saved.state)
    trained = {sharding.path_name(p): np.asarray(v) for p, v in
               jax.tree_util.tree_leaves_with_path(nnx.state(saved.model))}

    stage2 = make_config({"source": "text_math"}, [{"name": "next_token", "weight": 1.0}], "next_token",
                         fsdp=4)
    stage2.unlock()
    stage2.seed = 1                      # a different random init, so loaded values are recognisable
    stage2.init.checkpoint = str(tmp_path / "stage1")
    stage2.init.params = "layers,lm_head"
    loaded = Trainer(stage2, sharding.make_mesh(stage2.mesh))
    for path, value in jax.tree_util.tree_leaves_with_path(nnx.state(loaded.model)):
        name = sharding.path_name(path)
        if name.startswith(("layers", "lm_head")):
            np.testing.assert_array_equal(np.asarray(value), trained[name], err_msg=name)
        else:
            assert not np.array_equal(np.asarray(value), trained[name]), name

    stage2.init.params = "vision_tower"
    with pytest.raises(ValueError, match="selects no parameter"):
        Trainer(stage2, sharding.make_mesh(stage2.mesh))
    stage2.init.params = "layers:lm_head"
    with pytest.raises(ValueError, match="missing there"):
        Trainer(stage2, sharding.make_mesh(stage2.mesh))


def test_batch_that_does_not_divide_over_the_mesh_is_refused():
    config = make_config({"source": "text_math"}, [{"name": "next_token", "weight": 1.0}], "next_token")
    config.unlock()
    config.data.batch_size = 6
    with pytest.raises(ValueError, match="data.batch_size=6 must divide over the 8 batch shards"):
        Trainer(config, sharding.make_mesh({"data": 4, "fsdp": 2}))
