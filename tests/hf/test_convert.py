"""``python -m mathvlm.tools.convert``: HF → orbax → HF reproduces the tensors; orbax restores onto a mesh."""

import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from mathvlm import hf, sharding
from mathvlm.tools import convert


@pytest.mark.parametrize("scan", [False, True])
def test_hf_orbax_hf_round_trip(hf_decoder, tmp_path, scan):
    _, folder = hf_decoder("qwen2")
    ckpt, back = str(tmp_path / "orbax"), str(tmp_path / "hf")
    convert.main(["hf-to-orbax", folder, ckpt] + (["--scan-layers"] if scan else []))
    assert os.path.isdir(os.path.join(ckpt, "state"))

    tokens = np.random.RandomState(0).randint(0, 128, (2, 7))
    restored = convert.load_orbax(ckpt)
    assert restored.config.scan_layers == scan
    np.testing.assert_array_equal(np.asarray(restored(tokens)),
                                  np.asarray(hf.from_pretrained(folder, scan_layers=scan)(tokens)))

    convert.main(["orbax-to-hf", ckpt, back])
    original = load_file(os.path.join(folder, "model.safetensors"))
    written = load_file(os.path.join(back, "model.safetensors"))
    assert sorted(written) == sorted(original)
    for key in original:
        np.testing.assert_array_equal(written[key], original[key], err_msg=key)


def test_orbax_restores_sharded_and_in_bf16(hf_decoder, tmp_path):
    _, folder = hf_decoder("llama")
    ckpt = str(tmp_path / "orbax")
    convert.main(["hf-to-orbax", folder, ckpt, "--param-dtype", "bfloat16"])
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    model = convert.load_orbax(ckpt, mesh=mesh, rules="fsdp")
    kernel = model.layers[0].mlp.up_proj.kernel[...]
    assert kernel.dtype == jax.numpy.bfloat16
    assert kernel.sharding.spec[0] == "fsdp"
