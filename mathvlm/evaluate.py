"""Command line for evaluation. No JAX is imported by ``score`` or ``check-data``.

  python -m mathvlm.evaluate score --benchmark {mathvista,math_v,geoqa,we_math,mathverse}
                                   --predictions FILE [--data DIR] [--math-v-rule {official,lenient}]
      Re-score a predictions file in the benchmark's official output format with the official rules
      (mathverse: the local rules of mathvlm.eval.mathverse on each record's ``model_answer``).
      Prints per-category tables, then as the LAST line one JSON object with correct, total, accuracy.
      math_v: the answer is re-extracted from each ``response`` and compared by ``--math-v-rule``:
      ``official`` (default) reproduces MATH-V's evaluation/evaluate.py item by item, quirks included
      (e.g. "120" does not match the option "$120^{\\circ}$"); ``lenient`` normalises LaTeX first
      (degrees, units, $ stripped) and so counts more items correct. See mathvlm.eval.math_v.
  python -m mathvlm.evaluate agreement --benchmark mathvista --predictions FILE [FILE ...] [--data DIR]
                                       [--response-label {response,execution}]
                                       [--judge-url URL --judge-model M --judge-cache DIR --judge-prompt FILE]
      How often our rule-based extraction (mathvlm.eval.local_extraction, no API) agrees with each
      record's stored GPT ``extraction``: raw string agreement, agreement after MathVista's official
      normalisation, and accuracy with either extraction. A table row per file, then a JSON last line.
      --response-label execution: the *_code files, whose GPT extraction was made from the code's output.
      The --judge-* flags (opt-in; network) replace our fallback by MathVista's few-shot GPT extraction
      through an OpenAI-compatible endpoint, cached on disk; failed calls are counted and listed.
  python -m mathvlm.evaluate check-data --root DIR
      Load every benchmark folder under DIR (mathvista/, mathverse/, math_v/, we_math/, geoqa/) and print counts.
  python -m mathvlm.evaluate run --config CFG (--checkpoint CKPT | --hf FOLDER) --workdir DIR
                                 [--data BENCHMARK_DIR] [--evaluators JSON] [--step N]
                                 [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S]
                                 [--stop STRING ...] [--batch-size B] [--shard-timeout SECONDS]
      Build the config's model, load a training checkpoint (a run's workdir: its newest step, or --step N;
      or a ``checkpoints/<step>`` folder) or a transformers folder, run the config's ``eval.evaluators``
      (or the JSON list/dict given) and print a table per evaluator, then as the LAST line one JSON
      object with every metric; also writes DIR/eval_metrics.json, the evaluators' tables and each
      evaluator's per-item responses in its benchmark's output format, DIR/<name>_responses.json[l]
      (mathvista, mathverse, we_math: .json; math_v, geoqa, engine, text_math: .jsonl), which ``score``
      re-scores to the same numbers. --data sets every benchmark evaluator's ``data_dir``; the
      benchmark files (and for the protocol configs every picture) are checked before the model loads.

      The papers' protocols, one command per table row (configs/eval/, each docstring says what matches
      the paper and what differs):
        python -m mathvlm.evaluate run --config configs/eval/<protocol>.py --hf DIR --data DIR --workdir OUT
      with <protocol> math_llava_mathvista, puma_mathvista, puma_mathverse, mavis_mathverse, mavis_geoqa,
      math_v:model=math_llava|puma|puma_deepseek|mavis, we_math:model=... . The prompt, decoding,
      extraction, scoring and sub-scores come from the config; tokenizer, chat template
      (``mathvlm_template`` in config.json; config arg template= when a folder lacks it), image size,
      image tokens and preprocessing from the --hf folder. Besides the files above they write
      OUT/table.md, the paper's row. --data layouts (upstream file names; a missing file or picture is
      an error naming it and this layout):
        mathvista/  testmini.json, query.json, images/<pid>.jpg
        mathverse/  testmini.json (five visual versions), testmini_text_only.json, images/<image>
        math_v/     test.jsonl (or testmini.jsonl), images/<id>.jpg
        we_math/    testmini.json, 2steps/image/*.png, 3steps/image/*.png
        geoqa/      test_questions.jsonl, test_answers.jsonl, test/<question_id>.png (each "image")

      Decoding: greedy with ``config.eval.max_new_tokens`` (32) by default. Each evaluator spec may set
      its own ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed`` (``sample_seed`` for
      engine_heldout and text_math), ``stop`` and ``batch_size``; the flags override them for every
      evaluator (--stop repeatable: each response is cut before the first stop string). Sampling is
      reproducible: item i of an evaluator draws from its own key fold_in(key(seed), i). E.g. the
      papers' protocols: Math-LLaVA on MathVista --temperature 0.2 --max-new-tokens 512; Math-PUMA
      (Qwen2) --temperature 0.1 --top-p 0.8 --max-new-tokens 768; DeepSeek --temperature 0.3 --top-k 40
      --top-p 0.8 --max-new-tokens 2048 --seed 3407.

      As N processes (``launch/multiprocess.py --processes N -- -m mathvlm.evaluate run ...``, or any
      run mathvlm.distributed joins): every process builds the whole model on its own devices
      (``jax.local_devices()``: no collectives while generating) and takes every N-th batch of each
      evaluator's items (process i: batches i::N, the batches one process would make); processes 1..N-1
      write their responses to DIR/eval_shards/ and process 0 waits for them (--shard-timeout, default
      3600 s; DIR must be shared by all processes), merges, scores and writes the same files and
      metrics as one process would (bit for bit when the model's parameters are replicated, as in the
      tiny configs; a mesh that shards them over fewer local devices may round differently).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mathvlm.eval import common


def _score(benchmark: str, predictions: str, data: str | None, integer_rule: str,
           math_v_rule: str = "official") -> dict:
    if benchmark == "mathvista":
        return mathvista_tally(predictions, data, integer_rule).to_dict()
    if benchmark == "math_v":
        from mathvlm.eval import math_v
        if not data:
            raise common.DataError("math_v needs --data DIR holding test.jsonl (the ground truth)")
        return math_v.score_predictions(predictions, data, rule=math_v_rule).to_dict()
    if benchmark == "geoqa":
        from mathvlm.eval import geoqa
        if not data:
            raise common.DataError("geoqa needs --data DIR holding test_answers.jsonl (the ground truth)")
        return geoqa.score_predictions(predictions, data).to_dict()
    if benchmark == "mathverse":
        from mathvlm.eval import mathverse
        return mathverse.score_results(predictions).to_dict()
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


def agreement(predictions: list[str], data: str | None, integer_rule: str, response_label: str = "response",
              judge_options: tuple = (None, None, None, None)) -> int:
    """The ``agreement`` command: a markdown table, then a JSON last line (mathvista.agreement_report)."""
    from mathvlm.eval import mathvista
    table, result, warning = mathvista.agreement_report(predictions, data, integer_rule, response_label,
                                                        judge_options)
    print(table)
    if warning:
        print(warning, file=sys.stderr)
    print(json.dumps(result))
    return 0


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
    from mathvlm.train.warm_start import checkpoint_state_dir

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


# ``evaluate run``'s decoding flags (as argparse names them); each overrides that setting of every evaluator.
GENERATION_FLAGS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "batch_size")


def _apply_generation(config, specs: list[dict], generation: dict) -> list[dict]:
    """Specs with the command line's decoding settings (those not None) set in every generating
    evaluator (overriding its own), and as the run-wide defaults in ``config.eval``."""
    from mathvlm import registry
    from mathvlm.eval.evaluators import ResponseEvaluator

    generation = {k: v for k, v in generation.items() if v is not None}
    unknown = sorted(set(generation) - set(GENERATION_FLAGS))
    if unknown:
        raise ValueError(f"unknown generation settings {unknown}; settings: {sorted(GENERATION_FLAGS)}")
    if not generation:
        return specs
    with config.unlocked():
        for key, value in generation.items():
            config.eval[key] = tuple(value) if key == "stop" else value
    out = []
    for spec in specs:
        spec = dict(spec)
        cls = registry.get("evaluator", spec["name"])
        if isinstance(cls, type) and issubclass(cls, ResponseEvaluator):
            for key, value in generation.items():
                spec[cls.sample_seed_option if key == "seed" else key] = value
        out.append(spec)
    return out


def _run_token(count: int) -> int:
    """A number every process of this run shares (process 0's, broadcast): it marks this run's shard
    files, so files a failed earlier run left in the workdir are never merged."""
    token = int.from_bytes(os.urandom(4), "little") >> 1
    if count == 1:
        return token
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(token)))


def _shard_path(folder: str, tag: str, shard: int, count: int) -> str:
    return os.path.join(folder, f"{tag}.{shard}-of-{count}.jsonl")


def write_shard(folder: str, tag: str, shard: int, count: int, token: int, responses: dict[int, str]) -> str:
    """This process's responses to evaluator ``tag`` (a header line, then ``{"index", "response"}``),
    written under a temporary name and renamed, so a reader never sees half a file."""
    os.makedirs(folder, exist_ok=True)
    path = _shard_path(folder, tag, shard, count)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(json.dumps({"run": token, "evaluator": tag, "shard": shard, "num_shards": count,
                            "responses": len(responses)}) + "\n")
        for index in sorted(responses):
            f.write(json.dumps({"index": index, "response": responses[index]}, ensure_ascii=False) + "\n")
    os.replace(temporary, path)
    return path


def gather_shards(folder: str, tag: str, count: int, token: int, own: dict[int, str], num_items: int,
                  timeout: float, poll: float = 0.2) -> list[str]:
    """Process 0: wait for the shard files of processes 1..count-1 of this run (``token``), merge them
    with its own responses ``own``, and return the responses of every item in order. Raises
    TimeoutError naming the missing files after ``timeout`` seconds."""
    import time

    merged, waiting = dict(own), set(range(1, count))
    deadline = time.monotonic() + timeout
    while waiting:
        for shard in sorted(waiting):
            path = _shard_path(folder, tag, shard, count)
            try:
                with open(path, encoding="utf-8") as f:
                    header = json.loads(f.readline())
                    if header.get("run") != token:
                        continue  # an earlier run's file: this run's replaces it
                    for line in f:
                        row = json.loads(line)
                        merged[int(row["index"])] = row["response"]
            except FileNotFoundError:
                continue
            waiting.discard(shard)
        if waiting:
            if time.monotonic() > deadline:
                missing = [_shard_path(folder, tag, shard, count) for shard in sorted(waiting)]
                raise TimeoutError(
                    f"evaluator {tag}: after {timeout:.0f} s still no responses from process(es) "
                    f"{sorted(waiting)} of {count} (expected {missing}); every process must write to the "
                    "same --workdir (a shared filesystem across hosts) — check the other processes' "
                    "output, or raise --shard-timeout")
            time.sleep(poll)
    if sorted(merged) != list(range(num_items)):
        raise ValueError(f"evaluator {tag}: the processes' responses cover items {len(merged)} of "
                         f"{num_items}; the processes disagree on the items (different data?)")
    return [merged[i] for i in range(num_items)]


def evaluate_split(evaluators, model, *, workdir: str, process: int = 0, count: int = 1, token: int = 0,
                   timeout: float = 3600.0) -> dict[str, float]:
    """Run ``evaluators`` as process ``process`` of ``count``: each generating evaluator's items are
    split by batch (process ``i`` takes batches ``i::count``, the batches one process would make), the
    other processes write their responses to ``<workdir>/eval_shards/``, and process 0 merges them,
    scores and writes the tables and per-item responses: the same files and metrics as one process.
    Evaluators that generate nothing per item (``engine_retrieval``) run whole on process 0. Returns
    the metrics on process 0, ``{}`` on the others."""
    folder = os.path.join(workdir, "eval_shards")
    metrics: dict[str, float] = {}
    for position, evaluator in enumerate(evaluators):
        if not hasattr(evaluator, "respond"):
            if process == 0:
                metrics.update({name: float(value) for name, value in evaluator.run(model)})
            continue
        own = evaluator.respond(model, shard=process, num_shards=count)
        tag = f"{position:02d}_{evaluator.name}"
        if process != 0:
            write_shard(folder, tag, process, count, token, own)
            continue
        responses = gather_shards(folder, tag, count, token, own, evaluator.num_items(), timeout)
        metrics.update({name: float(value) for name, value in evaluator.finish(responses)})
        for shard in range(1, count):
            os.remove(_shard_path(folder, tag, shard, count))
    if process == 0 and os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)
    return metrics


def run_evaluation(config_spec: str, workdir: str, *, checkpoint: str | None = None, hf: str | None = None,
                   evaluators: str | None = None, step: int | None = None, generation: dict | None = None,
                   shard_timeout: float = 3600.0, data: str | None = None) -> dict:
    """Evaluate a checkpoint or transformers folder with a config's evaluators; returns the metrics.

    ``data``: a benchmark folder, every benchmark evaluator's ``data_dir``. A protocol config
    (``configs/eval/``, :mod:`mathvlm.eval.protocols`) takes tokenizer, template, image size and
    preprocessing from the ``hf`` folder and writes its paper-table row to ``workdir/table.md``. The
    benchmark files (and, for the protocols, every picture) are checked before the model loads.

    ``generation``: decoding settings (:data:`GENERATION_FLAGS`) overriding every evaluator's. In a
    multi-process run (:mod:`mathvlm.distributed`) every process builds the whole model on its own
    devices (``jax.local_devices()``) and generates its share of each evaluator's items independently
    (no collectives in generation, so the processes need not run the same batches); process 0 merges
    the shares, scores and writes the files (see :func:`evaluate_split`) and returns the metrics, the
    others ``{"process": i, ...}``."""
    import jax

    from mathvlm import config as mc
    from mathvlm import sharding
    from mathvlm.eval import protocols
    from mathvlm.train import loop

    config = mc.load(config_spec)
    specs = protocols.prepare(config, hf=hf, data=data, specs=_evaluator_specs(config, evaluators))
    specs = _apply_generation(config, specs, generation or {})
    config.eval.evaluators = specs
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    process, count = jax.process_index(), jax.process_count()
    token = _run_token(count)
    built = loop.make_evaluators(config, workdir=workdir if process == 0 else None)
    for evaluator in built:  # a missing benchmark file or picture fails now, not after loading 13B weights
        if hasattr(evaluator, "check_inputs"):
            evaluator.check_inputs()
    with sharding.mesh_devices(jax.local_devices()):
        model, origin = load_model(config, checkpoint=checkpoint, hf=hf, step=step)
    metrics = evaluate_split(built, model, workdir=workdir, process=process, count=count, token=token,
                             timeout=shard_timeout)
    if process != 0:
        return {"process": process, "num_processes": count, **origin}
    for name in dict.fromkeys(key.split("/")[0] for key in metrics):
        print(f"## {name}\n\n| metric | value |\n|---|---:|")
        for key, value in metrics.items():
            if key.split("/")[0] == name:
                print(f"| {key} | {value:.4f} |")
        print()
    result = {**metrics, **origin}
    with open(os.path.join(workdir, "eval_metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = protocols.write_table(config, metrics, workdir)
    if table:
        print(f"## {table}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathvlm.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="re-score an official predictions file")
    score.add_argument("--benchmark", required=True, choices=["mathvista", "math_v", "geoqa", "we_math", "mathverse"])
    score.add_argument("--predictions", required=True)
    score.add_argument("--data", help="benchmark folder with the ground truth (required for math_v, geoqa)")
    score.add_argument("--integer-rule", choices=["truncate", "strict"], default="truncate",
                       help="MathVista integers: int(float(x)) as calculate_score.py now, or the stricter int(x)")
    score.add_argument("--math-v-rule", choices=["official", "lenient"], default="official",
                       help="math_v: MATH-V's evaluate.py exactly (default), or LaTeX-normalising lenient")
    score.add_argument("--workdir", help="also write <benchmark>.md and <benchmark>.json here")
    agree = commands.add_parser("agreement", help="our rule-based extraction vs the stored GPT extraction")
    agree.add_argument("--benchmark", required=True, choices=["mathvista"])
    agree.add_argument("--predictions", required=True, nargs="+", help="official results JSON file(s)")
    agree.add_argument("--data", help="folder with testmini.json filling problem fields the files lack")
    agree.add_argument("--integer-rule", choices=["truncate", "strict"], default="truncate")
    agree.add_argument("--response-label", default="response",
                       help="the field to extract from (upstream --response_label; 'execution' for *_code files)")
    agree.add_argument("--judge-url", help="opt-in: an OpenAI-compatible base URL used where upstream calls GPT")
    agree.add_argument("--judge-model", help="with --judge-url: the model name")
    agree.add_argument("--judge-cache", help="with --judge-url: folder caching every judge reply")
    agree.add_argument("--judge-prompt", help="with --judge-url: a text file with MathVista's few-shot "
                       "extraction prompt (demo_prompt of evaluation/prompts/ext_ans.py)")
    check = commands.add_parser("check-data", help="load every benchmark folder under --root and print counts")
    check.add_argument("--root", required=True)
    run = commands.add_parser("run", help="generate with a trained model and score with the config's evaluators")
    run.add_argument("--config", required=True, help="the run's config, e.g. configs/text_demo.py:steps=4")
    weights = run.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="a training workdir (newest step) or its checkpoints/<step> folder")
    weights.add_argument("--hf", help="a local transformers folder instead of a training checkpoint")
    run.add_argument("--workdir", required=True, help="where eval_metrics.json and the tables go")
    run.add_argument("--data", help="the benchmark's local folder: every benchmark evaluator's data_dir "
                                    "(layouts: see the module docstring)")
    run.add_argument("--evaluators", help="JSON object or list replacing the config's eval.evaluators")
    run.add_argument("--step", type=int, help="with --checkpoint WORKDIR: this step instead of the newest")
    decoding = run.add_argument_group("decoding (each overrides that setting of every evaluator)")
    decoding.add_argument("--max-new-tokens", type=int, help="generation length in tokens")
    decoding.add_argument("--temperature", type=float, help="0 = greedy (the default); > 0 samples")
    decoding.add_argument("--top-p", type=float, help="nucleus sampling: keep the smallest set of this mass")
    decoding.add_argument("--top-k", type=int, help="sample among the k most likely tokens (0 = all)")
    decoding.add_argument("--seed", type=int, help="sampling seed (each item draws from its own key)")
    decoding.add_argument("--stop", action="append", metavar="STRING",
                          help="cut each response before this string (repeatable)")
    decoding.add_argument("--batch-size", type=int, help="prompts generated together")
    run.add_argument("--shard-timeout", type=float, default=3600.0,
                     help="multi-process: seconds process 0 waits for the others' responses (default 3600)")
    args = parser.parse_args(argv)

    if args.command == "run":
        from absl import logging

        from mathvlm import distributed

        logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
        generation = {name: getattr(args, name) for name in GENERATION_FLAGS}
        joined = distributed.initialize_from_env()  # a multi-process run: before any device is used
        try:
            result = run_evaluation(args.config, args.workdir, checkpoint=args.checkpoint, hf=args.hf,
                                    evaluators=args.evaluators, step=args.step, generation=generation,
                                    shard_timeout=args.shard_timeout, data=args.data)
        except (FileNotFoundError, ValueError, TimeoutError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            if joined:
                distributed.shutdown()
        print(json.dumps(result))
        return 0
    try:
        if args.command == "check-data":
            counts = check_data(args.root)
            for name, row in counts.items():
                print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
            print(json.dumps(counts))
            return 0
        if args.command == "agreement":
            return agreement(args.predictions, args.data, args.integer_rule, args.response_label,
                             judge_options=(args.judge_url, args.judge_model, args.judge_cache, args.judge_prompt))
        results = _score(args.benchmark, args.predictions, args.data, args.integer_rule, args.math_v_rule)
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
