"""Run summary: ``summary.md`` (final metrics table) and ``loss.png`` (curves of every loss term)
written to the workdir from ``metrics.jsonl``."""

from __future__ import annotations

import os

from mathvlm.train.metrics import read_metrics


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (runs have no display)."""
    import matplotlib

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


def save_plot(fig, ax, path: str, legend_size: int = 8) -> str:
    """Grid, legend, tight layout; write ``path`` and free the figure."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path)
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
