"""The trainer end to end on 8 fake devices: the demo config learns, resume continues exactly, the
non-finite guard skips and stops, the main entry point writes config.json and metrics.jsonl."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mathvlm import config as mc
from mathvlm import main as entry
from mathvlm.train import metrics


def read_metrics(workdir):
    """The training records (evaluation records carry no loss)."""
    return [r for r in metrics.read_metrics(workdir) if "loss" in r]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "text_demo.py")


def demo_config(steps, evaluate=False, **overrides):
    config = mc.load(f"{DEMO}:steps={steps},batch_size=8")
    if not evaluate:
        overrides.setdefault("eval.evaluators", "()")
    for key, value in overrides.items():
        mc.override(config, key, str(value))
    return config


def test_demo_loss_falls_and_metrics_are_written(tmp_path):
    config = demo_config(40, evaluate=True, **{"train.log_every": 5, "mesh.fsdp": 2})
    entry.run(config, str(tmp_path))
    records = read_metrics(str(tmp_path))
    evaluation = [r for r in metrics.read_metrics(str(tmp_path)) if "text_math/accuracy" in r]
    assert len(evaluation) == 1 and evaluation[0]["step"] == 40
    assert 0.0 <= evaluation[0]["text_math/accuracy"] <= 1.0
    assert os.path.exists(tmp_path / "summary.md") and os.path.exists(tmp_path / "loss.png")
    assert [r["step"] for r in records] == list(range(5, 41, 5))
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "next_token/accuracy"):
        assert key in records[-1], key
    assert records[-1]["loss"] < 0.7 * records[0]["loss"]
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["train"]["steps"] == 40 and saved["mesh"]["fsdp"] == 2
    assert os.listdir(tmp_path / "tensorboard")


def _main_command(workdir, steps, *extra):
    return [sys.executable, "-m", "mathvlm.main", f"--config={DEMO}:steps={steps},batch_size=8",
            f"--workdir={workdir}", "--config.train.log_every=1", *extra]


def test_sigterm_checkpoints_and_resume_continues_exactly(tmp_path):
    """A real preemption: SIGTERM mid-run → checkpoint + exit 0; the same command resumes, and every
    later loss equals the uninterrupted run's."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    subprocess.run(_main_command(straight, 40), cwd=ROOT, check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(_main_command(interrupted, 40), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        path = interrupted / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    stopped_at = len(read_metrics(str(interrupted)))
    assert 5 <= stopped_at < 40, "the run should have stopped early"
    subprocess.run(_main_command(interrupted, 40), cwd=ROOT, check=True, capture_output=True, timeout=300)
    expected, resumed = read_metrics(str(straight)), read_metrics(str(interrupted))
    assert [r["step"] for r in resumed] == list(range(1, 41))
    for a, b in zip(expected, resumed):
        assert a["loss"] == b["loss"], (a["step"], a["loss"], b["loss"])


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    config = demo_config(20, **{"train.log_every": 1, "train.max_nonfinite": 3})
    config.unlock()
    config.loss.terms = [{"name": "next_token", "weight": float("inf")}]
    with pytest.raises(FloatingPointError, match="3 consecutive steps"):
        entry.run(config, str(tmp_path))


def test_cli_end_to_end(tmp_path):
    workdir = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "mathvlm.main", f"--config={DEMO}:steps=4", f"--workdir={workdir}",
         "--config.train.log_every=2", "--config.data.batch_size=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(str(workdir))] == [2, 4]
    assert json.load(open(workdir / "config.json"))["data"]["batch_size"] == 8


def test_a_step_that_cannot_fit_stops_before_training_and_says_what_to_change(tmp_path):
    """The pre-run fit check compiles the step for the first batch and compares its memory analysis
    with the device memory (``train.device_memory_bytes`` stands in for a TPU's HBM here, since CPU
    devices report none). Too little: a clear error before any step. Enough: training runs on the
    executable the check compiled."""
    from mathvlm import main as entry
    from mathvlm.train.loop import DoesNotFitError

    config = mc.load("configs/text_demo.py:steps=2")
    config.unlock()
    config.eval.evaluators = ()
    config.train.device_memory_bytes = 64 * 1024
    with pytest.raises(DoesNotFitError) as error:
        entry.run(config, str(tmp_path / "small"))
    message = str(error.value)
    for part in ("GiB per device", "mesh.fsdp=-1", "data.batch_size", "optim.accum_steps", "model.remat"):
        assert part in message, (part, message)
    logged = tmp_path / "small" / "metrics.jsonl"
    assert not logged.exists() or not logged.read_text().strip()          # no step ran
    assert not (tmp_path / "small" / "checkpoints").exists() or not os.listdir(tmp_path / "small" / "checkpoints")
    config.train.device_memory_bytes = 2**34
    result = entry.run(config, str(tmp_path / "enough"))
    assert np.isfinite(result["loss"])
