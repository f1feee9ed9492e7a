"""Several stages run one after another in one workdir: the papers' pipelines as a single job.

``config.job = "chain"`` with ``config.stages`` a tuple of ``{"name", "config", "init_from"}``: each
stage is an ordinary recipe (``configs/<paper>/<stage>.py:arg``), trained by the ``train`` job in
``<workdir>/<name>``; ``init_from`` names an earlier stage whose newest checkpoint initialises it (the
recipe's own ``init.params`` says which parameters carry over, e.g. CLIP-Math's image tower into the
VLM; a stage's ``params`` overrides it) and ``set`` (``{"data.families": (...), ...}``) changes keys of the
recipe's config. Re-running the same command resumes: finished stages are read back, not retrained.

At the end ``<workdir>/summary.md`` lists each stage's final metrics and, when stages ran the engine's
held-out evaluator, the accuracy per MathVerse version and stage (table and ``by_version.png``).
"""

from __future__ import annotations

import json
import os
import time

from absl import logging

from mathvlm import config as mc
from mathvlm import registry, sharding
from mathvlm.train import summary
from mathvlm.train.checkpoint import Checkpointer
from mathvlm.train.metrics import read_metrics

VERSION_PREFIX = "engine/version/"
BLIND_PREFIX = "engine_blind/version/"


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


def final_metrics(stage_dir: str) -> tuple[dict, list[tuple[int, float]]]:
    """The last value of every metric a finished stage logged, and its (step, loss) curve."""
    out, curve = {}, []
    if os.path.exists(os.path.join(stage_dir, "metrics.jsonl")):
        for row in read_metrics(stage_dir):
            out.update(row)
            if "loss" in row:
                curve.append((int(row["step"]), float(row["loss"])))
    return out, curve


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
    path = write_chain_summary(workdir, config.name, results, timings, histories,
                               chance=config.get("chance", 0.0), note=config.get("summary_note", ""))
    print(f"chain summary: {path}", flush=True)
    return results


def _saved_step(stage_dir: str) -> int:
    checkpoints = Checkpointer(stage_dir)
    try:
        return checkpoints.latest_step() or 0
    finally:
        checkpoints.close()


def by_version(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``{stage: {version: accuracy}}`` for stages that ran the engine held-out evaluator, plus
    ``{"<stage> (blind)": ...}`` rows where it also ran with zeroed images and ``"<stage> (<x>)"`` rows
    for other ``engine_<x>`` labels of it (e.g. ``engine_shuffled``)."""
    table = {}
    for stage, metrics in results.items():
        labels = sorted({k.split("/", 1)[0] for k in metrics if k.startswith("engine_")
                         and k.split("/", 1)[1].startswith("version/")} - {"engine_blind"})
        prefixes = [(VERSION_PREFIX, stage), (BLIND_PREFIX, f"{stage} (blind)")]
        prefixes += [(f"{label}/version/", f"{stage} ({label[len('engine_'):]})") for label in labels]
        for prefix, label in prefixes:
            row = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
            if row:
                table[label] = row
    return table


def write_chain_summary(workdir: str, title: str, results: dict, timings: dict,
                        histories: dict | None = None, *, chance: float = 0.0, note: str = "") -> str:
    """``<workdir>/summary.md``: each stage's final metrics, held-out accuracy per version and stage, the
    picture controls against ``chance`` (then ``note``), and the plots."""
    lines = [f"# {title}", "", "| stage | time (s) | final loss | key metrics |", "|---|---|---|---|"]
    for stage, metrics in results.items():
        keys = [k for k in sorted(metrics) if k.endswith("accuracy") or k.endswith("/i2t_accuracy")]
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in keys[:6])
        loss = metrics.get("loss")
        lines.append(f"| {stage} | {timings.get(stage, 0):.0f} | "
                     f"{'' if loss is None else f'{loss:.4f}'} | {shown} |")
    lines += ["", f"Wall time of the stages run by this command: {sum(timings.values()):.0f} s."]
    table = by_version(results)
    if table:
        versions = sorted({v for row in table.values() for v in row})
        lines += ["", "## Held-out engine accuracy by MathVerse version", "",
                  "| stage | " + " | ".join(versions) + " |", "|---" * (len(versions) + 1) + "|"]
        for stage, row in table.items():
            lines.append(f"| {stage} | " + " | ".join(
                f"{100 * row[v]:.1f}" if v in row else "" for v in versions) + " |")
        plot = _plot_by_version(workdir, table, versions)
        if plot:
            lines += ["", f"![accuracy by version]({os.path.basename(plot)})"]
    curves = _plot_losses(workdir, histories or {})
    if curves:
        lines += ["", f"![loss per stage]({os.path.basename(curves)})"]
    lines += summary.controls_section(table, chance=chance, note=note)  # the summary ends with it
    path = os.path.join(workdir, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(workdir, "chain_metrics.json"), "w") as f:
        json.dump({"final": results, "seconds": timings}, f, indent=2, sort_keys=True)
    return path


def _pyplot():
    try:
        return summary.pyplot()
    except ImportError:  # plots are a convenience; the tables hold the numbers
        logging.warning("matplotlib missing: no plots in the chain summary")
        return None


def _plot_losses(workdir: str, histories: dict) -> str | None:
    """Each stage's loss curve, one panel per stage (their losses are not on one scale)."""
    plt = _pyplot()
    stages = [name for name, curve in histories.items() if curve]
    if plt is None or not stages:
        return None
    fig, axes = plt.subplots(1, len(stages), figsize=(2.6 * len(stages), 2.4), squeeze=False)
    for ax, name in zip(axes[0], stages):
        steps, losses = zip(*histories[name])
        ax.plot(steps, losses, marker=".", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("loss", fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, "loss_by_stage.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_by_version(workdir: str, table: dict, versions: list[str]) -> str | None:
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(1.2 * len(versions) + 2, 3.2))
    width = 0.8 / max(len(table), 1)
    for i, (stage, row) in enumerate(table.items()):
        xs = [j + i * width for j in range(len(versions))]
        ax.bar(xs, [100 * row.get(v, 0.0) for v in versions], width, label=stage)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(versions))])
    ax.set_xticklabels([v.replace("_", "\n") for v in versions], fontsize=8)
    ax.set_ylabel("held-out accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, "by_version.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
