"""Command line for evaluation. No JAX is imported by ``score`` or ``check-data``.

  python -m mathvlm.evaluate score --benchmark {mathvista,math_v,geoqa,we_math} --predictions FILE [--data DIR]
      Re-score a predictions file in the benchmark's official output format with the official rules.
      Prints per-category tables, then as the LAST line one JSON object with correct, total, accuracy.
  python -m mathvlm.evaluate check-data --root DIR
      Load every benchmark folder under DIR (mathvista/, mathverse/, math_v/, we_math/, geoqa/) and print counts.
  python -m mathvlm.evaluate run --config CFG (--checkpoint CKPT | --hf FOLDER) --workdir DIR
                                 [--evaluators JSON] [--step N]
      Build the config's model, load a training checkpoint (a run's workdir: its newest step, or --step N;
      or a ``checkpoints/<step>`` folder) or a transformers folder, run the config's ``eval.evaluators``
      (or the JSON list/dict given) and print a table per evaluator, then as the LAST line one JSON
      object with every metric; also writes DIR/eval_metrics.json and the evaluators' own tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mathvlm.eval import common


def _score(benchmark: str, predictions: str, data: str | None, integer_rule: str) -> dict:
    if benchmark == "mathvista":
        return mathvista_tally(predictions, data, integer_rule).to_dict()
    if benchmark == "math_v":
        from mathvlm.eval import math_v
        if not data:
            raise common.DataError("math_v needs --data DIR holding test.jsonl (the ground truth)")
        return math_v.score_predictions(predictions, data).to_dict()
    if benchmark == "geoqa":
        from mathvlm.eval import geoqa
        if not data:
            raise common.DataError("geoqa needs --data DIR holding test_answers.jsonl (the ground truth)")
        return geoqa.score_predictions(predictions, data).to_dict()
    if benchmark == "we_math":
        from mathvlm.eval import we_math
        metrics = we_math.score_results(
            predictions, os.path.join(data, "testmini.json") if data else None)
        overall = {k: metrics.pop(k) for k in ("correct", "total", "accuracy")}
        return {"overall": overall, **metrics}
    raise ValueError(benchmark)


def mathvista_tally(predictions: str, data: str | None, integer_rule: str):
    from mathvlm.eval import mathvista
    return mathvista.score_results(predictions, data, integer_rule=integer_rule)


def check_data(root: str) -> dict:
    """Counts per benchmark folder present under root; raises DataError on a malformed file."""
    from mathvlm.eval import geoqa, math_v, mathverse, mathvista, we_math

    counts: dict[str, dict] = {}
    folder = os.path.join(root, "mathvista")
    if os.path.isdir(folder):
        problems = mathvista.load_testmini(folder)
        images = sum(os.path.exists(os.path.join(folder, p["image"])) for p in problems.values())
        counts["mathvista"] = {"testmini": len(problems), "multi_choice": sum(
            p["question_type"] == "multi_choice" for p in problems.values()), "images_present": images}
    folder = os.path.join(root, "mathverse")
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                records = mathverse.load_problems(os.path.join(folder, name))
                by_version: dict[str, int] = {}
                for r in records:
                    by_version[r["problem_version"]] = by_version.get(r["problem_version"], 0) + 1
                counts[f"mathverse/{name}"] = {"records": len(records), **by_version}
    folder = os.path.join(root, "math_v")
    if os.path.isdir(folder):
        for name in ("testmini.jsonl", "test.jsonl"):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                problems = math_v.load_problems(path)
                counts[f"math_v/{name}"] = {
                    "records": len(problems), "multiple_choice": sum(bool(p["options"]) for p in problems.values()),
                    "images_present": sum(os.path.exists(os.path.join(folder, p["image"])) for p in problems.values())}
    folder = os.path.join(root, "we_math")
    if os.path.isdir(folder):
        records = we_math.load_problems(os.path.join(folder, "testmini.json"))
        counts["we_math"] = {"records": len(records), "problems": len({(r["key"][:6], r["ID"]) for r in records}),
                             "images_present": sum(os.path.exists(os.path.join(folder, r["image_path"]))
                                                   for r in records)}
    folder = os.path.join(root, "geoqa")
    if os.path.isdir(folder):
        counts["geoqa"] = {"test": len(geoqa.load_problems(folder))}
    return counts


def _evaluator_specs(config, override: str | None) -> list[dict]:
    if override is None:
        specs = [dict(spec) for spec in config.eval.evaluators]
        if not specs:
            raise ValueError("the config has no eval.evaluators; add some or pass --evaluators "
                             "'[{\"name\": \"text_math\"}]'")
        return specs
    try:
        specs = json.loads(override)
    except json.JSONDecodeError as e:
        raise ValueError(f"--evaluators is not JSON ({e}); e.g. '[{{\"name\": \"engine_heldout\", "
                         f"\"num_examples\": 8}}]'") from None
    specs = [specs] if isinstance(specs, dict) else specs
    if not isinstance(specs, list) or not all(isinstance(x, dict) and "name" in x for x in specs):
        raise ValueError("--evaluators must be a JSON object or list of objects, each with a \"name\"")
    return specs


def _checkpoint_location(checkpoint: str, step: int | None) -> str:
    """The folder ``load_from_checkpoint`` reads: the newest step of a workdir, or step ``step``."""
    if step is None:
        return checkpoint
    for candidate in (os.path.join(checkpoint, "checkpoints", str(step)), os.path.join(checkpoint, str(step))):
        if os.path.isdir(os.path.join(candidate, "state")):
            return candidate
    folder = os.path.join(checkpoint, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []
    raise FileNotFoundError(f"--step {step}: no {checkpoint}/checkpoints/{step}/state; saved steps there: "
                            f"{steps or 'none'}")


def load_model(config, *, checkpoint: str | None = None, hf: str | None = None, step: int | None = None):
    """``(model, {"source", "step"})``: the config's model as the trainer builds it (transformers
    start, LoRA adapters), with its parameters from a training checkpoint, or a transformers folder."""
    from mathvlm import sharding
    from mathvlm.train.build import hf_options, init_model
    from mathvlm.train.init import checkpoint_state_dir

    mesh, rules = sharding.make_mesh(config.mesh), config.sharding.rules
    if hf:
        from mathvlm import hf as hf_lib

        options = hf_options(config.model) if config.model.name == "hf" else {}
        model = hf_lib.from_pretrained(hf, mesh=mesh, rules=rules, **options)
        return model, {"source": f"hf:{os.path.abspath(hf)}"}
    location = _checkpoint_location(checkpoint, step)
    state_dir, found_step = checkpoint_state_dir(location)
    model = init_model(config, mesh, restore=location)  # every parameter, as the trainer saved them
    return model, {"source": state_dir, "step": found_step}


def run_evaluation(config_spec: str, workdir: str, *, checkpoint: str | None = None, hf: str | None = None,
                   evaluators: str | None = None, step: int | None = None) -> dict:
    """Evaluate a checkpoint or transformers folder with a config's evaluators; returns the metrics."""
    from mathvlm import config as mc
    from mathvlm.train import loop

    config = mc.load(config_spec)
    specs = _evaluator_specs(config, evaluators)
    config.eval.evaluators = specs
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    model, origin = load_model(config, checkpoint=checkpoint, hf=hf, step=step)
    metrics = loop.evaluate(loop.make_evaluators(config, workdir=workdir), model)
    for name in dict.fromkeys(key.split("/")[0] for key in metrics):
        print(f"## {name}\n\n| metric | value |\n|---|---:|")
        for key, value in metrics.items():
            if key.split("/")[0] == name:
                print(f"| {key} | {value:.4f} |")
        print()
    result = {**metrics, **origin}
    with open(os.path.join(workdir, "eval_metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathvlm.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="re-score an official predictions file")
    score.add_argument("--benchmark", required=True, choices=["mathvista", "math_v", "geoqa", "we_math"])
    score.add_argument("--predictions", required=True)
    score.add_argument("--data", help="benchmark folder with the ground truth (required for math_v, geoqa)")
    score.add_argument("--integer-rule", choices=["truncate", "strict"], default="truncate",
                       help="MathVista integers: int(float(x)) as calculate_score.py now, or the stricter int(x)")
    score.add_argument("--workdir", help="also write <benchmark>.md and <benchmark>.json here")
    check = commands.add_parser("check-data", help="load every benchmark folder under --root and print counts")
    check.add_argument("--root", required=True)
    run = commands.add_parser("run", help="generate with a trained model and score with the config's evaluators")
    run.add_argument("--config", required=True, help="the run's config, e.g. configs/text_demo.py:steps=4")
    weights = run.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="a training workdir (newest step) or its checkpoints/<step> folder")
    weights.add_argument("--hf", help="a local transformers folder instead of a training checkpoint")
    run.add_argument("--workdir", required=True, help="where eval_metrics.json and the tables go")
    run.add_argument("--evaluators", help="JSON object or list replacing the config's eval.evaluators")
    run.add_argument("--step", type=int, help="with --checkpoint WORKDIR: this step instead of the newest")
    args = parser.parse_args(argv)

    if args.command == "run":
        from absl import logging

        logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
        try:
            result = run_evaluation(args.config, args.workdir, checkpoint=args.checkpoint, hf=args.hf,
                                    evaluators=args.evaluators, step=args.step)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(json.dumps(result))
        return 0
    try:
        if args.command == "check-data":
            counts = check_data(args.root)
            for name, row in counts.items():
                print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
            print(json.dumps(counts))
            return 0
        results = _score(args.benchmark, args.predictions, args.data, args.integer_rule)
    except common.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(common.markdown_tables(results, title=f"{args.benchmark}: {os.path.basename(args.predictions)}"))
    if args.workdir:
        common.write_tables(results, args.workdir, args.benchmark)
    extra = {k: v for k, v in results.items() if k != "overall" and not isinstance(v, dict)}
    print(json.dumps({**results["overall"], "benchmark": args.benchmark, **extra}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
