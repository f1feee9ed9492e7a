"""GRPO end to end on the tiny VLM and 8 fake devices: the sampler's log-probs are the policy's, LoRA
switched off is the base model, the step raises a reward on a tiny repeated prompt set, a resumed run
continues bit for bit, and 2 processes draw the batches 1 process draws."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mathvlm import config as mc
from mathvlm import main as entry
from mathvlm import registry
from mathvlm.eval.rewards import Reward
from mathvlm.losses import token_logps
from mathvlm.models.generate import generate
from mathvlm.train import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRPO = os.path.join(ROOT, "configs", "rl", "grpo.py")


@registry.register("reward", "test_share_of_e")
def share_of_e(completion: str, record: dict) -> Reward:
    """A reward a random model already earns sometimes: the share of 'e' among the characters."""
    del record
    return Reward(completion.count("e") / max(1, len(completion)), None if "e" in completion else "no_e")


def tiny_grpo(steps: int, **overrides):
    """The tiny GRPO recipe from a random start: 2 problems asked again and again, short completions."""
    config = mc.load(f"{GRPO}:size=tiny,steps={steps},prompts=2,group=8,eval_examples=0")
    settings = {"eval.evaluators": "()", "eval.at_start": "False", "data.num_examples": "2",
                "rl.max_new_tokens": "8", "rl.prompt_len": "192", "data.seq_len": "200",
                "rl.rewards": "({'name': 'test_share_of_e', 'weight': 1.0},)", "optim.lr": "3e-3",
                "optim.warmup_steps": "1", **{k: str(v) for k, v in overrides.items()}}
    for key, value in settings.items():
        mc.override(config, key, value)
    return config


def training_records(workdir):
    return [r for r in metrics.read_metrics(str(workdir)) if "loss" in r]


def test_sampler_logprobs_are_the_policy_log_probs():
    """The sampler's kept log-prob of each drawn token equals log softmax(logits / T) of a full
    forward pass over prompt + completion: the old policy the GRPO ratio divides by."""
    from mathvlm.models.decoder import DecoderConfig, DecoderLM

    model = DecoderLM(DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                                    num_heads=2, num_kv_heads=1, head_dim=16), rngs=nnx.Rngs(0))
    prompt = jnp.asarray([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13]], jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], jnp.int32)
    keys = jax.random.split(jax.random.key(3), 2)
    out = generate(model, prompt, mask, max_new_tokens=6, rng=keys, temperature=0.7)
    full = jnp.concatenate([prompt, out.tokens], axis=1)
    full_mask = jnp.concatenate([mask, jnp.ones_like(out.tokens)], axis=1)
    logits = model(full, attention_mask=full_mask)
    expected = token_logps(logits[:, :-1], full[:, 1:], 0.7)[:, prompt.shape[1] - 1:]
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(expected), atol=2e-5)
    assert np.all(np.asarray(out.logprobs) < 0)


def test_lora_disabled_is_the_base_model():
    from mathvlm.models import lora
    from mathvlm.models.layers import Dense

    class Net(nnx.Module):
        def __init__(self):
            self.q_proj = Dense(4, 3, axes=("embed", "mlp"), rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.q_proj(x)

    net = Net()
    x = jnp.arange(8.0).reshape(2, 4)
    base = net(x)
    lora.apply_lora(net, rank=2, alpha=4.0, targets=("q_proj",), rngs=nnx.Rngs(1))
    net.q_proj.lora_b[...] = jnp.ones_like(net.q_proj.lora_b[...])
    assert not np.allclose(net(x), base)
    with lora.disabled():
        np.testing.assert_array_equal(np.asarray(jax.jit(lambda m, x: m(x))(net, x)), np.asarray(base))
    assert not np.allclose(net(x), base)


@pytest.mark.long
def test_grpo_raises_the_reward_on_a_repeated_prompt_set(tmp_path):
    """The whole stage (rollout → reward → group advantages → update) through the trainer: the
    share of 'e' in the completions of 2 repeated prompts rises."""
    entry.run(tiny_grpo(30), str(tmp_path))
    records = training_records(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 31))
    rewards = [r["rollout/reward_mean"] for r in records]
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > first + 0.1, rewards
    for key in ("grpo/clip_fraction", "grpo/zero_advantage_groups", "rollout/completion_tokens",
                "rollout/format_rate", "rollout/accuracy", "rollout/group_reward_std", "grad_norm"):
        assert any(key in r for r in records), key
    per_version = [k for k in records[-1] if k.startswith("rollout/version/") and k.endswith("/zero_advantage")]
    assert per_version and all(0.0 <= records[-1][k] <= 1.0 for k in per_version)
    lines = [json.loads(line) for line in open(tmp_path / "rollouts.jsonl")]
    assert {r["step"] for r in lines} == set(range(30)) and all("completion" in r for r in lines)


def test_grpo_resume_is_bit_exact(tmp_path):
    """Delete the last checkpoint and rerun: the resumed steps sample the same completions and end
    in the same parameters, bit for bit (the sampler's keys are a function of seed and step)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    entry.run(tiny_grpo(4, **{"checkpoint.every_steps": 2, "rl.log_rollouts": 16}), str(straight))
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    with open(resumed / "metrics.jsonl") as f:
        kept = [line for line in f if json.loads(line).get("step", 0) <= 2]
    (resumed / "metrics.jsonl").write_text("".join(kept))
    rollouts = [line for line in open(resumed / "rollouts.jsonl") if json.loads(line)["step"] < 2]
    (resumed / "rollouts.jsonl").write_text("".join(rollouts))
    entry.run(tiny_grpo(4, **{"checkpoint.every_steps": 2, "rl.log_rollouts": 16}), str(resumed))
    assert (resumed / "rollouts.jsonl").read_text() == (straight / "rollouts.jsonl").read_text()
    a, b = training_records(straight), training_records(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a[2:], b[2:]):
        assert x["loss"] == y["loss"] and x["rollout/reward_mean"] == y["rollout/reward_mean"]

    from mathvlm.train.checkpoint import abstract_like  # noqa: F401  (the restore below uses orbax)
    import orbax.checkpoint as ocp

    def params(workdir):
        return ocp.StandardCheckpointer().restore(str(workdir / "checkpoints" / "4" / "state"))

    for x, y in zip(jax.tree.leaves(params(straight)), jax.tree.leaves(params(resumed))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.long
def test_two_processes_draw_the_batches_one_process_draws(tmp_path):
    """2 processes × 4 devices and 1 process × 8 devices: the same rollouts (logged by process 0:
    the first rows of the global batch), the same rewards and losses per step."""
    args = ["-m", "mathvlm.main", f"--config={GRPO}:size=tiny,steps=2,prompts=4,group=4,eval_examples=0",
            "--config.eval.evaluators=()", "--config.eval.at_start=False", "--config.rl.max_new_tokens=6",
            "--config.rl.prompt_len=192", "--config.data.seq_len=198", "--config.rl.log_rollouts=8",
            "--config.mesh.fsdp=2"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    multi = subprocess.run([sys.executable, "launch/multiprocess.py", "--processes", "2", "--local-devices", "4",
                            "--", *args, f"--workdir={tmp_path / 'multi'}"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-3000:]
    single = subprocess.run([sys.executable, *args, f"--workdir={tmp_path / 'single'}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    assert (tmp_path / "multi" / "rollouts.jsonl").read_text() == (tmp_path / "single" / "rollouts.jsonl").read_text()
    a, b = training_records(tmp_path / "single"), training_records(tmp_path / "multi")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        for key in ("rollout/reward_mean", "rollout/accuracy", "rollout/completion_tokens"):
            assert x[key] == y[key], key
        np.testing.assert_allclose(x["loss"], y["loss"], rtol=1e-5)


def test_curriculum_asks_the_levels_in_force():
    """``curriculum=1``: level 0 first, one more level each quarter of the steps."""
    from mathvlm.train.rollout import RolloutStream

    config = mc.load(f"{GRPO}:size=tiny,steps=8,prompts=4,group=2,curriculum=1,problems=300,eval_examples=0")
    mc.override(config, "data.families", "('function',)")
    stream = RolloutStream(config, trainer=None)
    levels = stream.source.levels
    assert set(np.unique(levels)) == {0, 1, 2, 3}
    for step in range(8):
        assert stream.max_level(step) == step // 2
        asked = stream.problems(step)
        assert len(asked) == 4 and max(levels[asked]) <= step // 2
    for level in range(4):  # each pool holds exactly the problems at or below its level
        assert set(np.unique(levels[stream._pools[level]])) == set(range(level + 1))
    assert stream.problems(3) != stream.problems(2)      # the pool is walked, not repeated
