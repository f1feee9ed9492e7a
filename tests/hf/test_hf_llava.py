"""HF LlavaForConditionalGeneration ↔ mathvlm VLM: logits with images (layer −2 features), round trip,
other-version key prefixes."""

import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mathvlm import hf
from mathvlm.hf import vision as hf_vision
from mathvlm.models.vlm import VLM

IMAGE_TOKEN = 299


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    torch = pytest.importorskip("torch")
    import transformers as tf
    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                 num_attention_heads=2, image_size=32, patch_size=8)
    text = tf.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)
    config = tf.LlavaConfig(vision_config=vision.to_dict() | {"model_type": "clip_vision_model"},
                            text_config=text.to_dict(), image_token_index=IMAGE_TOKEN)
    torch.manual_seed(0)
    model = tf.LlavaForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("hf_llava")
    model.save_pretrained(folder)
    return model, str(folder)


def _batch():
    rng = np.random.RandomState(0)
    images = rng.randn(2, 32, 32, 3).astype(np.float32)
    # Row 0: image first (ChatML/PUMA style); row 1: image inline after some text. 16 = (32/8)².
    row0 = [IMAGE_TOKEN] * 16 + list(rng.randint(3, 299, 6))
    row1 = list(rng.randint(3, 299, 3)) + [IMAGE_TOKEN] * 16 + list(rng.randint(3, 299, 3))
    return np.array([row0, row1]), images


def test_logits_match_transformers(llava):
    import torch
    torch_model, folder = llava
    model = hf.from_pretrained(folder)
    assert isinstance(model, VLM) and model.config.tokens_per_image == 16
    tokens, images = _batch()
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(tokens),
                          pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).logits.numpy()
    diff = float(np.abs(np.asarray(model(tokens, images)) - ref).max())
    print(f"llava max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4


def test_siglip_tower_drops_first_token_like_transformers(tmp_path):
    """LLaVA's 'default' strategy drops token 0 even without a CLS token (Math-PUMA's 728 = 729 − 1)."""
    torch = pytest.importorskip("torch")
    import transformers as tf
    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, image_size=32, patch_size=8)
    text = tf.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2)
    config = tf.LlavaConfig(vision_config=vision.to_dict() | {"model_type": "siglip_vision_model"},
                            text_config=text.to_dict(), image_token_index=IMAGE_TOKEN)
    torch.manual_seed(1)
    torch_model = tf.LlavaForConditionalGeneration(config).eval()
    torch_model.save_pretrained(tmp_path)
    model = hf.from_pretrained(tmp_path)
    assert model.config.feature_strategy == "drop_first" and model.config.tokens_per_image == 15
    rng = np.random.RandomState(0)
    images = rng.randn(1, 32, 32, 3).astype(np.float32)
    tokens = np.array([[1, 5] + [IMAGE_TOKEN] * 15 + [7, 8]])
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(tokens),
                          pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).logits.numpy()
    diff = float(np.abs(np.asarray(model(tokens, images)) - ref).max())
    print(f"llava-siglip max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4


def test_round_trip_is_exact_and_loadable(llava, tmp_path):
    import transformers as tf
    _, folder = llava
    hf.save_pretrained(hf.from_pretrained(folder), tmp_path)
    original = load_file(os.path.join(folder, "model.safetensors"))
    written = load_file(tmp_path / "model.safetensors")
    assert sorted(original) == sorted(written)
    for key in original:
        np.testing.assert_array_equal(original[key], written[key], err_msg=key)
    tf.LlavaForConditionalGeneration.from_pretrained(tmp_path)


def test_other_version_prefixes_load(llava, tmp_path):
    """Checkpoints with ``model.vision_tower.`` / ``model.language_model.`` / ``lm_head.`` keys."""
    _torch_model, folder = llava
    shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
    renames = [("vision_tower.", "model.vision_tower."),
               ("multi_modal_projector.", "model.multi_modal_projector."),
               ("language_model.model.", "model.language_model."),
               ("language_model.lm_head.", "lm_head.")]
    tensors = {}
    for key, value in load_file(os.path.join(folder, "model.safetensors")).items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        tensors[key] = value
    save_file(tensors, tmp_path / "model.safetensors")
    tokens, images = _batch()
    reference = hf.from_pretrained(folder)
    model = hf_vision.from_pretrained(tmp_path)
    np.testing.assert_array_equal(np.asarray(model(tokens, images)), np.asarray(reference(tokens, images)))


def test_missing_projector_tensor_is_named(llava, tmp_path):
    _, folder = llava
    shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    del tensors["multi_modal_projector.linear_2.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="multi_modal_projector.linear_2.bias"):
        hf.from_pretrained(tmp_path)


def test_scanned_tower_and_decoder_match_and_round_trip(llava, tmp_path):
    """``vision={...}`` lays out the image tower (scan + remat) as the top-level options lay out the
    language model: same logits as transformers, the build options record both (an orbax checkpoint
    rebuilds the layout) and the export loads in transformers with the original tensors."""
    import torch
    import transformers as tf

    from mathvlm.tools import convert
    torch_model, folder = llava
    options = {"scan_layers": True, "remat": "dots_saveable",
               "vision": {"scan_layers": True, "remat": "full"}}
    model = hf.from_pretrained(folder, **options)
    assert (model.config.vision.scan_layers, model.config.vision.remat) == (True, "full")
    assert (model.config.decoder.scan_layers, model.config.decoder.remat) == (True, "dots_saveable")
    assert model.vision_tower.layers.self_attn.q_proj.kernel.shape[0] == 3
    tokens, images = _batch()
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(tokens),
                          pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).logits.numpy()
    logits = np.asarray(model(tokens, images))
    assert float(np.abs(logits - ref).max()) <= 1e-4
    plain = np.asarray(hf.from_pretrained(folder)(tokens, images))
    assert float(np.abs(logits - plain).max()) <= 1e-5 * float(np.abs(plain).max())

    recorded = hf.format_for_model(model).build_options(model)
    assert recorded == {"param_dtype": "float32", "dtype": None, "scan_layers": True,
                        "remat": "dots_saveable",
                        "vision": {"param_dtype": "float32", "dtype": None, "scan_layers": True,
                                   "remat": "full", "attention_impl": "auto"}}
    convert.save_orbax(model, str(tmp_path / "orbax"))
    restored = convert.load_orbax(str(tmp_path / "orbax"))
    assert restored.config == model.config
    np.testing.assert_array_equal(np.asarray(restored(tokens, images)), logits)

    hf.save_pretrained(model, tmp_path / "hf")
    original = load_file(os.path.join(folder, "model.safetensors"))
    written = load_file(tmp_path / "hf" / "model.safetensors")
    assert sorted(original) == sorted(written)
    for key in original:
        np.testing.assert_array_equal(original[key], written[key], err_msg=key)
    tf.LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")


def test_tower_options_are_checked(llava):
    _, folder = llava
    with pytest.raises(ValueError, match="scan_layers") as err:
        hf.from_pretrained(folder, vision={"num_layers": 2})
    assert "num_layers" in str(err.value)
    with pytest.raises(ValueError, match="dots_with_no_batch_dims"):
        hf.from_pretrained(folder, vision={"remat": "sometimes"})
