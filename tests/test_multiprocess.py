"""Sharding across processes: 2 local processes × 4 fake CPU devices (gloo), launched exactly as a user
would with launch/multiprocess.py."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mathvlm import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout):
    """Run ``python args`` from the repository root; a hang fails with the processes' last output."""
    try:
        return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{' '.join(args)} still running after {timeout} s; last output:\n{out[-3000:]}")


def test_shutdown_waits_for_every_local_shard():
    """distributed.shutdown blocks on every live array, not only the shard a float() read (the cause of
    a hang at exit when the coordination service went away under still-running devices)."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    x = jax.device_put(jnp.ones((jax.device_count() * 512, 512)), jax.NamedSharding(mesh, jax.P("data")))
    w = jnp.full((512, 512), 1e-3)
    y = jax.jit(lambda a: jnp.tanh(jnp.tanh(a @ w) @ w).sum(0),
                out_shardings=jax.NamedSharding(mesh, jax.P()))(x)
    distributed.shutdown()  # not initialised here: only the wait, then jax's no-op
    assert all(shard.data.is_ready() for shard in y.addressable_shards)


def test_two_processes_share_one_mesh():
    proc = _run(["launch/multiprocess.py", "--processes", "2", "--local-devices", "4", "--",
                 "tests/workers/sharding_worker.py"], timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines()
               if "RESULT " in line]
    assert sorted(r["process"] for r in results) == [0, 1]

    # Reference computed here, in one process, from the same seed and the same global batch.
    init = nnx.initializers.normal(1.0)
    up = init(nnx.Rngs(0).params(), (8, 16))
    rows = [np.arange(32, dtype=np.float32).reshape(4, 8) / 10 + rank for rank in (0, 1)]
    expected = float(jnp.tanh(jnp.concatenate(rows) @ up).sum())

    for r in results:
        assert r["processes"] == 2 and r["devices"] == 8 and r["local_devices"] == 4
        assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
        np.testing.assert_allclose(r["total"], expected, rtol=1e-5)
        assert r["total_bytes"] == 4 * (8 * 16 + 8)
        assert r["replicated_bytes"] == 4 * 8            # only the ("norm",) scale
        assert r["bytes_per_device"] == 4 * (8 * 16 // 4 + 8)


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


def run_one_and_two_processes(config: str, steps: int, tmp_path) -> None:
    """Train ``config`` for ``steps`` as 2 processes × 4 devices and as 1 process × 8 devices (workdirs
    ``multi`` / ``single``) and check the per-step losses agree."""
    args = ["-m", "mathvlm.main", f"--config={config}:steps={steps},batch_size=8",
            "--config.train.log_every=1", "--config.mesh.fsdp=2", "--config.eval.evaluators=()"]
    multi = _run(["launch/multiprocess.py", "--processes", "2", "--local-devices", "4", "--", *args,
                  f"--workdir={tmp_path / 'multi'}"], timeout=400)
    assert multi.returncode == 0, multi.stdout[-3000:]
    single = _run([*args, f"--workdir={tmp_path / 'single'}"], timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    expected, got = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
    assert len(expected) == len(got) == steps
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_two_process_training_matches_one_process(tmp_path):
    """The same global batches and the same per-step losses from 2 processes × 4 devices as from
    1 process × 8 devices (the trainer's multi-host path)."""
    run_one_and_two_processes("configs/text_demo.py", 5, tmp_path)

    # The checkpoint the 2 processes wrote restores in this one process onto other meshes.
    from mathvlm import config as mc
    from mathvlm import sharding
    from mathvlm.train.checkpoint import Checkpointer
    from mathvlm.train.loop import Trainer

    config = mc.load("configs/text_demo.py:steps=5,batch_size=8")
    reference = Trainer(config, sharding.make_mesh({"data": -1}))
    reference.state, _ = Checkpointer(str(tmp_path / "single")).restore(5, reference.state)
    for shape, devices in [({"data": 8}, None), ({"data": 1, "fsdp": 8}, None),
                           ({"data": 1}, jax.devices()[:1])]:
        trainer = Trainer(config, sharding.make_mesh(shape, devices=devices))
        trainer.state, meta = Checkpointer(str(tmp_path / "multi")).restore(5, trainer.state)
        assert meta["step"] == 5
        for a, b in zip(jax.tree.leaves(trainer.state[0]), jax.tree.leaves(reference.state[0])):
            assert a.sharding.mesh.shape == trainer.mesh.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


BUCKETED_CONFIG = '''
import importlib.util

def get_config(arg=None):
    spec = importlib.util.spec_from_file_location("demo", {demo!r})
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    config = demo.get_config(arg)
    with config.unlocked():
        config.data.length_buckets = {buckets!r}
    return config
'''


def test_two_process_length_buckets_match_one_process(tmp_path):
    """data.length_buckets across processes: the cut is agreed on the global batch (sync_bucket), so
    2 processes give the per-step losses of 1 process although their local rows would cut apart."""
    from ml_collections import ConfigDict

    from mathvlm.data import pipeline

    # text_math rows (max_operand 20) are 47-51 bytes: buckets 2 apart make local cuts differ.
    buckets, steps = (48, 50, 52, 64), 3
    config_path = tmp_path / "bucketed.py"
    config_path.write_text(BUCKETED_CONFIG.format(demo=os.path.join(ROOT, "configs", "text_demo.py"),
                                                  buckets=buckets))
    data = ConfigDict({"source": "text_math", "tokenizer": "bytes", "batch_size": 8, "seq_len": 64,
                       "max_operand": 20})
    local_cuts = [[pipeline.trim_to_bucket(next(it), buckets)["tokens"].shape[1] for _ in range(steps)]
                  for it in (pipeline.make_iterator(data, seed=0, process_index=p, process_count=2)
                             for p in (0, 1))]
    assert local_cuts[0] != local_cuts[1]     # per-process cuts would disagree: the test can fail

    run_one_and_two_processes(str(config_path), steps, tmp_path)
