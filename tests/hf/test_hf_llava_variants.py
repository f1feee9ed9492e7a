"""LLaVA variants against transformers: list-valued vision_feature_layer, the ``rename_keys`` hook of
the generic loader, and the projectors transformers has no class for (written for mathvlm)."""

import json
import os
import shutil

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from mathvlm import hf
from mathvlm.models.decoder import DecoderConfig
from mathvlm.models.vit import ViTConfig
from mathvlm.models.vlm import VLM, VLMConfig

IMAGE_TOKEN = 299


def _build(folder, seed=0, **changes):
    torch = pytest.importorskip("torch")
    import transformers as tf
    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=2, image_size=32, patch_size=8)
    text = tf.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2)
    config = tf.LlavaConfig(vision_config=vision.to_dict() | {"model_type": "clip_vision_model"},
                            text_config=text.to_dict(), image_token_index=IMAGE_TOKEN, **changes)
    torch.manual_seed(seed)
    model = tf.LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    return model


def _batch():
    rng = np.random.RandomState(0)
    images = rng.randn(2, 32, 32, 3).astype(np.float32)
    row0 = [IMAGE_TOKEN] * 16 + list(rng.randint(3, 299, 4))
    row1 = list(rng.randint(3, 299, 2)) + [IMAGE_TOKEN] * 16 + list(rng.randint(3, 299, 2))
    return np.array([row0, row1]), images


def _torch_logits(model, tokens, images):
    import torch
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens),
                     pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).logits.numpy()


@pytest.fixture(scope="module")
def multi_layer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llava_multi")
    return _build(folder, seed=2, vision_feature_layer=[-2, 1]), str(folder)


def test_list_feature_layer_matches_transformers(multi_layer, tmp_path):
    import transformers as tf
    torch_model, folder = multi_layer
    model = hf.from_pretrained(folder)
    assert model.config.feature_layer == (-2, 1)
    assert model.projector.linear_1.kernel.shape == (2 * 32, 64)
    tokens, images = _batch()
    ref = _torch_logits(torch_model, tokens, images)
    diff = float(np.abs(np.asarray(model(tokens, images)) - ref).max())
    print(f"llava feature layers [-2, 1]: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4
    # Saved back as a list; transformers rebuilds the same model.
    hf.save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vision_feature_layer"] == [-2, 1]
    reloaded = tf.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(_torch_logits(reloaded, tokens, images), ref, atol=1e-6)


def test_rename_keys_prefix_mapping_and_callable(multi_layer, tmp_path):
    """A file with a home-grown layout loads once its prefixes are mapped to the standard ones."""
    _, folder = multi_layer
    shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
    custom = {"vision_tower.": "towers.image.", "multi_modal_projector.": "adapter.",
              "language_model.model.": "llm.body.", "language_model.lm_head.": "llm.head."}
    tensors = {}
    for key, value in load_file(os.path.join(folder, "model.safetensors")).items():
        old = next(p for p in custom if key.startswith(p))
        tensors[custom[old] + key[len(old):]] = value
    tensors["llm.extra_buffer"] = np.zeros(2, np.float32)
    save_file(tensors, tmp_path / "model.safetensors")

    with pytest.raises(ValueError, match="missing tensors"):       # without the hook: named failure
        hf.from_pretrained(tmp_path)
    back = {new: old for old, new in custom.items()}
    with pytest.raises(ValueError, match="llm.extra_buffer"):      # unmatched keys are still reported
        hf.from_pretrained(tmp_path, rename_keys=back)

    tokens, images = _batch()
    reference = np.asarray(hf.from_pretrained(folder)(tokens, images))

    def rename(key):                                               # callable form; None drops a key
        if key == "llm.extra_buffer":
            return None
        old = next(p for p in back if key.startswith(p))
        return back[old] + key[len(old):]

    np.testing.assert_array_equal(np.asarray(hf.from_pretrained(tmp_path, rename_keys=rename)(
        tokens, images)), reference)
    # A mapping may also target an older layout: the format's own aliases finish the job.
    to_old = {"towers.image.": "model.vision_tower.", "adapter.": "model.multi_modal_projector.",
              "llm.body.": "model.language_model.", "llm.head.": "lm_head.", "llm.extra": "ignored."}
    only_extra = r"missing tensors \[\]; unexpected tensors \[.ignored\._buffer.\]"
    with pytest.raises(ValueError, match=only_extra):
        hf.from_pretrained(tmp_path, rename_keys=to_old)
    with pytest.raises(ValueError, match="both renamed"):
        hf.from_pretrained(tmp_path, rename_keys=lambda key: "same")


@pytest.mark.parametrize("projector", ["linear", "gated"])
def test_saver_writes_projectors_transformers_lacks(projector, tmp_path):
    """transformers has no LLaVA class for them; the LLaVA layout holds them for mathvlm
    (``projector_type`` in config.json) and they read back exactly."""
    config = VLMConfig(vision=ViTConfig(num_layers=1), projector=projector, image_token_id=63,
                       decoder=DecoderConfig(num_layers=1, vocab_size=64))
    model = VLM(config, rngs=nnx.Rngs(0))
    hf.save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["projector_type"] == projector
    back = hf.from_pretrained(tmp_path)
    assert type(back.projector) is type(model.projector)
    tokens = np.array([[1, 2] + [63] * 16 + [3]])
    images = np.random.RandomState(0).randn(1, 32, 32, 3).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(back(tokens, images)), np.asarray(model(tokens, images)))


def test_saver_writes_mlp2x_gelu_vlm_built_from_scratch(tmp_path):
    """A VLM made in mathvlm (not loaded) with a 2-layer feature list round-trips through
    transformers: the standard layout is written for the one projector it has."""
    import transformers as tf
    config = VLMConfig(vision=ViTConfig(num_layers=2), feature_layer=(-1, -2), image_token_id=255,
                       decoder=DecoderConfig(num_layers=1, vocab_size=256, hidden_size=64,
                                             num_heads=4, num_kv_heads=2, head_dim=16))
    model = VLM(config, rngs=nnx.Rngs(0))
    hf.save_pretrained(model, tmp_path)
    torch_model = tf.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    rng = np.random.RandomState(0)
    tokens = np.array([[1, 2] + [255] * 16 + [3, 4]])
    images = rng.randn(1, 32, 32, 3).astype(np.float32)
    ref = _torch_logits(torch_model, tokens, images)
    assert float(np.abs(np.asarray(model(tokens, images)) - ref).max()) <= 1e-4
