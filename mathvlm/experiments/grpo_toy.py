"""The toy GRPO result: GRPO against as many supervised steps, from the same instruction-tuned start,
over several seeds — held-out accuracy per version before and after, and why (reward spread within
groups, zero-advantage groups, KL).

    python -m mathvlm.experiments.grpo_toy --init runs/demo/instruct --steps 120 --seeds 2 --out runs/rl/toy

runs ``configs/rl/grpo.py:size=tiny,init=…,steps=…`` with ``method=grpo`` and ``method=sft`` per seed
(finished runs are kept: rerunning resumes or only collects), then writes ``results.md`` and
``grpo_toy.png`` in ``--out``. ``--collect`` only reads the runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

from mathvlm.train import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "configs", "rl", "grpo.py")
METHODS = ("grpo", "sft")
VERSIONS = ("text_dominant", "vision_intensive", "vision_dominant", "vision_only", "text_only")


def run_dir(out: str, method: str, seed: int) -> str:
    return os.path.join(out, f"{method}_s{seed}")


def command(init: str, steps: int, method: str, seed: int, workdir: str, extra: str = "") -> list[str]:
    arg = f"size=tiny,init={init},steps={steps},method={method}" + (f",{extra}" if extra else "")
    return [sys.executable, "-m", "mathvlm.main", f"--config={RECIPE}:{arg}", f"--config.seed={seed}",
            f"--workdir={workdir}"]


def evaluations(workdir: str) -> list[dict]:
    """The run's held-out evaluations (records with ``engine/accuracy``), in step order."""
    return [r for r in metrics_lib.read_metrics(workdir) if "engine/accuracy" in r]


def summarize(out: str, seeds: int) -> dict:
    """{method: {"start", "end": [per-seed overall accuracy], "versions": {v: [(start, end)]},
    "rollout": per-seed lists of GRPO's per-step diagnostics}}."""
    result = {}
    for method in METHODS:
        entry = {"start": [], "end": [], "versions": {v: [] for v in VERSIONS}, "rollout": []}
        for seed in range(seeds):
            workdir = run_dir(out, method, seed)
            evals = evaluations(workdir)
            if len(evals) < 2:
                raise FileNotFoundError(f"{workdir}: no start and end evaluation in metrics.jsonl; run "
                                        "without --collect first")
            first, last = evals[0], evals[-1]
            entry["start"].append(first["engine/accuracy"])
            entry["end"].append(last["engine/accuracy"])
            for v in VERSIONS:
                key = f"engine/version/{v}"
                entry["versions"][v].append((first.get(key, np.nan), last.get(key, np.nan)))
            entry["rollout"].append([r for r in metrics_lib.read_metrics(workdir) if "rollout/accuracy" in r])
        result[method] = entry
    return result


def write_results(summary: dict, out: str) -> str:
    lines = ["| method | seed | start | end | change (pp) | " + " | ".join(VERSIONS) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(VERSIONS)]
    for method, entry in summary.items():
        for seed, (start, end) in enumerate(zip(entry["start"], entry["end"])):
            per_version = " | ".join(f"{100 * a:.1f} → {100 * b:.1f}" for a, b in
                                     (entry["versions"][v][seed] for v in VERSIONS))
            lines.append(f"| {method} | {seed} | {100 * start:.1f} | {100 * end:.1f} | "
                         f"{100 * (end - start):+.1f} | {per_version} |")
    grpo = [r for runs in summary["grpo"]["rollout"] for r in runs]
    if grpo:
        def mean(key):
            return float(np.mean([r[key] for r in grpo if key in r]))

        lines += ["", f"GRPO rollouts over {len(grpo)} steps (all seeds): reward spread within a group "
                  f"{mean('rollout/group_reward_std'):.3f}, zero-advantage groups "
                  f"{100 * mean('grpo/zero_advantage_groups'):.0f}%, empty completions "
                  f"{100 * mean_reason(grpo, 'correct/no_answer_line'):.0f}% without an answer line, "
                  f"KL to the start {mean('grpo/kl'):.4f}, clip fraction {mean('grpo/clip_fraction'):.3f}."]
    path = os.path.join(out, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def mean_reason(records: list[dict], reason: str) -> float:
    return float(np.mean([r.get(f"rollout/reasons/{reason}", 0.0) for r in records]))


SMOOTH = 10  # steps averaged in the rollout curves (8 prompts a step)


def smooth(values: list[float]) -> np.ndarray:
    return np.convolve(values, np.ones(SMOOTH) / SMOOTH, mode="valid")


def plot(summary: dict, out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    x = np.arange(len(VERSIONS))
    for i, method in enumerate(METHODS):
        entry = summary[method]
        change = np.array([[b - a for a, b in entry["versions"][v]] for v in VERSIONS]) * 100  # [V, seeds]
        left.bar(x + (i - 0.5) * width, change.mean(axis=1), width, label=method,
                 yerr=[change.mean(1) - change.min(1), change.max(1) - change.mean(1)], capsize=3)
    left.axhline(0, color="black", lw=0.8)
    left.set_xticks(x, [v.replace("_", "\n") for v in VERSIONS], fontsize=8)
    left.set_ylabel("held-out accuracy change (pp); bars: seed range")
    left.legend()
    left.set_title("change from the instruction-tuned start")
    for seed, runs in enumerate(summary["grpo"]["rollout"]):
        steps = [r["step"] for r in runs][SMOOTH - 1:]
        right.plot(steps, smooth([r["rollout/accuracy"] for r in runs]), label=f"rollout accuracy, seed {seed}")
        right.plot(steps, smooth([r["grpo/zero_advantage_groups"] for r in runs]), ls="--",
                   label=f"zero-advantage groups, seed {seed}")
    right.set_xlabel(f"GRPO step (mean of the last {SMOOTH})")
    right.set_ylim(0, 1.05)
    right.legend(fontsize=7)
    right.set_title("GRPO training rollouts")
    fig.tight_layout()
    path = os.path.join(out, "grpo_toy.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--init", default="runs/demo/instruct")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--set", default="", help="more recipe args, e.g. lr=1e-3")
    parser.add_argument("--out", default="runs/rl/toy")
    parser.add_argument("--collect", action="store_true", help="only read finished runs")
    args = parser.parse_args(argv)
    if not args.collect:
        for seed in range(args.seeds):
            for method in METHODS:
                workdir = run_dir(args.out, method, seed)
                print(" ".join(command(args.init, args.steps, method, seed, workdir, args.set)), flush=True)
                subprocess.run(command(args.init, args.steps, method, seed, workdir, args.set), check=True,
                               cwd=ROOT)
    summary = summarize(args.out, args.seeds)
    print(open(write_results(summary, args.out)).read())
    print(f"figure: {plot(summary, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
