"""LoRA carried across stages (MAVIS 2 → 3 → 4): a run that trained adapters is the next stage's start,
whose adapters continue (same rank) or are merged into the base kernels (no LoRA, another rank, or
``init.lora=merge``) — through the one model builder, ``mathvlm.train.build.init_model``."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from mathvlm import config as mc
from mathvlm import main, recipes, sharding
from mathvlm.data import pipeline
from mathvlm.models.lora import LoRADense
from mathvlm.train.build import init_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stage(recipe: str, init: str = "", rank: int = 4, **changes):
    config = mc.load(os.path.join(ROOT, "configs", recipe) + (f",init={init}" if init else ""))
    config.unlock()
    config.train.steps, config.data.batch_size, config.optim.warmup_steps = 3, 8, 1
    config.optim.lr = 1e-2
    config.eval.evaluators = ()
    config.lora.update({"rank": rank, "alpha": 8.0, "targets": recipes.DECODER_LORA_TARGETS})
    config.train.trainable = "projector,lora" if rank else "projector,decoder"
    for key, value in changes.items():
        mc.set_value(config, key, value)
    return config


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A tiny MAVIS alignment stage that trained rank-4 adapters on the decoder's q/v projections."""
    workdir = str(tmp_path_factory.mktemp("align_lora"))
    main.run(stage("mavis/align.py:size=tiny"), workdir)
    return workdir


def lora_layers(model):
    return {"/".join(map(str, p)): m for p, m in nnx.iter_modules(model) if isinstance(m, LoRADense)}


def logits(model, config):
    batch = next(pipeline.make_iterator(config.data, seed=0))
    return np.asarray(model(batch["tokens"], batch["images"], image_mask=batch.get("image_mask"),
                            attention_mask=batch["attention_mask"]))


def test_the_next_stage_continues_the_saved_adapters(lora_run):
    config = stage("mavis/instruct.py:size=tiny", init=lora_run)
    mesh = sharding.make_mesh(config.mesh)
    model = init_model(config, mesh)
    trained = init_model(stage("mavis/align.py:size=tiny"), mesh, restore=lora_run)
    layers, saved = lora_layers(model), lora_layers(trained)
    assert layers and layers.keys() == saved.keys()
    for name, layer in layers.items():
        b = np.asarray(layer.lora_b[...])
        assert np.abs(b).max() > 0, name                      # the trained adapters, not fresh zeros
        np.testing.assert_array_equal(b, np.asarray(saved[name].lora_b[...]), err_msg=name)
        assert layer.lora_b[...].sharding.mesh.shape == mesh.shape
    # The stage then trains them: one step of the instruct stage moves B.
    from mathvlm.train.loop import Trainer

    trainer = Trainer(config, mesh)
    batch = pipeline.sync_bucket(next(pipeline.make_iterator(config.data, seed=0)),
                                 config.data.length_buckets, 1)
    assert np.isfinite(float(trainer.step(batch)["loss"]))


def test_a_stage_without_lora_gets_the_adapters_merged(lora_run):
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    trained = init_model(stage("mavis/align.py:size=tiny"), mesh, restore=lora_run)
    config = stage("mavis/instruct.py:size=tiny", init=lora_run, rank=0)
    merged = init_model(config, mesh)
    assert not lora_layers(merged)
    with jax.set_mesh(mesh):
        np.testing.assert_allclose(logits(merged, config), logits(trained, config), atol=2e-4, rtol=1e-4)


def test_merge_then_fresh_adapters_of_another_rank(lora_run):
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    config = stage("mavis/instruct.py:size=tiny", init=lora_run, rank=2, **{"init.lora": "merge"})
    model = init_model(config, mesh)
    trained = init_model(stage("mavis/align.py:size=tiny"), mesh, restore=lora_run)
    layers, saved = lora_layers(model), lora_layers(trained)
    assert layers.keys() == saved.keys()
    for name, layer in layers.items():
        assert layer.lora_a.shape[-1] == 2 and not np.asarray(layer.lora_b[...]).any()
        np.testing.assert_allclose(np.asarray(layer.base.kernel[...]),
                                   np.asarray(saved[name].merged_kernel()), atol=1e-6, err_msg=name)


def test_continuing_with_another_rank_says_what_to_change(lora_run):
    config = stage("mavis/instruct.py:size=tiny", init=lora_run, rank=8)
    with pytest.raises(ValueError, match=r"rank 4 .*lora.rank=8.*init.lora=merge"):
        init_model(config, sharding.make_mesh(config.mesh))
