"""Image tower: feature-selection token counts, layer indexing, logical axis names."""

import jax
import numpy as np
import pytest
from flax import nnx

from mathvlm import registry
from mathvlm.models.vit import VIT_PRESETS, ViT, ViTConfig
from mathvlm.sharding import PARAM_AXES


def _images(size, batch=2):
    return np.random.RandomState(0).randn(batch, size, size, 3).astype(np.float32)


@pytest.mark.parametrize("preset,strategy,expected", [
    ("clip-vit-l-14-336", "drop_cls", 576), ("clip-vit-l-14-336", "keep_all", 577),
    ("clip-vit-l-14-224", "drop_cls", 256),
    ("siglip-so400m-14-384", "drop_first", 728), ("siglip-so400m-14-384", "drop_cls", 729),
    ("siglip-l-16-384", "keep_all", 576),
])
def test_real_size_token_counts(preset, strategy, expected):
    # Abstract build: no memory for the real-size weights.
    model = nnx.eval_shape(lambda: ViT(ViTConfig(**VIT_PRESETS[preset]), rngs=nnx.Rngs(0)))
    assert model.num_feature_tokens(strategy) == expected


@pytest.mark.parametrize("flavour,strategy,expected", [
    # tiny: 42 px / patch 14 → 3×3 = 9 patches (+1 CLS for CLIP)
    ("clip", "drop_cls", 9), ("clip", "keep_all", 10), ("clip", "drop_first", 9),
    ("siglip", "drop_cls", 9), ("siglip", "drop_first", 8), ("siglip", "keep_all", 9),
])
def test_feature_strategies_on_tiny_towers(flavour, strategy, expected):
    config = ViTConfig(flavour=flavour, image_size=42, patch_size=14, num_layers=2)
    feats = jax.eval_shape(lambda i: ViT(config, rngs=nnx.Rngs(0)).features(i, -2, strategy),
                           jax.ShapeDtypeStruct((2, 42, 42, 3), np.float32))
    assert feats.shape == (2, expected, config.hidden_size)
    model = nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0)))
    assert model.num_feature_tokens(strategy) == expected


def test_layer_index_follows_hf_hidden_states():
    model = ViT(ViTConfig(num_layers=3), rngs=nnx.Rngs(0))
    images = _images(32)
    hidden = model.hidden_states(images)
    assert len(hidden) == 4
    np.testing.assert_array_equal(model.features(images, -2, "keep_all"), hidden[-2])
    np.testing.assert_array_equal(model.features(images, 0, "keep_all"), hidden[0])
    assert not np.allclose(hidden[-2], hidden[-1])
    with pytest.raises(ValueError):
        model.features(images, -5)


def test_every_parameter_has_known_logical_axes():
    model = registry.get("model", "vit")("siglip-tiny", rngs=nnx.Rngs(0))
    for path, var in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param),
                                                         is_leaf=lambda x: isinstance(x, nnx.Variable)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == var.get_value().ndim, path
        assert all(n is None or n in PARAM_AXES for n in names), (path, names)


def test_bf16_compute_stays_close():
    config = ViTConfig(num_layers=2)
    f32 = ViT(config, rngs=nnx.Rngs(0))
    bf16 = ViT(ViTConfig(num_layers=2, dtype="bfloat16"), rngs=nnx.Rngs(0))
    a, b = f32(_images(32))[1], bf16(_images(32))[1]
    assert b.dtype == np.dtype("bfloat16") or str(b.dtype) == "bfloat16"
    assert float(np.abs(np.asarray(a) - np.asarray(b, np.float32)).max()) < 0.1


def test_trailing_pixels_beyond_the_patch_grid_are_ignored():
    """Like transformers' stride-p convolution: a 44-px image with 14-px patches is read as its first
    42 px (SigLIP-so400m reads 384-px images as a 27 × 27 grid over 378 px)."""
    from mathvlm.models.vit import vit

    model = vit(None, rngs=nnx.Rngs(0), flavour="siglip", image_size=42, patch_size=14,
                hidden_act="gelu_pytorch_tanh", num_layers=1)
    images = np.random.default_rng(0).normal(size=(2, 44, 44, 3)).astype(np.float32)
    full, cropped = model(images)[0], model(images[:, :42, :42])[0]
    np.testing.assert_array_equal(np.asarray(full), np.asarray(cropped))
