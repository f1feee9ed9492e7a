"""RoPE scaling (linear, dynamic NTK, llama3) against transformers' LlamaForCausalLM: logits, config
round trip through save_pretrained, and the frequency rules themselves."""

import json

import numpy as np
import pytest

from mathvlm import hf
from mathvlm.models.decoder import DecoderConfig
from mathvlm.models.layers import rope_inv_freq

# head_dim 8 → wavelengths 2π·10⁴^(i/4) ≈ 6.3, 63, 628, 6283: with L₀ = 64, low 1, high 4 the llama3
# rule keeps one frequency, interpolates one (16 < 63 < 64) and divides two — every branch.
SCALINGS = {
    "linear": ({"rope_type": "linear", "factor": 4.0}, {}),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, {}),
    # Dynamic NTK only changes anything past max_position_embeddings: make that shorter than the batch.
    "dynamic": ({"rope_type": "dynamic", "factor": 8.0}, {"max_position_embeddings": 16}),
}


def _batch(length=40, vocab=128):
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, vocab, (2, length))
    mask = np.ones_like(tokens)
    mask[1, :3] = 0
    return tokens, mask


def _logits(torch_model, tokens, mask):
    import torch
    with torch.no_grad():
        return torch_model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_scaled_rope_matches_transformers(build_hf_model, tmp_path, kind):
    import transformers as tf
    scaling, changes = SCALINGS[kind]
    # A wider init than 0.02 so position effects reach the logits of a 2-layer random model.
    torch_model = build_hf_model("llama", tmp_path / "src", seed=3, initializer_range=0.1,
                                 rope_parameters={**scaling, "rope_theta": 10000.0}, **changes)
    model = hf.from_pretrained(str(tmp_path / "src"))
    assert dict(model.config.rope_scaling)["rope_type"] == kind
    tokens, mask = _batch()
    valid = mask.astype(bool)
    got = np.asarray(model(tokens, attention_mask=mask))
    diff = float(np.abs(got - _logits(torch_model, tokens, mask))[valid].max())
    # The scaling must matter at these lengths, or the comparison above proves nothing.
    plain = hf.from_pretrained(str(tmp_path / "src"), rope_scaling=None)
    effect = float(np.abs(got - np.asarray(plain(tokens, attention_mask=mask)))[valid].max())
    print(f"rope {kind}: max |logit diff| = {diff:.2e} (scaling changes logits by {effect:.2e})")
    assert diff <= 1e-4 and effect > 1e-2

    # save_pretrained writes the scaling back: transformers rebuilds the same model, we re-read it.
    hf.save_pretrained(model, str(tmp_path / "out"))
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["rope_parameters"]["rope_type"] == kind
    assert hf.from_pretrained(str(tmp_path / "out")).config == model.config
    reloaded = tf.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(_logits(reloaded, tokens, mask), _logits(torch_model, tokens, mask),
                               atol=1e-6)


def test_legacy_rope_scaling_entry_is_read(tmp_path):
    """Pre-5 transformers files: top-level rope_theta + rope_scaling with ``type``."""
    theta, scaling = hf.llm.rope_from_hf({"rope_theta": 5e5, "max_position_embeddings": 8192,
                                          "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert theta == 5e5 and scaling == {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(NotImplementedError, match="yarn"):
        hf.llm.rope_from_hf({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}})


def test_inv_freq_rules():
    base = np.asarray(rope_inv_freq(8, 10000.0))
    np.testing.assert_allclose(rope_inv_freq(8, 10000.0, {"rope_type": "linear", "factor": 4.0}),
                               base / 4, rtol=1e-6)
    llama3 = np.asarray(rope_inv_freq(8, 10000.0, SCALINGS["llama3"][0]))
    wavelen = 2 * np.pi / base
    np.testing.assert_allclose(llama3[wavelen < 16], base[wavelen < 16])       # high frequencies kept
    np.testing.assert_allclose(llama3[wavelen > 64], base[wavelen > 64] / 8, rtol=1e-6)
    middle = (wavelen >= 16) & (wavelen <= 64)
    assert middle.sum() == 1 and base[middle] / 8 < llama3[middle] < base[middle]
    dynamic = {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16}
    np.testing.assert_allclose(rope_inv_freq(8, 10000.0, dynamic, np.arange(16)), base, rtol=1e-6)
    assert (np.asarray(rope_inv_freq(8, 10000.0, dynamic, np.arange(40)))[1:] < base[1:]).all()
    with pytest.raises(NotImplementedError):
        DecoderConfig(rope_scaling={"rope_type": "yarn", "factor": 2.0})
