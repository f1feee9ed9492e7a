"""HF CLIPVisionModel / SiglipVisionModel / CLIPModel ↔ mathvlm: parity, strict loading, round trips
(image towers also scanned: one stacked layer module under ``jax.lax.scan``)."""

import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mathvlm import hf
from mathvlm.hf import vision as hf_vision
from mathvlm.models.dual_encoder import DualEncoder, logits_per_image
from mathvlm.models.vit import ViT

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
          "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "vocab_size": 99, "max_position_embeddings": 16, "eos_token_id": 98, "bos_token_id": 97}
# SigLIP text: narrower than the image tower, so the text ``head`` (24 → 32) is exercised.
SIGLIP_TEXT = {"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2,
               "num_attention_heads": 2, "vocab_size": 99, "max_position_embeddings": 12,
               "projection_size": 32, "eos_token_id": 98, "bos_token_id": 97, "pad_token_id": 1}
TOL = 1e-4
# Loader option of a scanned, rematerialised image tower (any tower-holding folder takes it).
SCANNED = {"vision": {"scan_layers": True, "remat": "dots_with_no_batch_dims"}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    torch = pytest.importorskip("torch")
    import transformers as tf
    root = tmp_path_factory.mktemp("hf_vision")
    built = {}
    for name, make in {
        "clip_vision": lambda: tf.CLIPVisionModel(tf.CLIPVisionConfig(**VISION)),
        "siglip_vision": lambda: tf.SiglipVisionModel(tf.SiglipVisionConfig(**VISION)),
        "clip": lambda: tf.CLIPModel(tf.CLIPConfig(vision_config=VISION, text_config=TEXT,
                                                   projection_dim=24)),
        "clip_text": lambda: tf.CLIPTextModel(tf.CLIPTextConfig(**TEXT)),
        "siglip_text": lambda: tf.SiglipTextModel(tf.SiglipTextConfig(**SIGLIP_TEXT)),
        "siglip": lambda: tf.SiglipModel(tf.SiglipConfig(vision_config=VISION,
                                                         text_config=SIGLIP_TEXT)),
    }.items():
        torch.manual_seed(0)
        model = make().eval()
        model.save_pretrained(root / name)
        built[name] = (model, str(root / name))
    return built


def _images(batch=2, seed=0):
    return np.random.RandomState(seed).randn(batch, 32, 32, 3).astype(np.float32)  # NHWC


def _torch_vision(model, images):
    import torch
    with torch.no_grad():
        return model(torch.tensor(images.transpose(0, 3, 1, 2)), output_hidden_states=True)


def _maxdiff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("name", ["clip_vision", "siglip_vision"])
def test_vision_tower_matches_transformers(folders, name, scan):
    torch_model, folder = folders[name]
    model = hf.from_pretrained(folder, **(SCANNED if scan else {}))
    assert isinstance(model, ViT) and model.config.scan_layers == scan
    images = _images()
    ref = _torch_vision(torch_model, images)
    last, pooled = model(images)
    diffs = {"last": _maxdiff(last, ref.last_hidden_state.numpy()),
             "pooled": _maxdiff(pooled, ref.pooler_output.numpy())}
    for layer in (-2, 1):
        diffs[f"hidden[{layer}]"] = _maxdiff(model.features(images, layer, "keep_all"),
                                             ref.hidden_states[layer].numpy())
    print(name, diffs)
    assert max(diffs.values()) <= TOL, diffs


def test_clip_model_matches_transformers(folders):
    import torch
    torch_model, folder = folders["clip"]
    model = hf.from_pretrained(folder)
    assert isinstance(model, DualEncoder)
    images = _images(batch=2)
    rng = np.random.RandomState(1)
    tokens = rng.randint(0, 97, (3, 9))
    tokens[0, 4], tokens[1, 8], tokens[2, 1] = 98, 98, 98      # end-of-text at different positions
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(tokens),
                          pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
    out = model(images, tokens)
    diffs = {"image": _maxdiff(out["image_embeds"], ref.image_embeds.numpy()),
             "text": _maxdiff(out["text_embeds"], ref.text_embeds.numpy()),
             "logits": _maxdiff(logits_per_image(out), ref.logits_per_image.numpy())}
    print("clip", diffs)
    assert max(diffs.values()) <= TOL, diffs


def test_siglip_model_matches_transformers(folders):
    import torch
    torch_model, folder = folders["siglip"]
    model = hf.from_pretrained(folder)
    assert isinstance(model, DualEncoder) and model.text_model.config.flavour == "siglip"
    images = _images(batch=2)
    rng = np.random.RandomState(2)
    tokens = rng.randint(2, 97, (3, 12))
    mask = np.ones_like(tokens)
    mask[1, 7:], mask[2, 3:] = 0, 0                              # right padding, pooled slot included
    tokens[mask == 0] = 1
    diffs = {}
    for name, m in {"no_mask": None, "mask": mask}.items():
        with torch.no_grad():
            ref = torch_model(input_ids=torch.tensor(tokens),
                              attention_mask=None if m is None else torch.tensor(m),
                              pixel_values=torch.tensor(images.transpose(0, 3, 1, 2)))
        out = model(images, tokens, m)
        diffs[f"{name}/image"] = _maxdiff(out["image_embeds"], ref.image_embeds.numpy())
        diffs[f"{name}/text"] = _maxdiff(out["text_embeds"], ref.text_embeds.numpy())
        diffs[f"{name}/logits"] = _maxdiff(logits_per_image(out), ref.logits_per_image.numpy())
    # The mask must matter (else the masked comparison tests nothing), and the scalars are the file's.
    assert _maxdiff(model(images, tokens)["text_embeds"], model(images, tokens, mask)["text_embeds"]) > 1e-3
    np.testing.assert_allclose(np.log(float(model(images, tokens)["logit_scale"])),
                               torch_model.logit_scale.item(), rtol=1e-6)
    print("siglip", diffs)
    assert max(diffs.values()) <= 1e-5, diffs


@pytest.mark.parametrize("name", ["clip_text", "siglip_text"])
def test_text_tower_matches_transformers(folders, name):
    import torch
    torch_model, folder = folders[name]
    model = hf.from_pretrained(folder)
    tokens = np.random.RandomState(3).randint(2, 97, (2, 10))
    tokens[:, 6] = 98                                             # CLIP pools at the first eos
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(tokens))
    last, pooled = model(tokens)
    diffs = {"last": _maxdiff(last, ref.last_hidden_state.numpy()),
             "pooled": _maxdiff(pooled, ref.pooler_output.numpy())}
    print(name, diffs)
    assert max(diffs.values()) <= 1e-5, diffs


@pytest.mark.parametrize("name,scan", [
    (name, False) for name in ("clip_vision", "siglip_vision", "clip", "siglip", "clip_text",
                               "siglip_text")] + [
    (name, True) for name in ("clip_vision", "siglip_vision", "clip", "siglip")])
def test_round_trip_is_exact_and_loadable(folders, name, scan, tmp_path):
    import transformers as tf
    _torch_model, folder = folders[name]
    model = hf.from_pretrained(folder, **(SCANNED if scan else {}))
    if scan:   # the stacked layout is what is written from, and the build options say so
        tower = model if isinstance(model, ViT) else model.vision_model
        assert tower.config.scan_layers and tower.layers.mlp.fc1.kernel.shape[0] == 3
        options = hf.format_for_model(model).build_options(model)
        assert options.get("vision", options)["scan_layers"] is True
    hf.save_pretrained(model, tmp_path)
    original, written = load_file(os.path.join(folder, "model.safetensors")), load_file(
        tmp_path / "model.safetensors")
    assert sorted(original) == sorted(written)
    for key in original:
        assert original[key].shape == written[key].shape, key
        np.testing.assert_array_equal(original[key], written[key], err_msg=key)
    cls = {"clip_vision": tf.CLIPVisionModel, "siglip_vision": tf.SiglipVisionModel,
           "clip": tf.CLIPModel, "siglip": tf.SiglipModel, "clip_text": tf.CLIPTextModel,
           "siglip_text": tf.SiglipTextModel}[name]
    cls.from_pretrained(tmp_path)   # transformers accepts the folder


def test_missing_and_unexpected_tensors_are_named(folders, tmp_path):
    _, folder = folders["clip_vision"]
    shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    del tensors["encoder.layers.1.mlp.fc1.bias"]
    tensors["encoder.layers.9.surprise.weight"] = np.zeros(3, np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as err:
        hf.from_pretrained(tmp_path)
    assert "encoder.layers.1.mlp.fc1.bias" in str(err.value)
    assert "encoder.layers.9.surprise.weight" in str(err.value)


def test_old_key_prefix_is_accepted(folders, tmp_path):
    torch_model, folder = folders["clip_vision"]
    shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    save_file({"vision_model." + k: v for k, v in tensors.items()}, tmp_path / "model.safetensors")
    model = hf_vision.from_pretrained(tmp_path)
    images = _images()
    assert _maxdiff(model(images)[1], _torch_vision(torch_model, images).pooler_output.numpy()) <= TOL
