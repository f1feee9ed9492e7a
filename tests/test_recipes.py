"""Every paper recipe loads at every size, and the tiny ones fit together (shapes, tokens, init maps)."""

import glob
import importlib.util
import os

import pytest
from flax import nnx

from mathvlm import config as mc
from mathvlm import recipes, registry, sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))


def load_with(path, args: dict):
    """Load ``path`` with the subset of ``args`` the recipe takes (its error names unknown ones)."""
    args = dict(args)
    while True:
        try:
            return mc.load(f"{path}:" + ",".join(f"{k}={v}" for k, v in args.items()))
        except mc.ConfigError as e:
            unknown = [k for k in args if f"unknown config arg {k!r}" in str(e)]
            if not unknown:
                raise
            del args[unknown[0]]


def sizes_of(path):
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "SIZES", (None,))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_recipe_loads_at_every_size(path):
    for size in sizes_of(path):
        if size is None:
            config = mc.load(path)
        else:
            args = {"size": size, "data": "/nonexistent/data.jsonl"}
            if not size.startswith("tiny"):
                args.update(hf="/nonexistent/hf", init="/nonexistent/run")
            config = load_with(path, args)
        assert config.name and config.train.steps > 0
        registry.get("step", config.train.step)
        if config.job == "chain":
            assert all(stage["config"] for stage in config.stages)


def test_real_sizes_say_what_they_need():
    with pytest.raises(mc.ConfigError, match="hf="):
        mc.load(os.path.join(ROOT, "configs/mavis/instruct.py") + ":size=7b")
    with pytest.raises(mc.ConfigError, match="sizes"):
        mc.load(os.path.join(ROOT, "configs/mavis/instruct.py") + ":size=70b")


def test_tiny_vlm_matches_the_tiny_data():
    model = nnx.eval_shape(lambda: registry.get("model", "vlm")(
        **{k: v for k, v in recipes.tiny_vlm().to_dict().items() if k != "name"}, rngs=nnx.Rngs(0)))
    assert model.config.tokens_per_image == recipes.TINY_IMAGE_TOKENS
    assert model.config.vision.image_size == recipes.TINY_IMAGE_SIZE
    assert model.config.decoder.vocab_size == recipes.ENGINE_VOCAB
    # CLIP-Math's tiny image tower is the VLM's (so stage 1 loads into stage 2).
    clip = mc.load(os.path.join(ROOT, "configs/mavis/clip_math.py") + ":size=tiny")
    for key, value in clip.model.vision.items():
        assert getattr(model.config.vision, key) == value


def test_lora_recipes_train_the_adapters():
    """``train.trainable="projector,lora"`` (MAVIS) must select the adapters' lora_a / lora_b and
    nothing of the frozen base kernels."""
    import jax

    from mathvlm.models.lora import apply_lora
    from mathvlm.train import optim

    model = registry.get("model", "vlm")(
        **{k: v for k, v in recipes.tiny_vlm().to_dict().items() if k != "name"}, rngs=nnx.Rngs(0))
    apply_lora(model, rank=4, alpha=8.0, targets=recipes.DECODER_LORA_TARGETS, rngs=nnx.Rngs(1))
    for spec in ("projector,lora", mc.load(os.path.join(ROOT, "configs/mavis/dpo.py") + ":size=7b,hf=/x")
                 .train.trainable):
        state = nnx.state(model, optim.trainable_filter(spec))
        paths = [sharding.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
        assert any("lora_a" in p for p in paths) and any("lora_b" in p for p in paths), spec
        assert not any("/base/" in p for p in paths), spec
        assert all("lora" in p or p.startswith("projector") for p in paths), spec


@pytest.mark.parametrize("path", [p for p in CONFIGS if any(not str(s).startswith("tiny") and s is not None
                                                            for s in sizes_of(p))],
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_real_sizes_shard_parameters_over_every_chip(path):
    """A 13B full fine-tune replicated per chip fits on none: every real size defaults to FSDP over all
    devices (the batch split over the same chips), which the mesh resolves to 8 here."""
    for size in sizes_of(path):
        if size is None or str(size).startswith("tiny"):
            continue
        config = load_with(path, {"size": size, "hf": "/nonexistent/hf", "data": "/nonexistent/d.jsonl"})
        mesh = sharding.make_mesh(config.mesh)
        assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}, (size, dict(mesh.shape))
        assert config.sharding.rules in ("fsdp", "fsdp_tp")
        assert config.data.batch_size % 8 == 0


def test_puma_stage2_takes_the_stage1_llm_and_an_image_root():
    config = mc.load(os.path.join(ROOT, "configs/math_puma/kl_align.py")
                     + ":size=7b,hf=/vlm,llm=/runs/puma1,data=/d/train.json,image_root=/d/images")
    assert (config.init.checkpoint, config.init.params) == ("/runs/puma1", ":decoder")
    assert config.data.image_root == "/d/images" and config.data.format == "puma_pairs"
    with pytest.raises(mc.ConfigError, match="not both"):
        mc.load(os.path.join(ROOT, "configs/math_puma/kl_align.py") + ":size=7b,hf=/vlm,llm=/a,init=/b")
    config = mc.load(os.path.join(ROOT, "configs/math_puma/instruct.py")
                     + ":size=7b,hf=/vlm,init=/runs/puma2,data=/d/s3.json,image_root=/d/s3")
    assert config.data.image_root == "/d/s3"
