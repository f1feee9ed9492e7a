"""Smoke tests of ``python -m mathvlm.bench``: every subcommand runs at its ``--quick`` size, prints a
table and ends with one JSON line whose figures are present and positive. No speed is asserted."""

import json
import subprocess
import sys

import pytest

from mathvlm.bench import __main__ as bench


def _run(argv, capsys):
    figures = bench.main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 3, lines                  # a table before the JSON line
    assert json.loads(lines[-1]) == json.loads(json.dumps(figures, default=float))
    assert figures["benchmark"] == argv[0] and figures["quick"] is True
    return figures


def _positive(figures, *keys):
    for key in keys:
        value = figures
        for part in key.split("."):
            value = value[part]
        assert isinstance(value, (int, float)) and value > 0, (key, value)


def test_train(capsys):
    figures = _run(["train", "--quick"], capsys)
    _positive(figures, "jax_tokens_per_s", "peak_tflops", "mfu", "model_tflops_per_s", "params",
              "flops_per_token", "jax_first_loss")
    if "torch_tokens_per_s" in figures:   # transformers side (needs the torch test extra)
        _positive(figures, "torch_tokens_per_s", "speedup")
        # The same weights and tokens on both sides: the first losses agree to bf16 precision.
        assert figures["torch_first_loss"] == pytest.approx(figures["jax_first_loss"], rel=1e-2)


def test_decode(capsys):
    # float32 on both sides: greedy decoding of the same weights gives the same tokens (in bf16 the
    # two implementations may part at a near-tie of logits, which says nothing about correctness).
    figures = _run(["decode", "--quick", "--batches", "1,2", "--dtype", "float32"], capsys)
    assert all(v > 0 for v in figures["read_gb_per_s_by_threads"].values())
    for batch in ("1", "2"):
        result = figures["batch"][batch]
        _positive(result, "jax_tokens_per_s", "jax_ms_per_step", "min_mb_per_step",
                  "ceiling_tokens_per_s", "jax_read_gb_per_s")
        assert result["jax_recompiles"] == 0
        if "torch_tokens_per_s" in result:
            _positive(result, "torch_tokens_per_s", "speedup")
            assert result["agreement"] == 1.0


def test_engine(capsys):
    figures = _run(["engine", "--quick", "--image-size", "128"], capsys)
    _positive(figures, "diagrams_per_s_per_core", "diagrams_per_s_wall", "records_per_s_per_core")


def test_loader(capsys):
    figures = _run(["loader", "--quick"], capsys)
    _positive(figures, "data_samples_per_s.trainer_iterator", "step_samples_per_s", "ratio")


def test_compile(capsys):
    figures = _run(["compile", "--quick"], capsys)
    for part in ("tiny", "large"):
        _positive(figures[part], "lower_s", "compile_s", "params")
    assert figures["large"]["scan"] and figures["large"]["remat"]


def test_cli_last_line_is_json():
    out = subprocess.run([sys.executable, "-m", "mathvlm.bench", "engine", "--quick",
                          "--image-size", "64"], capture_output=True, text=True, check=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["benchmark"] == "engine" and figures["diagrams_per_s_per_core"] > 0
