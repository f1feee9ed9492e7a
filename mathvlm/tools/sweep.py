"""Sweeps: one recipe, a grid over one of its args or config keys, N seeds per grid point, one run (and
workdir) per point and seed, and statistics over seeds and held-out items.

  python -m mathvlm.tools.sweep --config configs/ablations/complexity_ratio.py[:arg] [--print | --run | --collect]
      [--workdir DIR] [--steps N] [--seeds N] [--shard I/N] [--baseline VALUE] [--metric LABEL]
      [--override KEY=VALUE ...] [--force]

A sweep config is a recipe config with a ``sweep`` group: ``base`` (the recipe spec, relative to the
repository root); ``axis``: a recipe arg of ``base`` (``ratio``: point ``v`` runs ``--config=<base>,ratio=<v>``)
or, if it contains a ``.``, a key of the base config (``optim.lr``: point ``v`` adds ``--config.optim.lr=<v>``,
a string as written, another value as its ``repr`` such as ``(1.0, 0.0)``; key and values are checked
first); ``values``; ``workdir``; ``overrides`` (``key=value``: ``--config.key=value`` on every run);
``seeds`` (default 1; ``--seeds``): runs per point, run ``k`` with ``--config.seed=<seed + k>`` (the base
config's seed after the overrides; it seeds model init and data stream); ``baseline`` (default the first
value; ``--baseline``); ``label`` (default ``engine``; ``--metric``): the evaluator whose per-item
``<run>/<label>_responses.jsonl`` (else its logged ``<label>/...`` metrics) is summarised. Runs live in
``<workdir>/<axis>_<value>`` with one seed (as before: older sweeps resume), else ``<axis>_<value>_s<k>``.

``--print`` (the default) prints one launch command per run; ``--run`` runs them here in turn (a run
whose metrics reach its last step is not rerun unless ``--force``; an interrupted one resumes from its
checkpoint); ``--shard I/N`` (1-based) keeps the runs at 0-based positions ≡ I−1 (mod N) of the
``--print`` order, so N cluster jobs ``--run --shard 1/N`` … ``--shard N/N`` split the grid and
``--collect`` then reads every run. ``--run`` (without ``--shard``) and ``--collect`` write to the
workdir ``results.csv`` (every metric's last value, one row per run, with its seed),
``results_summary.csv`` (per point and group — all, each version, each complexity level —: accuracy
over seeds and items with its 95% bootstrap interval and the paired test against the baseline, see
:mod:`mathvlm.stats`), ``results.md`` (tables, and in words which differences are significant: p < 0.05
and the interval of the difference, seeds resampled too, excludes 0) and ``results.png`` (accuracy per point, 95% error bars). ``--steps N`` shortens every run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np

from mathvlm import config as mc
from mathvlm import stats

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Metric prefixes under the evaluator label (results.csv has every metric), and the realised level mix.
ACCURACY, VERSION, COMPLEXITY, LEVEL_MIX = "accuracy", "version/", "complexity/", "data/level_"


def load_sweep(spec: str):
    """The sweep config of ``spec`` and its ``sweep`` group, checked."""
    config = mc.load(spec)
    sweep = config.get("sweep", None)
    if sweep is None:
        raise mc.ConfigError(f"{spec}: the config has no 'sweep' group (base, axis, values, workdir, "
                             "overrides); see configs/ablations/complexity_ratio.py")
    missing = [k for k in ("base", "axis", "values", "workdir") if k not in sweep]
    if missing or not sweep["values"]:
        raise mc.ConfigError(f"{spec}: sweep group lacks {missing or ['values']}")
    return config, sweep


def option(sweep, key: str, given=None, default=None):
    """A sweep option: the command line's ``given``, else the group's ``key`` (None/"" = unset), else default."""
    for value in (given, sweep.get(key, None), default):
        if value not in (None, ""):
            return value
    return default


def value_text(value) -> str:
    """A grid value as command-line text: strings as written, other values as their repr (``(480,)``),
    which ``--config.key=...`` parses back (mathvlm.config.override)."""
    return value if isinstance(value, str) else repr(value)


def point_name(axis: str, value) -> str:
    """A folder name for grid point ``value`` (``ratio=2:3:4:1`` → ``ratio_2-3-4-1``; a tuple ``(1.0, 0.0)``
    or the text ``"(1.0, 0.0)"`` → ``_1.0-0.0``): outer brackets go, and each run of characters other than
    letters, digits, ``.`` and ``-`` becomes one ``-``."""
    text = "-".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value).strip("()[] ")
    return f"{axis}_{re.sub(r'[^A-Za-z0-9.-]+', '-', text)}"


def shard(runs: list[dict], text: str | None) -> list[dict]:
    """The runs of job ``I`` of ``N`` for ``text`` ``"I/N"`` (1-based): 0-based position ≡ I − 1 (mod N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if text is not None and (not match or not 1 <= int(match[1]) <= int(match[2])):
        raise mc.ConfigError(f"--shard {text!r}: give I/N with 1 ≤ I ≤ N (1-based), e.g. --shard 1/4 … "
                             "--shard 4/4 for 4 jobs")
    return runs if text is None else [r for i, r in enumerate(runs) if i % int(match[2]) == int(match[1]) - 1]


def _base_path(base: str) -> str:
    """The base spec with an absolute path (runs start in the repository root, the user anywhere)."""
    path, arg = mc.split_spec(base)
    if not os.path.isabs(path):
        path = os.path.join(ROOT, path)
    return path if arg is None else f"{path}:{arg}"


def _accepts_steps(spec: str) -> bool:
    """Whether the recipe takes a ``steps`` arg (so warm-up and schedule follow the shorter run)."""
    try:
        mc.load(spec + ",steps=1" if ".py:" in spec else spec + ":steps=1")
    except mc.ConfigError as e:
        if "unknown config arg 'steps'" in str(e):
            return False
        raise
    return True


def _checked_base(spec: str, axis: str, values, overrides: list[str]):
    """The base config (overrides applied), with the config-key ``axis`` and each of ``values`` checked."""
    config = mc.load(spec)
    for item in overrides:
        mc.override(config, *item.split("=", 1))
    if "." in axis:
        for value in values:
            try:
                mc.override(copy.deepcopy(config), axis, value_text(value))
            except mc.ConfigError as e:
                raise mc.ConfigError(f"sweep axis {axis!r} (a config key, as it contains '.') with value "
                                     f"{value_text(value)!r}: {e}") from None
    return config


def plan(sweep, *, workdir: str | None = None, steps: int = 0, overrides=(), seeds: int = 0) -> list[dict]:
    """One ``{"name", "point", "value", "seed", "spec", "workdir", "command"}`` per run: per grid point
    (in ``values`` order) ``seeds`` runs (default: the group's ``seeds``, else 1). ``seed`` is the
    ``--config.seed`` given to the run (None with one seed: the recipe's own)."""
    workdir = os.path.abspath(workdir or sweep["workdir"])
    base, axis, values = _base_path(sweep["base"]), sweep["axis"], tuple(sweep["values"])
    seeds = int(option(sweep, "seeds", seeds or None, 1))
    if seeds < 1:
        raise mc.ConfigError(f"seeds={seeds}: give at least 1 run per grid point")
    pairs = [str(o) for o in tuple(sweep.get("overrides", ())) + tuple(overrides)]
    bad = [o for o in pairs if "=" not in o]
    if bad:
        raise mc.ConfigError(f"overrides {bad} are not KEY=VALUE")
    extra = [f"--config.{o}" for o in pairs]
    steps_by_arg = bool(steps) and _accepts_steps(base)
    by_key = "." in axis

    def with_arg(spec: str, arg: str) -> str:
        return f"{spec}{',' if '.py:' in spec else ':'}{arg}"

    first_seed = 0
    if by_key or seeds > 1:
        spec = base if by_key else with_arg(base, f"{axis}={values[0]}")
        config = _checked_base(with_arg(spec, f"steps={steps}") if steps_by_arg else spec, axis, values, pairs)
        first_seed = int(config.seed)
    runs = []
    for value in values:
        spec, point_extra = (base, [f"--config.{axis}={value_text(value)}"]) if by_key else \
            (with_arg(base, f"{axis}={value}"), [])
        if steps_by_arg:
            spec = with_arg(spec, f"steps={steps}")
        point = point_name(axis, value)
        for k in range(seeds):
            name = point if seeds == 1 else f"{point}_s{k}"
            run_dir = os.path.join(workdir, name)
            command = [sys.executable, "-m", "mathvlm.main", f"--config={spec}", f"--workdir={run_dir}",
                       *extra, *point_extra]
            if steps and not steps_by_arg:
                command.append(f"--config.train.steps={steps}")
            seed = None if seeds == 1 else first_seed + k
            if seed is not None:
                command.append(f"--config.seed={seed}")
            runs.append({"name": name, "point": point, "value": value_text(value), "seed": seed, "spec": spec,
                         "workdir": run_dir, "command": command})
    names = [r["point"] for r in runs[::seeds]]
    if len(set(names)) != len(names):
        raise mc.ConfigError(f"sweep values {list(values)} give clashing run names {names}")
    return runs


def _run_config(run_dir: str) -> dict:
    """The run's config.json ({} before it starts)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def finished(run_dir: str) -> bool:
    """The run logged its last step (config.json's train.steps)."""
    from mathvlm.train.metrics import final_metrics  # (lazy: the sweep's own process needs no JAX)

    total = _run_config(run_dir).get("train", {}).get("steps")
    return total is not None and final_metrics(run_dir)[0].get("step", -1) >= total


def run_all(runs: list[dict], *, force: bool = False) -> list[dict]:
    """Run each point's command in turn (output in ``<run>/log.txt``); returns per-run status rows."""
    statuses = []
    for i, run in enumerate(runs, 1):
        os.makedirs(run["workdir"], exist_ok=True)
        if finished(run["workdir"]) and not force:
            print(f"[{i}/{len(runs)}] {run['name']}: finished earlier, not rerun", flush=True)
            statuses.append({"name": run["name"], "status": "done", "seconds": ""})
            continue
        log = os.path.join(run["workdir"], "log.txt")
        print(f"[{i}/{len(runs)}] {run['name']}: {shlex.join(run['command'][1:])}  (log: {log})", flush=True)
        start = time.perf_counter()
        with open(log, "a") as f:
            code = subprocess.call(run["command"], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        seconds = time.perf_counter() - start
        status = "done" if code == 0 else f"failed (exit {code})"
        if code:
            with open(log) as f:
                tail = f.readlines()[-15:]
            print(f"    {status} after {seconds:.0f}s; end of {log}:\n" + "".join("    " + t for t in tail),
                  flush=True)
        else:
            print(f"    done in {seconds:.0f}s", flush=True)
        statuses.append({"name": run["name"], "status": status, "seconds": round(seconds, 1)})
    return statuses


def read_responses(run_dir: str, label: str) -> dict | None:
    """``{(id, version, n): (correct, version, complexity)}`` from ``<run>/<label>_responses.jsonl``
    (``n`` numbers repeats of an (id, version) pair); None when the run wrote no such file."""
    path = os.path.join(run_dir, f"{label}_responses.jsonl")
    if not os.path.exists(path):
        return None
    out, repeats = {}, {}
    try:
        with open(path) as f:
            for row in (json.loads(line) for line in f if line.strip()):
                key = (str(row.get("id")), str(row.get("version")))
                repeats[key] = repeats.get(key, -1) + 1
                out[(*key, repeats[key])] = (float(bool(row["correct"])), row.get("version"), row.get("complexity"))
    except (ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: not one response row with 'correct' a line ({e!r})") from None
    return out


def _groups(items: dict) -> dict[str, list[int]]:
    """Column indices per group: all, each version (sorted), each complexity level (numeric order)."""
    groups: dict[str, list[int]] = {"all": list(range(len(items)))}
    for prefix, field in ((VERSION, 1), (COMPLEXITY, 2)):
        found: dict = {}
        for column, info in enumerate(items.values()):
            if info[field] is not None:
                found.setdefault(info[field], []).append(column)
        for value in sorted(found, key=lambda v: (isinstance(v, str), v if isinstance(v, str) else float(v))):
            groups[f"{prefix}{value}"] = found[value]
    return groups


def _row(value, group, seeds, items="", accuracy="", lo="", hi="", source="responses") -> dict:
    return {"value": value, "group": group, "seeds": seeds, "items": items, "accuracy": accuracy, "lo": lo,
            "hi": hi, "diff": "", "diff_lo": "", "diff_hi": "", "p": "", "p_holm": "", "significant": "",
            "significant_holm": "", "source": source}


def summarize(runs: list[dict], baseline: str, label: str = "engine") -> tuple[list[dict], dict]:
    """Per grid point and group, over the point's finished runs: accuracy and its 95% interval
    (:func:`mathvlm.stats.bootstrap_interval`) on the items common to every responses file; against
    ``baseline`` the paired difference, interval, p (:func:`mathvlm.stats.paired_test`) and Holm's p over
    the points compared. A point without responses files: the mean of its logged ``<label>/...`` metrics.
    Returns the rows and facts: ``items``, ``seeds`` per point, ``fallback`` points, ``dropped``."""
    from mathvlm.train.metrics import final_metrics

    points: dict[str, dict] = {}
    for run in runs:
        point = points.setdefault(run["value"], {"runs": [], "responses": []})
        if finished(run["workdir"]):
            point["runs"].append(run)
            point["responses"].append(read_responses(run["workdir"], label))
    full = {v: p["responses"] for v, p in points.items() if p["runs"] and None not in p["responses"]}
    first = next(iter(full.values()), [{}])[0]
    common = set(first).intersection(*(r for rs in full.values() for r in rs))
    ordered = [k for k in first if k in common]
    groups = _groups({k: first[k] for k in ordered})
    matrix = {v: np.array([[r[k][0] for k in ordered] for r in rs]).reshape(len(rs), -1) for v, rs in full.items()}
    rows = []
    for value, point in points.items():
        if value in full and ordered:
            for group, columns in groups.items():
                x = matrix[value][:, columns]
                rows.append(_row(value, group, len(x), len(columns), *stats.bootstrap_interval(x)))
                if value == baseline:
                    rows[-1]["significant"] = "baseline"
                elif baseline in full:
                    test = stats.paired_test(x, matrix[baseline][:, columns])
                    rows[-1].update(diff=test["diff"], diff_lo=test["lo"], diff_hi=test["hi"], p=test["p"],
                                    significant="yes" if test["significant"] else "no")
        elif point["runs"]:
            logged = [final_metrics(r["workdir"])[0] for r in point["runs"]]
            prefixes = (f"{label}/{VERSION}", f"{label}/{COMPLEXITY}")
            names = sorted({k for m in logged for k in m if k.startswith(prefixes)})
            for name in [f"{label}/{ACCURACY}"] + names:
                got = [m[name] for m in logged if isinstance(m.get(name), (int, float))]
                group = "all" if name == f"{label}/{ACCURACY}" else name[len(label) + 1:]
                rows.append(_row(value, group, len(got), "", sum(got) / len(got) if got else "", source="metrics"))
    for group in dict.fromkeys(r["group"] for r in rows):
        tested = [r for r in rows if r["group"] == group and r["p"] != ""]
        for row, adjusted in zip(tested, stats.holm([r["p"] for r in tested])):
            holm_yes = stats.significant(adjusted, row["diff_lo"], row["diff_hi"])
            row.update(p_holm=float(adjusted), significant_holm="yes" if holm_yes else "no")
    facts = {"items": len(ordered), "seeds": {v: len(p["runs"]) for v, p in points.items()},
             "fallback": [v for v, p in points.items() if p["runs"] and (v not in full or not ordered)],
             "dropped": any(len(r) != len(ordered) for rs in full.values() for r in rs)}
    return rows, facts


def collect(runs: list[dict], workdir: str, axis: str, statuses: list[dict] | None = None, *,
            baseline: str | None = None, label: str = "engine") -> tuple[str, str]:
    """Write ``results.csv`` (every metric, per run), ``results_summary.csv`` (per point and group, see
    :func:`summarize`), ``results.md`` and ``results.png``; returns the paths of results.csv and results.md."""
    from mathvlm.train.metrics import final_metrics

    status_of = {s["name"]: s for s in statuses or []}
    rows = []
    for run in runs:
        metrics, _ = final_metrics(run["workdir"])
        seed = _run_config(run["workdir"]).get("seed", run["seed"])
        state = status_of.get(run["name"], {})
        done = "done" if finished(run["workdir"]) else "unfinished" if metrics else "missing"
        rows.append({"name": run["name"], axis: run["value"], "seed": "" if seed is None else seed,
                     "status": state.get("status", done), "seconds": state.get("seconds", ""), **metrics})
    keys = list(dict.fromkeys(k for row in rows for k in row))
    fixed = ["name", axis, "seed", "status", "seconds", "step", "loss", f"{label}/{ACCURACY}"]
    os.makedirs(workdir, exist_ok=True)
    csv_path = os.path.join(workdir, "results.csv")
    _write_csv(csv_path, rows, [k for k in fixed if k in keys] + sorted(k for k in keys if k not in fixed))
    baseline = runs[0]["value"] if baseline is None else baseline
    summary, facts = summarize(runs, baseline, label)
    _write_csv(os.path.join(workdir, "results_summary.csv"),
               [{axis: r["value"], **r} for r in summary], [axis] + list(_row("", "", 0))[1:])
    md_path = os.path.join(workdir, "results.md")
    with open(md_path, "w") as f:
        f.write(report(rows, summary, facts, axis, baseline, label))
    plot(summary, axis, os.path.join(workdir, "results.png"), baseline)
    return csv_path, md_path


def _write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _pct(value) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else ""


def _interval(row: dict, keys=("accuracy", "lo", "hi"), sign: str = "") -> str:
    """``"41.7 [33.3, 50.0]"`` (percent or percentage points)."""
    mean, lo, hi = (row[k] for k in keys)
    if mean == "":
        return ""
    return f"{100 * mean:{sign}.1f}" + (f" [{100 * lo:{sign}.1f}, {100 * hi:{sign}.1f}]" if lo != "" else "")


def report(rows: list[dict], summary: list[dict], facts: dict, axis: str, baseline: str, label: str) -> str:
    """results.md: the runs; the realised level mix; accuracy over seeds with intervals and the paired tests
    against the baseline, and in words which differences are significant; the same per group."""
    lines = ["# Sweep results", "", f"| {axis} | seed | status | step | final loss | held-out accuracy (%) |",
             "|---|---:|---|---:|---:|---:|"]
    for row in rows:
        loss = row.get("loss")
        lines.append(f"| {row[axis]} | {row['seed']} | {row['status']} | {row.get('step', '')} | "
                     f"{f'{loss:.4f}' if isinstance(loss, float) else ''} | {_pct(row.get(f'{label}/{ACCURACY}'))} |")
    mix = sorted({k for row in rows for k in row if k.startswith(LEVEL_MIX)})
    if mix:
        lines += ["", "## Realised training mix (% of rows per complexity level)", "",
                  f"| {axis} | seed | " + " | ".join(k[len(LEVEL_MIX):] for k in mix) + " |",
                  "|---|---:" + "|---:" * len(mix) + "|"]
        lines += [f"| {row[axis]} | {row['seed']} | " + " | ".join(_pct(row.get(k)) for k in mix) + " |"
                  for row in rows]
    lines += ["", f"## Statistics: each {axis} against the baseline {axis}={baseline}", "",
              f"Held-out evaluator `{label}`: {facts['items']} items, the same for every run; finished runs (seeds) "
              f"per point: {', '.join(f'{v}: {n}' for v, n in facts['seeds'].items())}. Accuracy: mean over seeds "
              f"and items, with a 95% percentile bootstrap interval ({stats.RESAMPLES:,} resamples of the items "
              "and, independently, of the seeds). Test: paired sign-flip permutation test over the items of d = "
              "per-item accuracy averaged over seeds, point minus baseline (two-sided; exact when at most "
              f"{stats.EXACT_MAX} items differ, else {stats.PERMUTATIONS:,} random sign patterns). The test holds the "
              "trained models fixed; the interval of the difference also resamples the seeds. Significant when "
              f"p < {stats.ALPHA} and the 95% interval of the difference excludes 0 (a difference the spread "
              "between seeds explains is not significant). Holm p adjusts for the points compared with the "
              "baseline (Holm-significant: Holm p < 0.05 and the interval excludes 0)."]
    if facts["dropped"]:
        lines.append(f"\nSome runs answered other held-out items: only the {facts['items']} common to all count.")
    for value in facts["fallback"]:
        lines.append(f"\n{axis}={value}: no per-item `{label}_responses.jsonl` in its runs; its accuracy is the mean "
                     f"of the logged `{label}/...` metrics over seeds: intervals and tests are unavailable.")
    lines += ["", f"| {axis} | seeds | items | accuracy (%) [95% interval] | difference (pp) [95% interval] | p | "
              "Holm p | significant |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    words = []
    for row in summary:
        p, holm = (f"{row[k]:.4g}" if row[k] != "" else "" for k in ("p", "p_holm"))
        diff, yes, base = _interval(row, ("diff", "diff_lo", "diff_hi"), "+"), row["significant"] == "yes", \
            row["significant"] == "baseline"
        if row["group"] == "all":
            lines.append(f"| {row['value']}{' (baseline)' * base} | {row['seeds']} | {row['items']} | "
                         f"{_interval(row)} | {diff} | {p} | {holm} | {'' if base else row['significant']} |")
        if p and (row["group"] == "all" or yes):
            verdict = f"significantly {'higher' if row['diff'] > 0 else 'lower'} than" if yes else \
                "not significantly different from"
            why = "" if yes or row["p"] >= stats.ALPHA else ", but the interval includes 0: the spread between " \
                "seeds explains it"
            words.append(f"- {axis}={row['value']}{'' if row['group'] == 'all' else ' on ' + row['group']} is "
                         f"{verdict} the baseline: {diff} pp, p = {p} ({'<' if row['p'] < stats.ALPHA else '≥'} "
                         f"0.05{why}; Holm p = {holm}).")
    lines += ["", "In words (overall, and each group where a difference is significant):", ""]
    lines += words or ["- No paired test: the baseline or the others lack per-item responses."]
    groups = [g for g in dict.fromkeys(r["group"] for r in summary) if g != "all"]
    if groups:
        by = {(r["value"], r["group"]): r for r in summary}
        lines += ["", "## Held-out accuracy (%) by MathVerse version and by complexity level: mean over seeds "
                  "[95% interval], * where the difference from the baseline is significant", "",
                  f"| {axis} | " + " | ".join(groups) + " |", "|---" + "|---:" * len(groups) + "|"]
        for value in dict.fromkeys(r["value"] for r in summary):
            cells = [(_interval(by[value, g]) + " *" * (by[value, g]["significant"] == "yes")) if (value, g) in by
                     else "" for g in groups]
            lines.append(f"| {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], axis: str, path: str, baseline: str) -> str | None:
    """``results.png``: accuracy (%) per point with 95% error bars, overall and per complexity level."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend, renders with Agg
    except ImportError:
        print(f"note: matplotlib is not installed; no {path}")
        return None
    values = list(dict.fromkeys(r["value"] for r in summary))
    if not values:
        return None
    levels = [g for g in dict.fromkeys(r["group"] for r in summary) if g.startswith(COMPLEXITY)]
    fig = Figure(figsize=(5 + 5 * bool(levels), 3.8), layout="constrained")
    for ax, groups in zip(fig.subplots(1, 1 + bool(levels), squeeze=False)[0], (["all"], levels)):
        for offset, group in enumerate(groups):
            rows = [(i, r) for i, v in enumerate(values) for r in summary
                    if r["value"] == v and r["group"] == group and r["accuracy"] != ""]
            shift = 0.6 * (offset - (len(groups) - 1) / 2) / len(groups)
            mean = np.array([100 * r["accuracy"] for _, r in rows])
            bounds = np.array([[100 * r[k] if r[k] != "" else m for k in ("lo", "hi")]
                               for (_, r), m in zip(rows, mean)])
            ax.errorbar([i + shift for i, _ in rows], mean, yerr=np.abs(bounds.T.reshape(2, -1) - mean), fmt="o",
                        capsize=4, label=group.replace("/", " "))
        ax.set_xticks(range(len(values)), [f"{v}*" if v == baseline else v for v in values], rotation=20)
        ax.set(xlabel=f"{axis} (* baseline)", ylabel="held-out accuracy (%), 95% interval",
               title="overall" if groups == ["all"] else "per complexity level")
        if len(groups) > 1:
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathvlm.tools.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="sweep config, e.g. configs/ablations/complexity_ratio.py")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true", help="print the launch commands (default)")
    mode.add_argument("--run", action="store_true", help="run every point here, then collect results")
    mode.add_argument("--collect", action="store_true", help="only collect the results of runs made elsewhere")
    parser.add_argument("--workdir", help="sweep folder (default: the config's sweep.workdir)")
    parser.add_argument("--steps", type=int, default=0, help="train steps of every run (default: the recipe's)")
    parser.add_argument("--seeds", type=int, default=0, help="runs per grid point (default: sweep.seeds, else 1)")
    parser.add_argument("--shard", metavar="I/N", help="--print/--run only the runs of job I of N (1-based)")
    parser.add_argument("--baseline", help="the grid value tested against (default: sweep.baseline, else the first)")
    parser.add_argument("--metric", help="evaluator label summarised (default: sweep.label, else engine)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="--config.KEY=VALUE for every run (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun points that finished earlier")
    args = parser.parse_args(argv)
    try:
        if args.seeds < 0:
            raise mc.ConfigError(f"--seeds {args.seeds}: give at least 1")
        if args.shard and args.collect:
            raise mc.ConfigError("--shard picks the runs to print or run; --collect reads every run")
        _, sweep = load_sweep(args.config)
        runs = plan(sweep, workdir=args.workdir, steps=args.steps, overrides=args.override, seeds=args.seeds)
        mine = shard(runs, args.shard)
        baseline, values = value_text(option(sweep, "baseline", args.baseline, sweep["values"][0])), \
            list(dict.fromkeys(r["value"] for r in runs))
        if baseline not in values:
            raise mc.ConfigError(f"baseline {baseline!r} is not one of the sweep values {values}")
    except (mc.ConfigError, FileNotFoundError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    label = option(sweep, "label", args.metric, "engine")
    workdir = os.path.abspath(args.workdir or sweep["workdir"])
    if not (args.run or args.collect):
        argv = list(sys.argv[1:] if argv is None else argv)
        again = [a for i, a in enumerate(argv) if a not in ("--print", "--shard") and argv[i - 1] != "--shard"
                 and not a.startswith("--shard=")]
        print(f"# from the repository root ({ROOT}): {len(mine)} of {len(runs)} runs; then: "
              f"{shlex.join(['python', '-m', 'mathvlm.tools.sweep', *again, '--collect'])}")
        for run in mine:
            print(shlex.join(["python"] + run["command"][1:]).replace(ROOT + os.sep, ""))
        return 0
    statuses = run_all(mine, force=args.force) if args.run else None
    code = 0 if all(s["status"] == "done" for s in statuses or ()) else 1
    if args.shard:  # other jobs may still be running: one --collect at the end reads every run
        print(f"shard {args.shard} finished; collect every shard with --collect (no --shard)")
        return code
    csv_path, md_path = collect(runs, workdir, sweep["axis"], statuses, baseline=baseline, label=label)
    with open(md_path) as f:
        print(f.read())
    print(f"results: {csv_path}, {md_path}, {os.path.join(workdir, 'results_summary.csv')}")
    if not any(os.path.isdir(r["workdir"]) for r in runs):
        print(f"note: no run folder under {workdir}: were the runs made with another --seeds or --workdir?")
    return code


if __name__ == "__main__":
    sys.exit(main())
