"""The demo chain end to end in its shortened CI form: every stage runs, weights flow from stage to stage,
the model reads its pictures (held-out accuracy above blind, shuffled and chance); re-running resumes
instead of retraining. Chains in general (preemption, ``set``, the summary). (The Math-PUMA toy
experiment's direction check is in tests/experiments/test_puma_gap.py.)"""

import functools
import itertools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from mathvlm import config as mc
from mathvlm import sharding
from mathvlm.train.chain import stage_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo.py")
SPEC = f"{DEMO}:scale=0.6,eval_examples=32"


def run_chain(spec, workdir):
    """Run a chain config to the end in a subprocess; a failure shows the run's output."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    result = subprocess.run([sys.executable, "-m", "mathvlm.main", f"--config={spec}",
                             f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=2400)  # a guard against hangs, not a speed target
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def params_of(stage, workdir):
    from mathvlm.evaluate import load_model

    config = stage_config(stage, str(workdir), os.path.dirname(DEMO))
    model, _ = load_model(config, checkpoint=os.path.join(str(workdir), stage["name"]))
    return {sharding.path_name(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}


def assert_tower_is_clip_math(vlm: dict, clip: dict) -> list[str]:
    """The VLM's image tower is CLIP-Math's image tower, bit for bit; returns its parameter paths."""
    tower = [k for k in vlm if k.startswith("vision_tower/")]
    assert tower
    for key in tower:
        np.testing.assert_array_equal(vlm[key], clip["vision_model/" + key[len("vision_tower/"):]],
                                      err_msg=key)
    return tower


def assert_calibrated_at_alignment(configs: dict, workdir) -> None:
    """Alignment measured the frozen CLIP-Math tower's feature statistics on its own calibration stream
    (the values a direct computation gives, not the identity) and instruction tuning inherited them."""
    from mathvlm.data import pipeline
    from mathvlm.evaluate import load_model
    from mathvlm.models.vlm import merge_moments

    def stats(name):
        model, _ = load_model(configs[name], checkpoint=os.path.join(str(workdir), name))
        return model, np.asarray(model.feature_stats[...])

    align_config = configs["align"]
    align, align_stats = stats("align")
    _, instruct_stats = stats("instruct")
    np.testing.assert_array_equal(instruct_stats, align_stats)
    assert align_config.train.calibrate_image_features == 16
    batches = pipeline.make_iterator(align_config.data, seed=align_config.seed + 1)
    moments = [align.feature_moments(batch["images"], batch.get("image_mask"))
               for batch in itertools.islice(batches, 16)]
    align.calibrate_feature_norm(*functools.reduce(merge_moments, moments))
    np.testing.assert_allclose(np.asarray(align.feature_stats[...]), align_stats, rtol=1e-4, atol=1e-5)
    mean, spread = align_stats
    assert np.abs(mean).max() > 1e-2 and not np.allclose(spread, 1.0)


@pytest.mark.long
def test_demo_chain_reads_its_pictures(tmp_path):
    """The demo's shortened CI form (every stage at 60% of its steps, 32 questions per version): every
    stage runs and leaves a checkpoint; after instruction tuning and after KL alignment, held-out
    vision-dominant accuracy beats the same questions blind, with another problem's picture and chance
    (25%) — the summary ends with those controls; alignment calibrates the tower's features and trains
    projector and LLM only (the tower stays CLIP-Math's, the LLM moves away from the text stage's);
    re-running the command resumes and trains nothing; from its instruction-tuned stage, GRPO ends
    below as many supervised steps (the GRPO result of docs/results.md, reduced)."""
    run_chain(SPEC, tmp_path)
    config = mc.load(SPEC)
    stages = {stage["name"]: stage for stage in config.stages}
    for name in stages:
        assert os.path.isdir(tmp_path / name / "checkpoints"), name
    final = json.loads((tmp_path / "chain_metrics.json").read_text())["final"]
    for name in ("instruct", "puma_kl"):
        seen = final[name]["engine/version/vision_dominant"]
        blind = final[name]["engine_blind/version/vision_dominant"]
        other = final[name]["engine_shuffled/version/vision_dominant"]
        assert seen >= max(blind, other, config.chance) + 0.15, (name, seen, blind, other)
        assert {k for k in final[name] if k.startswith("engine/version/")} == {
            f"engine/version/{v}" for v in ("text_dominant", "vision_intensive", "vision_dominant",
                                            "vision_only", "text_only")}
    summary = (tmp_path / "summary.md").read_text().strip().splitlines()
    assert "## Held-out engine accuracy by MathVerse version" in summary
    assert summary[-1] == config.summary_note and summary[-3].startswith("- **puma_kl**: ")
    assert (tmp_path / "by_version.png").exists() and (tmp_path / "loss_by_stage.png").exists()

    configs = {name: stage_config(stages[name], str(tmp_path), config.config_dir) for name in stages}
    assert_calibrated_at_alignment(configs, tmp_path)
    align = params_of(stages["align"], tmp_path)
    text = params_of(stages["text_math"], tmp_path)
    clip = params_of(stages["clip_math"], tmp_path)
    for key in assert_tower_is_clip_math(align, clip):
        np.testing.assert_array_equal(text[key], align[key], err_msg=key)
    assert_tower_is_clip_math(params_of(stages["puma_kl"], tmp_path), clip)
    decoder = [k for k in align if k.startswith("decoder/")]
    assert any(not np.array_equal(align[k], text[k]) for k in decoder)

    # The same command again finds every stage finished and trains nothing.
    again = run_chain(SPEC, tmp_path)
    assert "resumed from step" in again.stderr

    # docs/results.md's GRPO result at a reduced budget, from this instruction-tuned stage: as many
    # supervised steps on the same problems end higher, and GRPO's vision-only groups carry no
    # advantage (the start answers those questions with nothing, every sample alike).
    from mathvlm.experiments import grpo_toy

    rl = tmp_path / "rl"
    for method in grpo_toy.METHODS:
        done = subprocess.run(grpo_toy.command(str(tmp_path / "instruct"), 60, method, 0,
                                               str(rl / f"{method}_s0"), "eval_examples=16"),
                              cwd=ROOT, capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, done.stderr[-3000:]
    toy = grpo_toy.summarize(str(rl), 1)
    assert toy["sft"]["end"][0] > toy["grpo"]["end"][0], toy
    key = "rollout/version/vision_only/zero_advantage"
    assert np.mean([r[key] for r in toy["grpo"]["rollout"][0] if key in r]) >= 0.9


CHAIN = '''
from mathvlm import config as mc


def get_config(arg=None):
    config = mc.defaults()
    config.name = "two text stages"
    config.job = "chain"
    config.config_dir = {configs!r}
    config.stages = ({{"name": "first", "config": "text_demo.py:steps=3000,batch_size=8"}},
                     {{"name": "second", "config": "text_demo.py:steps=2,batch_size=8", "init_from": "first"}})
    return mc.finalize(config)
'''


def test_a_preempted_stage_stops_the_chain(tmp_path):
    """SIGTERM mid-stage saves that stage and exits 0; the next stage must not start from the unfinished
    checkpoint."""
    import signal
    import time

    config = tmp_path / "chain.py"
    config.write_text(CHAIN.format(configs=os.path.join(ROOT, "configs")))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    process = subprocess.Popen([sys.executable, "-m", "mathvlm.main", f"--config={config}",
                                f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "run" / "first" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "stage first stopped before step 3000" in out
    assert not (tmp_path / "run" / "second").exists()
    assert not (tmp_path / "run" / "summary.md").exists()


def test_stage_set_changes_recipe_keys_and_rejects_unknown_ones(tmp_path):
    config = mc.load(os.path.join(ROOT, "configs", "experiments", "grounding.py"))
    instruct = stage_config(dict(config.stages[2]), str(tmp_path), os.path.join(ROOT, "configs"))
    assert instruct.data.families == ("function_shape",) and instruct.data.answer == "letter"
    assert instruct.eval.evaluators[1]["blind"] and instruct.eval.max_new_tokens == 64
    assert instruct.init.checkpoint == os.path.join(str(tmp_path), "align")
    bad = {"name": "x", "config": "mavis/instruct.py:size=tiny", "set": {"data.familes": ("function",)}}
    with pytest.raises(mc.ConfigError, match="stage 'x', set: unknown config key 'data.familes'"):
        stage_config(bad, str(tmp_path), os.path.join(ROOT, "configs"))
    wrong_type = {"name": "y", "config": "mavis/instruct.py:size=tiny", "set": {"train.steps": "many"}}
    with pytest.raises(mc.ConfigError, match="stage 'y', set: config key 'train.steps' expects int"):
        stage_config(wrong_type, str(tmp_path), os.path.join(ROOT, "configs"))


def test_summary_rows_for_blind_and_control_evaluations():
    from mathvlm.train.summary import by_version

    table = by_version({"instruct": {"engine/version/vision_dominant": 0.6, "engine/accuracy": 0.6,
                                     "engine_blind/version/vision_dominant": 0.2,
                                     "engine_shuffled/version/vision_dominant": 0.25,
                                     "engine_shuffled/answered": 1.0, "loss": 0.4}})
    assert table == {"instruct": {"vision_dominant": 0.6}, "instruct (blind)": {"vision_dominant": 0.2},
                     "instruct (shuffled)": {"vision_dominant": 0.25}}


def test_chain_summary_ends_with_the_picture_controls(tmp_path):
    """The margin is measured against the strongest of blind, shuffled and chance (a blind model that
    cannot finish its answer scores below chance, so blind alone is no control)."""
    from mathvlm.train.summary import write_chain_summary

    results = {"instruct": {"engine/version/vision_dominant": 0.6, "engine_blind/version/vision_dominant": 0.1,
                            "engine_shuffled/version/vision_dominant": 0.2, "loss": 0.4},
               "puma_kl": {"engine/version/vision_dominant": 0.5, "engine_blind/version/vision_dominant": 0.3,
                           "loss": 0.3},
               "text": {"engine/version/text_dominant": 0.9}}
    path = write_chain_summary(str(tmp_path), "t", results, {"instruct": 3.0, "puma_kl": 2.0},
                               chance=0.25, note="what made it work")
    lines = open(path).read().strip().splitlines()
    assert lines[-1] == "what made it work"
    assert "- **instruct**: 60.0% against blind 10.0%, shuffled 20.0% and chance 25%: **+35.0 points**" in lines[-4]
    assert "- **puma_kl**: 50.0% against blind 30.0% and chance 25%: **+20.0 points**" in lines[-3]
    assert "Wall time of the stages run by this command: 5 s." in lines
