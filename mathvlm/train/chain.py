"""Several stages run one after another in one workdir: the papers' pipelines as a single job.

``config.job = "chain"`` with ``config.stages`` a tuple of ``{"name", "config", "init_from"}``: each
stage is an ordinary recipe (``configs/<paper>/<stage>.py:arg``), trained by the ``train`` job in
``<workdir>/<name>``; ``init_from`` names an earlier stage whose newest checkpoint initialises it (the
recipe's own ``init.params`` says which parameters carry over, e.g. CLIP-Math's image tower into the
VLM; a stage's ``params`` overrides it) and ``set`` (``{"data.families": (...), ...}``) changes keys of the
recipe's config. Re-running the same command resumes: finished stages are read back, not retrained.

At the end ``<workdir>/summary.md`` lists each stage's final metrics and, when stages ran the engine's
held-out evaluator, the accuracy per MathVerse version and stage (table and ``by_version.png``), written
by :func:`mathvlm.train.summary.write_chain_summary`.
"""

from __future__ import annotations

import os
import time

from mathvlm import config as mc
from mathvlm import registry, sharding
from mathvlm.train import summary
from mathvlm.train.checkpoint import Checkpointer
from mathvlm.train.metrics import final_metrics


def resolve_spec(spec: str, base_dir: str) -> str:
    """A stage's config spec with a relative path taken relative to the chain config's folder (so the
    chain runs from any working directory)."""
    path, arg = mc.split_spec(spec)
    if not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    return path if arg is None else f"{path}:{arg}"


def stage_config(stage: dict, workdir: str, base_dir: str):
    config = mc.load(resolve_spec(stage["config"], base_dir))
    if stage.get("init_from"):
        with config.unlocked():
            config.init.checkpoint = os.path.join(workdir, stage["init_from"])
            if "params" in stage:  # the chain's predecessor may differ from the recipe's default one
                config.init.params = stage["params"]
    if stage.get("set"):
        with config.unlocked():
            for key, value in dict(stage["set"]).items():
                try:
                    mc.set_value(config, key, value)
                except mc.ConfigError as e:
                    raise mc.ConfigError(f"stage {stage['name']!r}, set: {e}") from None
    return config


@registry.register("job", "chain")
def chain(config, *, workdir: str, mesh):
    del mesh  # each stage builds the mesh of its own config
    base_dir = config.get("config_dir", "") or os.getcwd()
    names = [stage["name"] for stage in config.stages]
    for i, stage in enumerate(config.stages):
        source = stage.get("init_from")
        if source and source not in names[:i]:
            raise mc.ConfigError(f"stage {stage['name']!r}: init_from={source!r} is not an earlier stage "
                                 f"(earlier: {names[:i]})")
    results, timings, histories = {}, {}, {}
    for stage in config.stages:
        stage_dir = os.path.join(workdir, stage["name"])
        os.makedirs(stage_dir, exist_ok=True)
        cfg = stage_config(stage, workdir, base_dir)
        mc.write_config(cfg, stage_dir)
        print(f"\n=== stage {stage['name']}: {cfg.name} → {stage_dir}", flush=True)
        start = time.perf_counter()
        stage_mesh = sharding.make_mesh(cfg.mesh)
        registry.get("job", cfg.job)(cfg, workdir=stage_dir, mesh=stage_mesh)
        if cfg.job == "train" and _saved_step(stage_dir) < cfg.train.steps:
            # Preempted (SIGTERM saved a checkpoint mid-stage): the next stage must not start from an
            # unfinished one. The same command resumes this stage, then goes on.
            print(f"stage {stage['name']} stopped before step {cfg.train.steps}; re-run the same command "
                  "to resume it", flush=True)
            return results
        timings[stage["name"]] = time.perf_counter() - start
        results[stage["name"]], histories[stage["name"]] = final_metrics(stage_dir)
    path = summary.write_chain_summary(workdir, config.name, results, timings, histories,
                                       chance=config.get("chance", 0.0), note=config.get("summary_note", ""))
    print(f"chain summary: {path}", flush=True)
    return results


def _saved_step(stage_dir: str) -> int:
    checkpoints = Checkpointer(stage_dir)
    try:
        return checkpoints.latest_step() or 0
    finally:
        checkpoints.close()
