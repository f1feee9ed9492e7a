"""Sweeps: one recipe, a grid over one of its args, one run (and workdir) per grid point.

  python -m mathvlm.sweep --config configs/ablations/complexity_ratio.py[:arg] [--print | --run | --collect]
      [--workdir DIR] [--steps N] [--override KEY=VALUE ...] [--force]

A sweep config is an ordinary recipe config with a ``sweep`` group: ``base`` (the recipe spec, relative to
the repository root), ``axis`` (the recipe arg the grid varies), ``values``, ``workdir`` and
``overrides`` (``key=value``, given to every run as ``--config.key=value``). Grid point ``v`` runs
``python -m mathvlm.main --config=<base>,<axis>=<v> --workdir=<workdir>/<axis>_<v>``.

``--print`` (the default) prints the launch commands, one per line, for a cluster or by hand; ``--run``
runs them here one after another (a run whose metrics already reach its last step is not rerun unless
``--force``; an interrupted one resumes from its checkpoint) and ``--collect`` only reads runs made
elsewhere; both then collect the last logged value of every
metric of each run into ``<workdir>/results.csv`` and ``<workdir>/results.md`` (accuracy overall, per
MathVerse version and per complexity level of the engine's held-out evaluator, and the realised level
mix). ``--steps N`` shortens every run (the recipe's ``steps`` arg, or ``train.steps``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time

from mathvlm import config as mc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Columns of results.md, by metric-name prefix (results.csv has every metric).
ACCURACY, VERSION, COMPLEXITY, LEVEL_MIX = "engine/accuracy", "engine/version/", "engine/complexity/", "data/level_"


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


def point_name(axis: str, value) -> str:
    """A folder name for grid point ``value`` (``ratio=2:3:4:1`` → ``ratio_2-3-4-1``)."""
    text = "".join(c if c.isalnum() or c in ".-" else "-" for c in str(value))
    return f"{axis}_{text}"


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


def plan(sweep, *, workdir: str | None = None, steps: int = 0, overrides=()) -> list[dict]:
    """One ``{"name", "value", "spec", "workdir", "command"}`` per grid point."""
    workdir = os.path.abspath(workdir or sweep["workdir"])
    base = _base_path(sweep["base"])
    joiner = "," if ".py:" in base else ":"
    extra = [f"--config.{o}" for o in tuple(sweep.get("overrides", ())) + tuple(overrides)]
    bad = [o for o in extra if "=" not in o]
    if bad:
        raise mc.ConfigError(f"overrides {bad} are not KEY=VALUE")
    steps_by_arg = bool(steps) and _accepts_steps(base)
    runs = []
    for value in sweep["values"]:
        spec = f"{base}{joiner}{sweep['axis']}={value}"
        if steps_by_arg:
            spec += f",steps={steps}"
        name = point_name(sweep["axis"], value)
        run_dir = os.path.join(workdir, name)
        command = [sys.executable, "-m", "mathvlm.main", f"--config={spec}", f"--workdir={run_dir}", *extra]
        if steps and not steps_by_arg:
            command.append(f"--config.train.steps={steps}")
        runs.append({"name": name, "value": str(value), "spec": spec, "workdir": run_dir, "command": command})
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise mc.ConfigError(f"sweep values {list(sweep['values'])} give clashing run names {names}")
    return runs


def final_metrics(run_dir: str) -> dict:
    """Last logged value of every metric of a run ({} when it logged nothing)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    out: dict = {}
    if os.path.exists(path):
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.update(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
    return out


def finished(run_dir: str) -> bool:
    """The run logged its last step (config.json's train.steps)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            total = json.load(f)["train"]["steps"]
    except (OSError, KeyError, ValueError):
        return False
    return final_metrics(run_dir).get("step", -1) >= total


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


def collect(runs: list[dict], workdir: str, axis: str, statuses: list[dict] | None = None) -> tuple[str, str]:
    """Write ``results.csv`` (every metric) and ``results.md`` (accuracy tables); returns both paths."""
    status_of = {s["name"]: s for s in statuses or []}
    rows = []
    for run in runs:
        metrics = final_metrics(run["workdir"])
        state = status_of.get(run["name"], {})
        rows.append({"name": run["name"], axis: run["value"],
                     "status": state.get("status", "done" if metrics else "missing"),
                     "seconds": state.get("seconds", ""), **metrics})
    keys = list(dict.fromkeys(k for row in rows for k in row))
    fixed = ["name", axis, "status", "seconds", "step", "loss", ACCURACY]
    columns = [k for k in fixed if k in keys] + sorted(k for k in keys if k not in fixed)
    os.makedirs(workdir, exist_ok=True)
    csv_path = os.path.join(workdir, "results.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    md_path = os.path.join(workdir, "results.md")
    with open(md_path, "w") as f:
        f.write(markdown(rows, axis) + "\n")
    return csv_path, md_path


def _pct(value) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else ""


def markdown(rows: list[dict], axis: str) -> str:
    """Tables of held-out accuracy (%) per run: overall and per version; per complexity; level mix."""
    def table(title: str, prefix: str) -> list[str]:
        keys = sorted({k[len(prefix):] for row in rows for k in row if k.startswith(prefix)})
        if not keys:
            return []
        lines = ["", f"## {title}", "", f"| {axis} | " + " | ".join(keys) + " |",
                 "|---" + "|---:" * len(keys) + "|"]
        for row in rows:
            lines.append(f"| {row[axis]} | " + " | ".join(_pct(row.get(prefix + k)) for k in keys) + " |")
        return lines

    lines = ["# Sweep results", "", f"| {axis} | status | step | final loss | held-out accuracy (%) |",
             "|---|---|---:|---:|---:|"]
    for row in rows:
        loss = row.get("loss")
        lines.append(f"| {row[axis]} | {row['status']} | {row.get('step', '')} | "
                     f"{f'{loss:.4f}' if isinstance(loss, float) else ''} | {_pct(row.get(ACCURACY))} |")
    lines += table("Held-out accuracy (%) by MathVerse version", VERSION)
    lines += table("Held-out accuracy (%) by complexity level", COMPLEXITY)
    lines += table("Realised training mix (% of rows per complexity level)", LEVEL_MIX)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathvlm.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="sweep config, e.g. configs/ablations/complexity_ratio.py")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true", help="print the launch commands (default)")
    mode.add_argument("--run", action="store_true", help="run every point here, then collect results")
    mode.add_argument("--collect", action="store_true", help="only collect the results of runs made elsewhere")
    parser.add_argument("--workdir", help="sweep folder (default: the config's sweep.workdir)")
    parser.add_argument("--steps", type=int, default=0, help="train steps of every run (default: the recipe's)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="--config.KEY=VALUE for every run (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun points that finished earlier")
    args = parser.parse_args(argv)
    try:
        _, sweep = load_sweep(args.config)
        runs = plan(sweep, workdir=args.workdir, steps=args.steps, overrides=args.override)
    except (mc.ConfigError, FileNotFoundError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    workdir = os.path.abspath(args.workdir or sweep["workdir"])
    if not (args.run or args.collect):
        print(f"# from the repository root ({ROOT}); then: python -m mathvlm.sweep --config "
              f"{args.config} --collect")
        for run in runs:
            print(shlex.join(["python"] + run["command"][1:]).replace(ROOT + os.sep, ""))
        return 0
    statuses = run_all(runs, force=args.force) if args.run else None
    csv_path, md_path = collect(runs, workdir, sweep["axis"], statuses)
    with open(md_path) as f:
        print(f.read())
    print(f"results: {csv_path}, {md_path}")
    if statuses is None:
        return 0
    return 0 if all(s["status"] == "done" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
