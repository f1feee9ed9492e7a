"""The figures of the toy-scale effects in docs/results.md, drawn from the runs' own ``metrics.jsonl``.

    python -m mathvlm.experiments.figures clip_math runs/clip --out notebooks/figures/clip_math.png
    python -m mathvlm.experiments.figures grounding runs/grounding/instruct --out notebooks/figures/grounding.png
    python -m mathvlm.experiments.figures puma runs/grounding --out notebooks/figures/puma_gap.png

``clip_math`` and ``grounding`` draw a run's evaluation curves (held-out retrieval; accuracy with the
picture, blind and with another problem's picture); ``puma`` reads every branch stage that
``configs/experiments/puma_gap.py`` left in a chain workdir and draws, per setting (clean, ``_noise…``,
``_standard``, ``_T…``), each branch's final text-dominant and vision-dominant accuracy — the bar is the mean
over seeds, the dots the seeds. Each command prints the numbers it drew as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

from mathvlm.train.metrics import final_metrics
from mathvlm.train.metrics import read_metrics
from mathvlm.train.summary import pyplot, save_plot

CLIP_MATH = {"diagram → caption R@1": "retrieval/i2t_r@1", "caption → diagram R@1": "retrieval/t2i_r@1"}
GROUNDING = {"vision-dominant": "engine/version/vision_dominant",
             "vision-dominant, blind": "engine_blind/version/vision_dominant",
             "vision-dominant, another picture": "engine_shuffled/version/vision_dominant",
             "text-dominant": "engine/version/text_dominant"}
VERSIONS = ("text_dominant", "vision_dominant")
# puma_gap.py's branch stages: family, then optional mode, temperature, label noise and seed suffixes
_BRANCH = re.compile(r"^(?P<family>ntp_weak|puma_kl|puma_lam[0-9.]+)"
                     r"(?P<setting>(_standard)?(_T[0-9.]+)?(_noise[0-9.]+)?)(_s(?P<seed>\d+))?$")
_ORDER = ("ntp_weak", "puma_lam0", "puma_kl", "puma_lam0.5")


def eval_curves(run_dir: str, keys: dict[str, str]) -> dict[str, list[tuple[int, float]]]:
    """``{label: [(step, value), ...]}`` for each metric key a run's evaluations logged."""
    records = read_metrics(run_dir)
    curves = {label: [(r["step"], float(r[key])) for r in records if key in r] for label, key in keys.items()}
    if not any(curves.values()):
        raise ValueError(f"{run_dir}/metrics.jsonl has none of {sorted(keys.values())}: was the run "
                         "evaluated (eval.every_steps / eval.evaluators)?")
    return {label: points for label, points in curves.items() if points}


def final_accuracy(stage_dir: str) -> dict[str, float]:
    """The last logged held-out accuracy per version of one stage."""
    last, _ = final_metrics(stage_dir)
    missing = [v for v in VERSIONS if f"engine/version/{v}" not in last]
    if missing:
        raise ValueError(f"{stage_dir}/metrics.jsonl has no engine/version/{missing[0]}: the stage ran "
                         "without puma_gap.py's held-out evaluators; move it out of the workdir")
    return {v: float(last[f"engine/version/{v}"]) for v in VERSIONS}


def puma_branches(workdir: str) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{setting: {family: {version: [accuracy per seed]}}}`` for puma_gap's branch stages in
    ``workdir`` (setting "" is the clean data); other stages (clip_math, align, text_sft) are left out."""
    found: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name in sorted(os.listdir(workdir)):
        match = _BRANCH.match(name)
        if not match or not os.path.isdir(os.path.join(workdir, name)):
            continue
        accuracy = final_accuracy(os.path.join(workdir, name))
        family = found.setdefault(match["setting"], {}).setdefault(match["family"], {v: [] for v in VERSIONS})
        for version in VERSIONS:
            family[version].append(accuracy[version])
    if not found:
        raise ValueError(f"{workdir} has no puma_gap branch stages (ntp_weak, puma_kl, puma_lam<λ>): run "
                         "configs/experiments/puma_gap.py with this workdir first")
    return found


def _ordered(families):
    return sorted(families, key=lambda f: (_ORDER.index(f) if f in _ORDER else len(_ORDER), f))


def _describe(setting: str) -> str:
    """A setting suffix in words: ``"_standard_T4"`` → ``"clean, token-mean KL, T = 4"``."""
    parts = ["clean"] if "_noise" not in setting else []
    for part in filter(None, setting.split("_")):
        parts.append(f"{float(part[5:]):.0%} letters wrong" if part.startswith("noise")
                     else "token-mean KL" if part == "standard"
                     else f"T = {part[1:]}" if part.startswith("T") else part)
    return ", ".join(parts)


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: str, title: str, ylabel: str,
                chance: float | None = None) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    for label, points in curves.items():
        steps, values = zip(*points)
        ax.plot(steps, [100 * v for v in values], marker="o", markersize=3, label=label)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set(xlabel="training step", ylabel=ylabel, title=title, ylim=(0, 100))
    return save_plot(fig, ax, path, legend_size=7)


def plot_puma(branches: dict, path: str) -> str:
    """One pair of bars (text-dominant, vision-dominant) per branch, the settings side by side."""
    plt = pyplot()
    settings = sorted(branches, key=lambda s: (s != "", s))
    columns = [(setting, family) for setting in settings for family in _ordered(branches[setting])]
    fig, ax = plt.subplots(figsize=(1.0 * len(columns) + 1.2, 3.9), dpi=100)
    for x, (setting, family) in enumerate(columns):
        accuracy = branches[setting][family]
        for offset, version, colour in ((-0.2, "text_dominant", "tab:blue"),
                                        (0.2, "vision_dominant", "tab:orange")):
            seeds = 100 * np.asarray(accuracy[version])
            ax.bar(x + offset, seeds.mean(), 0.38, color=colour,
                   label=version.replace("_", "-") if x == 0 else None)
            ax.plot(np.full(len(seeds), x + offset), seeds, "k.", markersize=4)
        gap = 100 * (np.mean(accuracy["text_dominant"]) - np.mean(accuracy["vision_dominant"]))
        ax.text(x, 102, f"gap {gap:.1f}", ha="center", fontsize=7)
        if x and setting != columns[x - 1][0]:
            ax.axvline(x - 0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(columns)), [f"{family}\n" + _describe(setting).replace(", ", "\n") for setting, family in columns],
                  fontsize=7)
    ax.set(ylim=(0, 110), ylabel="held-out accuracy (%)",
           title="Math-PUMA branches from text_sft (bars: mean over seeds, dots: seeds)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=("clip_math", "grounding", "puma"))
    parser.add_argument("run", help="the run directory (puma: the chain workdir holding the branches)")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    if args.figure == "puma":
        numbers = puma_branches(args.run)
        plot_puma(numbers, args.out)
    else:
        keys, title, ylabel, chance = (
            (CLIP_MATH, "CLIP-Math: held-out retrieval", "R@1 (%)", None) if args.figure == "clip_math"
            else (GROUNDING, "Visual grounding: held-out function_shape problems", "accuracy (%)", 0.25))
        numbers = eval_curves(args.run, keys)
        plot_curves(numbers, args.out, title, ylabel, chance)
    print(json.dumps(numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
