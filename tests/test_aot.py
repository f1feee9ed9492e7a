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


def _tiny_vlm_step(*options: str, seq: int = 512) -> dict:
    proc = aot_compile(
        "--config", "configs/mavis/instruct.py:size=tiny", "--topology", "v5e:2x2", "--batch", "8",
        "--seq", str(seq), "--set", "mesh.data=1", "--set", "mesh.fsdp=-1", *options)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists(TPU_PYTHON), reason="no .venv-tpu")
@pytest.mark.parametrize("attention,remat,vision_remat,chunk", [
    ("auto", "full", "full", "128"),
    ("cudnn", "dots_saveable", "dots_with_no_batch_dims", "0"),
    ("splash", "dots_with_no_batch_dims", "none", "100"),
    ("xla", "offload", "offload", "0"),
])
def test_tiny_vlm_step_compiles_with_each_attention_path_and_remat_policy(attention, remat, vision_remat,
                                                                        chunk):
    """The tiny VLM step for a TPU topology with every attention implementation, remat policy (decoder
    and image tower) and chunked or full logits. ``auto`` on TPU is the Pallas splash kernel: its
    custom calls are in the compiled step; the einsum and cuDNN paths have none."""
    result = _tiny_vlm_step("--attention", attention, "--remat", remat, "--vision-remat", vision_remat,
                            "--logits-chunk", chunk)
    assert result["fits"] and result["tflops_per_device_step"] > 0
    if attention in ("auto", "splash"):
        assert result["tpu_custom_calls"] > 0
    else:
        assert result["tpu_custom_calls"] == 0


@pytest.mark.skipif(not os.path.exists(TPU_PYTHON), reason="no .venv-tpu")
def test_splash_and_chunked_logits_lower_the_step_memory():
    """Same step, same batch of 2048-token rows: splash attention and chunked logits need far fewer
    temporaries per chip than the einsum's [batch, heads, L, L] scores and full [batch, L, vocab]
    logits (measured: 0.73 → 0.14 GiB)."""
    before = _tiny_vlm_step("--attention", "xla", "--logits-chunk", "0", "--remat", "none", seq=2048)
    after = _tiny_vlm_step("--attention", "splash", "--logits-chunk", "256", "--remat", "none", seq=2048)
    assert after["temp_gib"] < 0.5 * before["temp_gib"], (before["temp_gib"], after["temp_gib"])
