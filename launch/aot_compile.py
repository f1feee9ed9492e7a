"""Ahead-of-time compile a recipe's train step for a TPU topology on this (CPU) host, and report
whether it fits: per-chip memory against the chip's HBM, FLOPs and compile time. Needs libtpu, so run
it from the separate TPU environment (``python3 -m venv .venv-tpu && .venv-tpu/bin/pip install -r
requirements-tpu.txt``):

    .venv-tpu/bin/python launch/aot_compile.py --config configs/math_puma/text_sft.py:size=tiny \\
        --topology v5e:2x2 --preset qwen2-7b --batch 16 --seq 2048
    .venv-tpu/bin/python launch/aot_compile.py --config configs/mavis/instruct.py:size=7b \\
        --topology v5litepod-16 --vlm clip-vit-l-14-336:mistral-7b --set mesh.data=1 --set mesh.fsdp=-1
    .venv-tpu/bin/python launch/aot_compile.py --config configs/rl/grpo.py:size=7b \\
        --topology v5p-8 --vlm clip-vit-l-14-336:vicuna-7b

``--topology`` takes Cloud TPU names (``v5p-128``, ``v5litepod-16``) and JAX names (``v5e:2x2``).
Real-size recipes load weights from local transformers folders, which AOT compilation does not need:
``--preset`` swaps the recipe's model for a decoder preset of the same shapes, ``--vlm VISION:DECODER``
for a VLM built from presets the way the LLaVA-format loader builds it (the recipe's LoRA, trainable
parameters, step kind, image size and image-token count are kept). ``--batch`` / ``--seq`` default to
the recipe's. The last line printed is one JSON object; the exit code is 3 when the step does not fit.

A GRPO recipe (``train.step='grpo'``) also compiles its rollout on the same mesh: the KV-cache sampler
over the global batch (``--batch`` completions of ``rl.prompt_len`` prompt tokens, ``rl.max_new_tokens``
new ones), reported as ``rollout_*``; the optimizer state (and a reference copy) stays on the chips
while it runs and counts against its HBM. The step fits when the rollout and the update both fit;
``--seq`` defaults to ``rl.prompt_len + rl.max_new_tokens``, the rollout batch's length.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

# Compiling for a topology touches no TPU, so several compiles may run at once (parallel tests, a sweep
# of topologies); libtpu's one-process lockfile would otherwise abort all but the first.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
# Appended, not prepended: launch/multiprocess.py must not shadow the PyPI package of that name.
if HERE not in sys.path:
    sys.path.append(HERE)

import tpu_topology  # launch/ is not a package: scripts import their neighbours

# Stop token of the abstract rollout: any id compiles the same program.
ROLLOUT_STOP = 2
# Placeholder for a real-size recipe's required hf= folder: AOT reads neither weights nor tokenizer.
NO_WEIGHTS = "/aot-compile/no-weights"
DOES_NOT_FIT = 3


def load_config(spec: str, swap_model: bool):
    """The recipe's config; a real size that insists on ``hf=`` gets a placeholder when the model is
    swapped for presets anyway (nothing reads it: no weights, no data pipeline)."""
    from mathvlm import config as mc

    try:
        return mc.load(spec)
    except mc.ConfigError as e:
        if not (swap_model and "hf=" in str(e)):
            raise
    path, arg = mc.split_spec(spec)
    return mc.load(f"{path}:{arg + ',' if arg else ''}hf={NO_WEIGHTS}")


def vlm_model(spec: str, config, projector: str):
    """``config.model`` for ``--vlm VISION:DECODER``: the VLM the LLaVA-format loader would build
    (LLaVA-1.5 projector, feature layer −2, class / first token dropped), with the recipe's decoder
    options (bf16 compute, f32 master weights, scan, remat) on the decoder only, as the loader applies
    them; checked against the recipe's image size and image-token count."""
    from mathvlm import config as mc
    from mathvlm.models.decoder import DECODER_PRESETS, DecoderConfig
    from mathvlm.models.vit import VIT_PRESETS, ViTConfig
    from mathvlm.models.vlm import VLMConfig

    vision, sep, decoder = spec.partition(":")
    if not sep or vision not in VIT_PRESETS or decoder not in DECODER_PRESETS:
        raise SystemExit(f"--vlm {spec!r}: give VISION:DECODER presets; vision presets: "
                         f"{', '.join(VIT_PRESETS)}; decoder presets: {', '.join(DECODER_PRESETS)}")
    options = decoder_options(config.model)
    vocab = DECODER_PRESETS[decoder]["vocab_size"]
    # The placeholder id only has to be a non-text id: the first one past the vocabulary, as LLaVA-HF.
    fields = {"projector": projector, "feature_layer": -2, "feature_strategy": "drop_first",
              "image_token_id": vocab}
    shapes = VLMConfig(vision=ViTConfig(**VIT_PRESETS[vision]),
                       decoder=DecoderConfig(**DECODER_PRESETS[decoder]), **fields)
    data = config.data
    patch, size = shapes.vision.patch_size, shapes.vision.image_size
    # Same patch grid is what matters (a 378-px image gives SigLIP-384/14 its 27×27 patches).
    if data.get("image_size", size) // patch != size // patch:
        raise SystemExit(f"--vlm {spec}: the recipe's data.image_size={data.image_size} but {vision} "
                         f"takes {size}-px images")
    if data.get("num_image_tokens", shapes.tokens_per_image) != shapes.tokens_per_image:
        raise SystemExit(f"--vlm {spec}: the recipe's data.num_image_tokens={data.num_image_tokens} but "
                         f"{vision} gives {shapes.tokens_per_image} tokens per image")
    return mc.ConfigDict({"name": "vlm", "vision_preset": vision, "decoder_preset": decoder,
                          "decoder": options, "vision": dict(config.model.get("vision", {}) or {}),
                          **fields})


# Options a recipe's model passes to the decoder it builds (the loader's build options).
DECODER_OPTIONS = ("dtype", "param_dtype", "scan_layers", "remat", "attention_impl")


def decoder_options(model) -> dict:
    return {k: v for k, v in model.to_dict().items() if k in DECODER_OPTIONS}


def apply_step_options(config, attention: str, remat: str, vision_remat: str, logits_chunk) -> None:
    """``--attention / --remat / --vision-remat / --logits-chunk`` onto the (possibly swapped) model and
    step: the decoder's options sit at the top of ``config.model`` (decoder_lm, hf) or in its
    ``decoder`` dict (vlm); the tower's in its ``vision`` dict."""
    from mathvlm import config as mc

    model = config.model
    if model.name == "vlm" and "decoder" not in model:
        model.decoder = mc.ConfigDict({})
    decoder = model.decoder if model.name == "vlm" else model
    if attention:
        decoder.attention_impl = attention
    if remat:
        decoder.remat = remat
    if vision_remat and model.name not in ("vlm", "hf"):
        raise SystemExit(f"--vision-remat: model {model.name!r} has no image tower")
    if (attention or vision_remat) and model.name in ("vlm", "hf"):
        vision = dict(model.get("vision", {}) or {})
        if attention:
            vision["attention_impl"] = attention
        if vision_remat:
            vision["remat"] = vision_remat
        model.vision = mc.ConfigDict(vision)
    if logits_chunk is not None:
        config.train.logits_chunk = int(logits_chunk)


def prompt_structs(config, mesh, batch: int) -> dict:
    """Abstract prompt batch of the GRPO rollout (:func:`mathvlm.train.rollout._sample`): ``batch``
    left-padded rows of ``rl.prompt_len`` tokens, their row numbers and (VLM) images."""
    import jax.numpy as jnp

    from mathvlm.train.lowering import batch_struct, image_structs

    rules, length = config.sharding.rules, int(config.rl.prompt_len)
    return {"tokens": batch_struct((batch, length), jnp.int32, mesh, rules),
            "attention_mask": batch_struct((batch, length), jnp.int32, mesh, rules),
            "row": batch_struct((batch,), jnp.uint32, mesh, rules),
            **image_structs(config, batch, mesh)}


def compile_rollout(config, mesh, model_graphdef, model_state, batch: int) -> dict:
    """Lower and compile the GRPO rollout (the sampler of :mod:`mathvlm.train.rollout`) for the
    abstract model state on ``mesh``: ``rollout_*`` results, out-of-memory details when it fails."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from mathvlm import sharding
    from mathvlm.train.loop import peak_bytes
    from mathvlm.train.rollout import _sample

    rules = config.sharding.rules
    replicated = NamedSharding(mesh, PartitionSpec())
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)
    start = time.perf_counter()
    try:
        with jax.set_mesh(mesh), sharding.use_rules(rules):
            compiled = _sample.lower(
                model_graphdef, model_state, prompt_structs(config, mesh, batch), key, scalar, scalar,
                vlm=config.model.name == "vlm",
                out_sharding=sharding.batch_sharding(mesh, rules, 1).spec,
                max_new_tokens=int(config.rl.max_new_tokens), top_k=int(config.rl.get("top_k", 0)),
                stop_tokens=(ROLLOUT_STOP,), pad_id=0).compile()
    except Exception as e:  # as the train step's
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
            raise
        details = out_of_memory_details(text, model_state)
        return {"rollout_compile_s": round(time.perf_counter() - start, 2), "rollout_fits": False,
                **{"rollout_" + k: v for k, v in details.items()}}
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return {"rollout_compile_s": round(seconds, 2), "rollout_fits": True,
            "rollout_argument_gib": memory.argument_size_in_bytes / 2**30,
            "rollout_temp_gib": memory.temp_size_in_bytes / 2**30,
            "rollout_peak_gib": peak_bytes(memory) / 2**30}


def per_chip_gib(tree) -> float:
    """Bytes per chip of an abstract, sharded pytree, in GiB."""
    import math

    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree)) / 2**30


def compile_train_step(config, devices, batch: int, seq: int) -> dict:
    from mathvlm import sharding
    from mathvlm.train import lowering, steps
    from mathvlm.train.loop import peak_bytes

    mesh = sharding.make_mesh(config.mesh, devices=devices)
    rules = config.sharding.rules
    if batch % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise SystemExit(f"--batch {batch} must divide over the {mesh.shape['data'] * mesh.shape['fsdp']} "
                         f"batch shards of mesh {dict(mesh.shape)}")
    rollout = config.train.step == "grpo"
    if rollout and batch % int(config.rl.group_size):
        raise SystemExit(f"--batch {batch} completions must split into groups of rl.group_size="
                         f"{config.rl.group_size}")
    abstract = lowering.abstract_train_state(config, mesh)
    state = abstract.state
    batch_struct, passes = lowering.batch_structs(config, batch, seq, mesh)
    # DPO's frozen reference is a second copy of the model's state, placed like it.
    reference = state[0] if steps.needs_reference(config) else None
    params, trainable_params = abstract.params, abstract.trainable_params
    report = sharding.replicated_report(state[0])
    result = {
        "devices": len(devices), "device_kind": devices[0].device_kind, "mesh": dict(mesh.shape),
        "rules": rules, "step": config.train.step, "params": params,
        "trainable_params": trainable_params, "batch": batch, "seq": seq,
        "param_gib_per_device": report.bytes_per_device / 2**30,
        "replicated_fraction": report.replicated_fraction,
        # The 6·N·D rule over every forward pass's tokens: the usual MFU yardstick, not XLA's count.
        "tflops_6nd_per_device_step": 6 * params * batch * seq * passes / len(devices) / 1e12,
    }
    if rollout:
        result.update(prompt_len=int(config.rl.prompt_len), max_new_tokens=int(config.rl.max_new_tokens),
                      **compile_rollout(config, mesh, abstract.model_graphdef, state[0], batch))
        # Sampling leaves the optimizer state (and a reference copy) on the chips.
        result["rollout_resident_gib"] = per_chip_gib(state[1]) + (
            per_chip_gib(reference) if reference is not None else 0.0)
    start = time.perf_counter()
    try:
        compiled = lowering.lower_train_step(config, abstract, batch_struct, reference, mesh).compile()
    except Exception as e:  # XLA reports HBM exhaustion as a compile error (XlaRuntimeError)
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
            raise
        result.update(compile_s=round(time.perf_counter() - start, 2), fits=False,
                      **out_of_memory_details(text, state))
        return result
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    peak = peak_bytes(memory)
    result.update(
        compile_s=round(seconds, 2), fits=True,
        argument_gib=memory.argument_size_in_bytes / 2**30,
        temp_gib=memory.temp_size_in_bytes / 2**30,
        peak_gib=peak / 2**30,
        # XLA's count visits a while loop's body once: with scan_layers this is about one layer's
        # share of the step (plus the unscanned image tower), far below the whole step's FLOPs.
        tflops_per_device_step=float(cost.get("flops", 0.0)) / 1e12)
    # Pallas kernels (splash attention) appear as TPU custom calls in the compiled program.
    result["tpu_custom_calls"] = compiled.as_text().count("tpu_custom_call")
    if cost.get("optimal_seconds", 0) > 0:   # the cost model reports nonsense (< 0) for some programs
        # The TPU compiler's cost-model time for the same ops its FLOP count covers.
        result["optimal_seconds"] = float(cost["optimal_seconds"])
    return result


def out_of_memory_details(text: str, state) -> dict:
    """What XLA's out-of-memory error says (needed and available HBM, the largest allocations when it
    lists them) and this step's largest per-chip argument buffers (parameters, optimizer moments)."""
    import math

    import jax

    from mathvlm.sharding import path_name

    scale = {"G": 1, "M": 2**-10, "K": 2**-20, None: 2**-30}
    details = {"error": "out of HBM", "xla": text.strip().splitlines()[0][:300]}
    # Two spellings across libtpu versions: "Used 20.5G of 15.75G hbm" and "required for HLO
    # temporaries (15.86G) exceeds available HBM (15.75G)".
    used = (re.search(r"Used ([\d.]+)([GMK])? of ([\d.]+)([GMK])? hbm", text)
            or re.search(r"required for [^(]*\(([\d.]+)([GMK])?\) exceeds available HBM \(([\d.]+)([GMK])?\)",
                         text))
    if used:
        details["needed_gib"] = float(used.group(1)) * scale[used.group(2)]
        details["hbm_limit_gib"] = float(used.group(3)) * scale[used.group(4)]
    # When XLA lists its largest allocations ("1. Size: 2.00G" blocks), keep those lines.
    lines = [line.strip()[:240] for line in text.splitlines()
             if re.match(r"\s*(\d+\. Size:|Operator:|Shape:|XLA label:|Allocation type:)", line)]
    shards = []
    for path, x in jax.tree_util.tree_leaves_with_path(state):
        shape = x.sharding.shard_shape(x.shape)
        shards.append((math.prod(shape) * x.dtype.itemsize, path_name(path), shape, x.dtype.name))
    shards.sort(reverse=True)
    lines += [f"argument {name} {dtype}{list(shape)}: {nbytes / 2**30:.3f} GiB per chip"
              for nbytes, name, shape, dtype in shards[:8]]
    details["largest_buffers"] = lines[:48]
    return details


def oom_message(head: str, details: dict, prefix: str = "") -> str:
    return (f"{head}; XLA: {details[prefix + 'xla']}\nLargest buffers:\n  "
            + "\n  ".join(details[prefix + "largest_buffers"][:20] or ["(XLA listed none)"]))


def rollout_summary(result: dict, hbm: float, describe: str) -> str:
    """Print the rollout's line and settle ``rollout_fits``: what XLA allocates for it (arguments and
    temporaries, or its peak when larger) plus the state it leaves on the chips, within HBM. Returns
    the problem to report ("" when it fits)."""
    if not result["rollout_fits"]:
        return oom_message(f"does not fit: {describe} (rollout)", result, "rollout_")
    total = result["rollout_resident_gib"] + max(
        result["rollout_peak_gib"], result["rollout_argument_gib"] + result["rollout_temp_gib"])
    result.update(rollout_hbm_fraction=total / hbm, rollout_fits=total <= hbm)
    line = (f"rollout: {result['batch']} × ({result['prompt_len']} prompt + {result['max_new_tokens']} new "
            f"tokens), compile {result['rollout_compile_s']} s; per chip: peak "
            f"{result['rollout_peak_gib']:.2f} (arguments {result['rollout_argument_gib']:.2f}, temporaries "
            f"{result['rollout_temp_gib']:.2f}) + {result['rollout_resident_gib']:.2f} optimizer state "
            f"(and reference) left on the chips, of {hbm:g} GiB")
    if result["rollout_fits"]:
        print(line)
        return ""
    return f"does not fit: {describe}; {line}"


def main(argv=None) -> None:
    from absl import flags

    flags.FLAGS.mark_as_parsed()

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe, e.g. configs/mavis/instruct.py:size=7b")
    parser.add_argument("--topology", default="v5e:2x2", help=tpu_topology.EXAMPLES)
    parser.add_argument("--preset", default="", help="decoder preset replacing the recipe's model")
    parser.add_argument("--vlm", default="", metavar="VISION:DECODER",
                        help="VLM from presets replacing the recipe's model, e.g. "
                             "clip-vit-l-14-336:vicuna-13b")
    parser.add_argument("--projector", default="mlp2x_gelu", help="with --vlm (LLaVA folders: mlp2x_gelu)")
    parser.add_argument("--batch", type=int, default=0, help="global batch (default: data.batch_size)")
    parser.add_argument("--seq", type=int, default=0, help="sequence length (default: data.seq_len)")
    parser.add_argument("--step-time", type=float, default=0.0,
                        help="seconds per step: report the MFU it implies on this topology")
    parser.add_argument("--attention", default="", choices=("", "auto", "xla", "cudnn", "splash"),
                        help="attention implementation of the decoder and the image tower")
    parser.add_argument("--remat", default="", help="decoder remat policy (none, full, dots_saveable, "
                        "dots_with_no_batch_dims, offload)")
    parser.add_argument("--vision-remat", default="", help="image tower remat policy (VLMs)")
    parser.add_argument("--logits-chunk", type=int, default=None,
                        help="positions per chunk of the loss' logits (0: full [batch, L, vocab] logits)")
    parser.add_argument("--table", action="store_true",
                        help="compile every real recipe and print the fit table (launch/fit_table.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set mesh.fsdp=-1 --set sharding.rules=fsdp_tp")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--table" in argv:
        import fit_table

        fit_table.main(argv)
        return
    args = parser.parse_args(argv)
    if args.preset and args.vlm:
        parser.error("give --preset (decoder) or --vlm (VLM), not both")
    try:
        topology = tpu_topology.parse(args.topology)
    except tpu_topology.TopologyError as e:
        parser.error(str(e))

    from mathvlm import config as mc

    config = load_config(args.config, swap_model=bool(args.preset or args.vlm))
    config.unlock()
    options = decoder_options(config.model)
    if args.preset:
        config.model = mc.ConfigDict({"name": "decoder_lm", "preset": args.preset, **options})
    elif args.vlm:
        config.model = vlm_model(args.vlm, config, args.projector)
    elif config.model.name == "hf":
        parser.error(f"{args.config} loads its model from a transformers folder (model 'hf'); give its "
                     "shapes: --vlm VISION:DECODER (image models) or --preset DECODER")
    if args.preset or args.vlm:
        config.init.hf = ""
        config.init.checkpoint = ""
    apply_step_options(config, args.attention, args.remat, args.vision_remat, args.logits_chunk)
    for item in args.set:
        key, _, value = item.partition("=")
        mc.override(config, key, value)
    batch = args.batch or config.data.batch_size
    grpo = config.train.step == "grpo"
    # A rollout batch is the prompt and its completion, whatever data.seq_len says.
    seq = args.seq or (config.rl.prompt_len + config.rl.max_new_tokens if grpo else config.data.seq_len)
    image_tokens = config.data.get("num_image_tokens", 0) if config.model.name == "vlm" else 0
    if seq <= image_tokens:
        parser.error(f"--seq {seq} leaves no room for text after {image_tokens} image tokens")
    if grpo and config.rl.prompt_len <= image_tokens:
        parser.error(f"rl.prompt_len={config.rl.prompt_len} leaves no room for text after {image_tokens} "
                     "image tokens")

    from jax.experimental import topologies

    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.jax_name)
    result = compile_train_step(config, list(desc.devices), batch, seq)
    hbm = topology.generation.hbm_gib
    result.update(topology=topology.jax_name, cloud_topology=topology.cloud_name, config=args.config,
                  model=args.vlm or args.preset or config.model.name, hbm_gib=hbm)
    problems = []
    if result["fits"]:
        # XLA's own budget can be below the nominal HBM (reserved space): the compile is the judge.
        result["hbm_fraction"] = result["peak_gib"] / hbm
        if args.step_time:
            result["mfu_at_step_time"] = (result["tflops_per_device_step"] / args.step_time
                                          / topology.generation.peak_bf16_tflops)
        if result.get("optimal_seconds"):
            result["implied_mfu"] = (result["tflops_per_device_step"] / result["optimal_seconds"]
                                     / topology.generation.peak_bf16_tflops)
        print(f"{topology.describe()}\n{result['params'] / 1e9:.2f}B params "
              f"({result['trainable_params'] / 1e9:.3f}B trainable), batch {batch} × {seq}, mesh "
              f"{result['mesh']}, compile {result['compile_s']} s; per chip: peak {result['peak_gib']:.2f}"
              f" of {hbm:g} GiB (arguments {result['argument_gib']:.2f}, temporaries "
              f"{result['temp_gib']:.2f}), {result['tflops_per_device_step']:.1f} TFLOPs/step "
              f"(6·N·D: {result['tflops_6nd_per_device_step']:.1f})")
    else:
        problems.append(oom_message(f"does not fit: {topology.describe()}", result))
    if grpo:
        problem = rollout_summary(result, hbm, topology.describe())
        if problem:
            problems.append(problem)
        result["update_fits"] = result["fits"]
        result["fits"] = result["fits"] and result["rollout_fits"]
    if not problems:
        print(json.dumps(result))
        return
    print("\n".join(problems)
          + "\nUse a larger topology, a smaller --batch, remat, or more sharding (--set mesh.fsdp=-1, "
            "--set sharding.rules=fsdp_tp --set mesh.tensor=N).", file=sys.stderr)
    print(json.dumps(result))
    sys.exit(DOES_NOT_FIT)


if __name__ == "__main__":
    main()
