"""Ahead-of-time compilation of a recipe's train step for a TPU topology on this CPU host. Runs in the
separate TPU environment (.venv-tpu, created by .ci/run); skipped where that environment is absent."""

import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_PYTHON = os.path.join(ROOT, ".venv-tpu", "bin", "python")


def aot_compile(*args: str) -> subprocess.CompletedProcess:
    """``launch/aot_compile.py ARGS`` in the TPU environment, from the repository root."""
    return subprocess.run([TPU_PYTHON, "launch/aot_compile.py", *args], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not os.path.exists(TPU_PYTHON),
                    reason="no .venv-tpu (python3 -m venv .venv-tpu && .venv-tpu/bin/pip install -r "
                           "requirements-tpu.txt)")
def test_tiny_recipe_compiles_for_v5e_with_fsdp():
    proc = aot_compile(
        "--config", "configs/math_puma/text_sft.py:size=tiny",
        "--topology", "v5e:2x2", "--batch", "8", "--seq", "64",
        "--set", "mesh.data=1", "--set", "mesh.fsdp=-1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["device_kind"].startswith("TPU")
    assert result["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert result["params"] > 100_000 and result["tflops_per_device_step"] > 0
    assert result["replicated_fraction"] < 0.1            # FSDP really split the weights
    assert 0 < result["peak_gib"] < 1


@pytest.mark.skipif(not os.path.exists(TPU_PYTHON), reason="no .venv-tpu")
def test_tiny_vlm_recipe_compiles_for_v5e_with_frozen_tower_and_images():
    """A VLM recipe (MAVIS instruct, tiny): image tower, projector and decoder, images in the batch,
    the recipe's trainable parameters (projector + decoder; the tower frozen)."""
    proc = aot_compile(
        "--config", "configs/mavis/instruct.py:size=tiny",
        "--topology", "v5litepod-4", "--batch", "8", "--seq", "128",
        "--set", "mesh.data=1", "--set", "mesh.fsdp=-1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["topology"] == "v5e:2x2" and result["devices"] == 4
    assert result["model"] == "vlm" and result["step"] == "next_token" and result["fits"]
    # The tiny tower (~25K parameters) is frozen: trainable = projector + decoder only.
    assert 0 < result["params"] - result["trainable_params"] < 0.1 * result["params"]
    assert result["tflops_per_device_step"] > 0 and 0 < result["peak_gib"] < 1


@pytest.mark.skipif(not os.path.exists(TPU_PYTHON), reason="no .venv-tpu")
def test_vlm_presets_must_match_the_recipes_images():
    proc = aot_compile(
        "--config", "configs/mavis/instruct.py:size=tiny",
        "--topology", "v5e:2x2", "--vlm", "clip-vit-l-14-336:vicuna-13b")
    assert proc.returncode != 0
    assert "data.image_size=64 but clip-vit-l-14-336 takes 336-px images" in proc.stderr


@pytest.mark.skipif(not os.path.exists(TPU_PYTHON), reason="no .venv-tpu")
def test_a_step_that_does_not_fit_fails_clearly_naming_the_buffers():
    # A tiny decoder, but 8192 × 2048 rows: the f32 logits alone are 16 GiB per v5e chip.
    proc = aot_compile(
        "--config", "configs/math_puma/text_sft.py:size=tiny",
        "--topology", "v5e:2x2", "--batch", "8192", "--seq", "2048")
    assert proc.returncode == 3, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["fits"] is False and result["needed_gib"] > result["hbm_limit_gib"] > 10
    assert "does not fit: v5litepod-4 = v5e:2x2" in proc.stderr
    assert "Largest buffers:" in proc.stderr and "GiB per chip" in proc.stderr


@pytest.mark.skipif(not os.path.exists(TPU_PYTHON), reason="no .venv-tpu")
def test_tiny_grpo_recipe_compiles_its_rollout_and_update():
    """GRPO (tiny VLM): the rollout sampler over the global batch and the policy update (batch with the
    sampler's log-probs and the rewards) both compile on the FSDP mesh, and both are reported."""
    proc = aot_compile(
        "--config", "configs/rl/grpo.py:size=tiny",
        "--topology", "v5e:2x2", "--batch", "16",
        "--set", "rl.prompt_len=128", "--set", "rl.max_new_tokens=8",
        "--set", "mesh.data=1", "--set", "mesh.fsdp=-1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step"] == "grpo" and result["model"] == "vlm"
    assert result["fits"] and result["update_fits"] and result["rollout_fits"]
    assert result["seq"] == 128 + 8 and result["batch"] == 16   # --seq defaults to prompt + new tokens
    assert 0 < result["rollout_peak_gib"] < 1 and 0 < result["peak_gib"] < 1
    assert result["rollout_compile_s"] > 0 and result["compile_s"] > 0
    assert "rollout: 16 × (128 prompt + 8 new tokens)" in proc.stdout
