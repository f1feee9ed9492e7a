"""VLM: image splicing, text-only rows equal the decoder alone, masks, generation, sharded build."""

import jax
import numpy as np
import pytest
from flax import nnx

from mathvlm import registry, sharding
from mathvlm.models.decoder import DecoderConfig
from mathvlm.models.vit import ViTConfig
from mathvlm.models.vlm import VLM, VLMConfig, merge_moments

IMG = 255


def _config(**changes):
    values = {"vision": ViTConfig(num_layers=2), "image_token_id": IMG,
              "decoder": DecoderConfig(vocab_size=256, hidden_size=64, num_heads=4, num_kv_heads=2,
                                       head_dim=16)}
    values.update(changes)
    return VLMConfig(**values)


def _batch(n_img=16):
    rng = np.random.RandomState(0)
    images = rng.randn(2, 32, 32, 3).astype(np.float32)
    image_row = [IMG] * n_img + list(rng.randint(1, 250, 6))
    text_row = list(rng.randint(1, 250, n_img + 6))
    return np.array([image_row, text_row]), images, np.array([True, False])


@pytest.fixture(scope="module")
def model():
    # Built once: eager construction of even a tiny model costs seconds on a shared 2-core box.
    return VLM(_config(), rngs=nnx.Rngs(0))


@nnx.jit
def _forward(model, tokens, images, image_mask, attention_mask):
    return model(tokens, images, image_mask=image_mask, attention_mask=attention_mask)


@nnx.jit
def _text_forward(model, tokens, attention_mask):
    return model(tokens, attention_mask=attention_mask)


@nnx.jit
def _decoder_forward(decoder, tokens, attention_mask):
    return decoder(tokens, attention_mask=attention_mask)


def test_text_only_row_equals_decoder_alone(model):
    tokens, images, image_mask = _batch()
    mask = np.ones_like(tokens)
    mask[1, :4] = 0                                     # the text row is left-padded
    logits = np.asarray(_forward(model, tokens, images, image_mask, mask))
    alone = np.asarray(_decoder_forward(model.decoder, tokens[1:], mask[1:]))
    np.testing.assert_allclose(logits[1:], alone, atol=1e-5)
    # the image row did see the image: it differs from treating placeholders as text
    text_only = np.asarray(_text_forward(model, tokens, mask))
    assert np.abs(logits[0] - text_only[0]).max() > 1e-3
    np.testing.assert_allclose(logits[1], text_only[1], atol=1e-5)


def test_features_fill_placeholders_in_order_inline(model):
    tokens = np.array([[3, 4] + [IMG] * 16 + [5]])
    images = _batch()[1][:1]
    embeds = np.asarray(nnx.jit(lambda m, t, i: m.embed(t, i))(model, tokens, images))
    feats = np.asarray(nnx.jit(lambda m, i: m.image_features(i))(model, images))
    assert model.config.tokens_per_image == 16 == feats.shape[1]
    np.testing.assert_allclose(embeds[0, 2:18], feats[0], atol=1e-6)
    np.testing.assert_allclose(embeds[0, :2], np.asarray(model.decoder.embed(tokens[:, :2]))[0])


def test_masks_exclude_placeholders_from_loss(model):
    tokens = np.array([[0, 0, IMG, IMG, 7, 8]])
    out = model.masks(tokens, np.array([[0, 1, 1, 1, 1, 1]]))
    np.testing.assert_array_equal(out["loss_mask"], [[0, 1, 0, 0, 1, 1]])
    np.testing.assert_array_equal(out["positions"], [[0, 0, 1, 2, 3, 4]])


def test_generate_from_merged_prefill(model):
    tokens, images, image_mask = _batch()
    out = model.generate(tokens, images, image_mask, max_new_tokens=3)
    assert out.tokens.shape == (2, 3)
    # greedy first token equals argmax of the full forward's last logits
    logits = np.asarray(_forward(model, tokens, images, image_mask, np.ones_like(tokens)))
    np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), logits[:, -1].argmax(-1))


def test_sharded_build_gives_same_logits(model):
    assert len(jax.devices()) == 8
    config = _config()
    tokens, images, image_mask = _batch()
    reference = np.asarray(_forward(model, tokens, images, image_mask, np.ones_like(tokens)))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = sharding.create_sharded(lambda: VLM(config, rngs=nnx.Rngs(0)), mesh, "fsdp_tp")
    kernel = model.decoder.layers[0].mlp.up_proj.kernel.get_value()
    assert not kernel.sharding.is_fully_replicated

    @nnx.jit
    def forward(model, tokens, images, image_mask):
        return model(tokens, images, image_mask=image_mask)

    with jax.set_mesh(mesh), sharding.use_rules("fsdp_tp"):
        logits = forward(model, tokens, images, image_mask)
    np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-5)


def test_registry_builds_vlm_from_presets():
    built = nnx.eval_shape(lambda: registry.get("model", "vlm")(
        "clip-vit-l-14-336", "vicuna-7b", rngs=nnx.Rngs(0), image_token_id=32000,
        vision={"num_layers": 1}, decoder={"num_layers": 1}))     # widths are what matter here
    assert built.config.tokens_per_image == 576
    assert built.projector.linear_1.kernel.shape == (1024, 4096)


def test_unknown_strategy_raises():
    model = nnx.eval_shape(lambda: VLM(_config(feature_strategy="nope"), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="drop_cls"):
        model.image_features(np.zeros((1, 32, 32, 3), np.float32))


def test_feature_layer_list_concatenates_channels():
    model = VLM(_config(feature_layer=[-2, 0], projector="linear"), rngs=nnx.Rngs(1))
    assert model.config.feature_layer == (-2, 0)                  # lists become hashable tuples
    assert model.projector.linear.kernel.shape == (2 * 32, 64)    # projector width follows
    images = _batch()[1]
    feats = np.asarray(nnx.jit(lambda m, i: m.image_features(i))(model, images))
    tower = model.vision_tower
    want = np.concatenate([np.asarray(tower.features(images, -2)), np.asarray(tower.features(images, 0))],
                          axis=-1)
    assert want.shape == (2, 16, 64)
    np.testing.assert_allclose(feats, np.asarray(model.projector(want)), atol=1e-5)
    # Order matters: (0, -2) is a different channel layout.
    swapped = np.asarray(tower.features(images, (0, -2)))
    np.testing.assert_array_equal(swapped[..., :32], want[..., 32:])
    with pytest.raises(ValueError, match="out of range"):
        tower.features(images, (-2, 7))


def test_expand_image_placeholders():
    from mathvlm.models.vlm import expand_image_placeholders
    ids = np.array([5, IMG, 6, IMG])
    out, mask = expand_image_placeholders(ids, IMG, 3, mask=np.array([1, 0, 1, 1]))
    np.testing.assert_array_equal(out, [5, IMG, IMG, IMG, 6, IMG, IMG, IMG])
    np.testing.assert_array_equal(mask, [1, 0, 0, 0, 1, 1, 1, 1])
    # A batch: rows grow by different amounts; the shorter one is right-padded with mask 0, and a
    # dict of masks keeps its structure.
    batch = np.array([[IMG, 7, 8], [1, 2, 3]])
    masks = {"attention": np.array([[1, 1, 1], [0, 1, 1]]), "loss": np.array([[0, 1, 1], [0, 0, 1]])}
    out, got = expand_image_placeholders(batch, IMG, 4, mask=masks, pad_id=-1)
    np.testing.assert_array_equal(out, [[IMG] * 4 + [7, 8], [1, 2, 3, -1, -1, -1]])
    np.testing.assert_array_equal(got["attention"], [[1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(got["loss"], [[0, 0, 0, 0, 1, 1], [0, 0, 1, 0, 0, 0]])
    # Expanded ids are what VLM.embed consumes: one image's worth of slots per placeholder.
    assert (expand_image_placeholders([IMG, 3], IMG, 16) == IMG).sum() == _config().tokens_per_image
    with pytest.raises(ValueError, match="shape"):
        expand_image_placeholders(ids, IMG, 3, mask=np.ones(3))


def test_calibrated_feature_norm_standardises_with_fixed_statistics():
    """feature_norm='calibrated': statistics from the rows that have pictures only, then fixed — the
    calibration images come out with mean 0 and spread 1 per position and channel, and a row's
    features do not depend on the other rows of its batch."""
    model = VLM(_config(feature_norm="calibrated"), rngs=nnx.Rngs(1))
    rng = np.random.RandomState(3)
    images = rng.rand(6, 32, 32, 3).astype(np.float32) * 2
    # the last row has no picture (its pixels are garbage): it must not enter the statistics
    images[-1] = 100.0
    mask = np.array([True] * 5 + [False])
    # measured in two batches and merged: the statistics of the five pictures together
    moments = merge_moments(model.feature_moments(images[:2], mask[:2]),
                            model.feature_moments(images[2:], mask[2:]))
    assert float(moments[0]) == 5
    model.calibrate_feature_norm(*moments)

    raw = model._tower_features(images[:5, None])
    standardised = (raw - model.feature_stats[0]) / model.feature_stats[1]
    np.testing.assert_allclose(standardised.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(standardised.std(0), 1.0, atol=1e-3)
    # image_features uses them, and row 0 gives the same features alone as within the batch
    alone = model.image_features(images[:1])
    np.testing.assert_allclose(model.image_features(images[:5])[:1], alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone, model.projector(standardised[:1]), rtol=1e-5, atol=1e-5)
    assert nnx.state(model, nnx.BatchStat)  # statistics, not parameters: the optimizer leaves them
    assert not any("feature_stats" in sharding.path_name(p)
                   for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)))


def test_calibration_errors_are_clear():
    with pytest.raises(ValueError, match="feature_norm"):
        _config(feature_norm="batch")
    with pytest.raises(ValueError, match="feature_norm='calibrated'"):
        VLM(_config(), rngs=nnx.Rngs(0)).calibrate_feature_norm(1.0, 0.0, 0.0)
    model = VLM(_config(feature_norm="calibrated"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no row with a picture"):
        model.calibrate_feature_norm(*model.feature_moments(np.zeros((2, 32, 32, 3), np.float32),
                                                             np.array([False, False])))
