"""CLIP / SigLIP text towers: masking and pooling rules; dual encoder outputs; logical axis names."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from mathvlm import registry
from mathvlm.sharding import PARAM_AXES
from mathvlm.models.dual_encoder import logits_per_image
from mathvlm.models.text_tower import TextTower, TextTowerConfig


def test_causal_mask_hides_the_future():
    model = TextTower(TextTowerConfig(), rngs=nnx.Rngs(0))
    tokens = np.array([[5, 6, 7, 8, 9, 10]])
    changed = tokens.copy()
    changed[0, -1] = 42
    a, b = model(tokens)[0], model(changed)[0]
    np.testing.assert_allclose(a[:, :-1], b[:, :-1], atol=1e-6)
    assert not np.allclose(a[:, -1], b[:, -1])


def test_pooling_rules():
    tokens = np.array([[5, 90, 7, 3, 1], [5, 6, 3, 3, 80]])
    # eos_token_id == 2 (old configs): pool at the highest id.
    legacy = TextTower(TextTowerConfig(eos_token_id=2), rngs=nnx.Rngs(0))
    h, pooled = legacy(tokens)
    np.testing.assert_array_equal(pooled, np.asarray(h)[[0, 1], [1, 4]])
    # newer configs: first position of eos_token_id.
    new = TextTower(TextTowerConfig(eos_token_id=3), rngs=nnx.Rngs(0))
    h, pooled = new(tokens)
    np.testing.assert_array_equal(pooled, np.asarray(h)[[0, 1], [3, 2]])


def test_dual_encoders_return_normalised_embeddings_and_scales():
    images = np.random.RandomState(0).randn(3, 32, 32, 3).astype(np.float32)
    tokens = np.array([[5, 6, 2, 0], [7, 2, 0, 0]])
    clip = registry.get("model", "clip_dual_encoder")(rngs=nnx.Rngs(0))(images, tokens)
    assert clip["image_embeds"].shape == (3, 24) and clip["text_embeds"].shape == (2, 24)
    np.testing.assert_allclose(np.linalg.norm(clip["image_embeds"], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(clip["text_embeds"], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(clip["logit_scale"], 1 / 0.07, rtol=1e-5)
    assert clip["logit_bias"] is None and logits_per_image(clip).shape == (3, 2)
    siglip = registry.get("model", "siglip_dual_encoder")(rngs=nnx.Rngs(0))(images, tokens)
    np.testing.assert_allclose(siglip["logit_scale"], 10.0, rtol=1e-5)
    np.testing.assert_allclose(siglip["logit_bias"], -10.0)
    assert math.isfinite(float(logits_per_image(siglip).sum()))


def test_siglip_tower_is_bidirectional_and_pools_the_last_slot():
    model = registry.get("model", "siglip_text_tower")(rngs=nnx.Rngs(0), projection_size=40)
    tokens = np.array([[5, 6, 7, 8, 9, 10]])
    changed = tokens.copy()
    changed[0, -1] = 42
    h, pooled = model(tokens)
    # No causal mask: the last token changes every earlier position.
    assert not np.allclose(h[:, 0], model(changed)[0][:, 0])
    assert pooled.shape == (1, 40)
    np.testing.assert_allclose(pooled, model.head(h[:, -1]), atol=1e-6)
    # Padding keys are masked, but the pooled slot is still the last one (as HF does).
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    h_mask, _ = model(tokens, mask)
    h_pad, _ = model(np.array([[5, 6, 7, 8, 77, 78]]), mask)
    np.testing.assert_allclose(h_mask[:, :4], h_pad[:, :4], atol=1e-6)


def test_siglip_dual_encoder_has_no_projections():
    siglip = registry.get("model", "siglip_dual_encoder")(rngs=nnx.Rngs(0))
    assert siglip.visual_projection is None and siglip.text_projection is None
    assert siglip.text_model.config.flavour == "siglip"
    with pytest.raises(ValueError, match="SigLIP"):
        registry.get("model", "siglip_dual_encoder")(rngs=nnx.Rngs(0), text_preset="tiny")


@pytest.mark.parametrize("name", ["clip_dual_encoder", "siglip_dual_encoder"])
def test_every_parameter_has_known_logical_axes(name):
    model = registry.get("model", name)(rngs=nnx.Rngs(0))
    for path, var in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param),
                                                         is_leaf=lambda x: isinstance(x, nnx.Variable)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == var.get_value().ndim, path
        assert all(n is None or n in PARAM_AXES for n in names), (path, names)
