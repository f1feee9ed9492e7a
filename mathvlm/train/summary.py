"""Run summaries written to the workdir.

A run: ``summary.md`` (final metrics table) and ``loss.png`` (curves of every loss term) from
``metrics.jsonl`` (:func:`write_summary`). A chain (:mod:`mathvlm.train.chain`): ``summary.md`` with each
stage's final metrics, the held-out engine accuracy per MathVerse version and stage, the picture controls,
and ``by_version.png`` / ``loss_by_stage.png`` (:func:`write_chain_summary`).
"""

from __future__ import annotations

import json
import os

from absl import logging

from mathvlm.train.metrics import read_metrics

VERSION_PREFIX = "engine/version/"
BLIND_PREFIX = "engine_blind/version/"


def pyplot(*, required: bool = True):
    """matplotlib's pyplot on the file-only Agg backend (runs have no display). With ``required=False``
    a missing matplotlib logs a warning and gives None (plots are a convenience; tables hold the numbers)."""
    try:
        import matplotlib
    except ImportError:
        if required:
            raise
        logging.warning("matplotlib missing: no plots in the summary")
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict], keys: list[str], path: str, title: str) -> str:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key in keys:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), float)]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    return save_plot(fig, ax, path)


def save_plot(fig, ax, path: str, legend_size: int = 8, *, grid: bool = True, dpi: int | None = None) -> str:
    """Grid (unless ``grid=False``) and legend on ``ax`` (None: the caller dressed its axes), tight
    layout; write ``path`` (at ``dpi``, default the figure's) and free the figure."""
    import matplotlib.pyplot as plt

    if ax is not None:
        if grid:
            ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def write_summary(workdir: str, title: str = "mathvlm run") -> str:
    """Write ``summary.md`` and ``loss.png``; returns the path of ``summary.md``."""
    records = read_metrics(workdir)
    if not records:
        raise ValueError(f"{workdir}/metrics.jsonl has no records to summarise")
    loss_keys = sorted({k for r in records for k in r if k == "loss" or k.endswith("/loss")})
    plot = plot_curves(records, loss_keys, os.path.join(workdir, "loss.png"), f"{title}: loss")
    first, last = {}, {}  # per metric: its first and last logged value (evaluations log separately)
    for record in records:
        for key, value in record.items():
            first.setdefault(key, value)
            last[key] = value

    def fmt(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [f"# {title}", "", f"{len(records)} records, last step {last['step']}.", "",
             "| metric | first | last |", "|---|---|---|"]
    for key in sorted(k for k in last if k != "step"):
        lines.append(f"| {key} | {fmt(first[key])} | {fmt(last[key])} |")
    lines += ["", f"![loss]({os.path.basename(plot)})", ""]
    path = os.path.join(workdir, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def controls_section(table: dict[str, dict[str, float]], *, chance: float, version: str = "vision_dominant",
                     note: str = "") -> list[str]:
    """Markdown lines: for each stage evaluated on ``version`` with picture controls, its accuracy next to
    the same questions blind (picture zeroed), with another problem's picture (shuffled) and ``chance``,
    and the margin over the strongest of the three — what the model reads from the picture. ``table`` is
    ``{stage or "stage (control)": {version: accuracy}}`` (the chain's by-version table)."""
    lines = []
    for stage, row in table.items():
        if "(" in stage or version not in row:
            continue
        controls = {name: table[f"{stage} ({name})"][version] for name in ("blind", "shuffled")
                    if version in table.get(f"{stage} ({name})", {})}
        if not controls:
            continue
        strongest = max([chance, *controls.values()])
        shown = ", ".join(f"{name} {100 * value:.1f}%" for name, value in controls.items())
        lines.append(f"- **{stage}**: {100 * row[version]:.1f}% against {shown} and chance "
                     f"{100 * chance:.0f}%: **{100 * (row[version] - strongest):+.1f} points** over the "
                     "strongest of them.")
    if not lines:
        return []
    title = f"## Does the model read its pictures? Held-out {version.replace('_', '-')} accuracy"
    return ["", title, "", *lines] + (["", note] if note else [])


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
    picture controls against ``chance`` (then ``note``), and the plots; ``chain_metrics.json`` holds the
    numbers."""
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
    curves = _plot_stage_losses(workdir, histories or {})
    if curves:
        lines += ["", f"![loss per stage]({os.path.basename(curves)})"]
    lines += controls_section(table, chance=chance, note=note)  # the summary ends with it
    path = os.path.join(workdir, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(workdir, "chain_metrics.json"), "w") as f:
        json.dump({"final": results, "seconds": timings}, f, indent=2, sort_keys=True)
    return path


def _plot_stage_losses(workdir: str, histories: dict) -> str | None:
    """Each stage's loss curve, one panel per stage (their losses are not on one scale)."""
    plt = pyplot(required=False)
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
    return save_plot(fig, None, os.path.join(workdir, "loss_by_stage.png"), dpi=100)


def _plot_by_version(workdir: str, table: dict, versions: list[str]) -> str | None:
    plt = pyplot(required=False)
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
    return save_plot(fig, ax, os.path.join(workdir, "by_version.png"), grid=False, dpi=100)
