"""Convert between transformers folders, orbax checkpoints and training runs of mathvlm models.

    # a transformers folder ↔ an orbax checkpoint of the same model
    python -m mathvlm.tools.convert hf-to-orbax /ckpt/qwen2-1.5b /ckpt/qwen2-1.5b-orbax [--scan-layers]
                                         [--param-dtype bfloat16] [--dtype bfloat16]
    python -m mathvlm.tools.convert orbax-to-hf /ckpt/qwen2-1.5b-orbax /out/qwen2-1.5b

    # a paper's starting VLM from released parts: image tower + LLM + a fresh projector
    python -m mathvlm.tools.convert build-vlm --vision /ckpt/clip-vit-large-patch14-336 \\
        --llm /ckpt/vicuna-7b-v1.5 --projector mlp2x_gelu --out /ckpt/llava-format-vicuna-7b
        [--image-token "<image>"] [--feature-layer -2] [--feature-strategy default|full]
        [--template vicuna_v1|chatml|plain] [--seed 0] [--dtype bfloat16] [--max-shard-size 5GB]

    # a paper's released checkpoint (original layout) as a folder mathvlm (and transformers) loads
    python -m mathvlm.tools.convert import --format llava-original /ckpt/Math-LLaVA \\
        --vision /ckpt/clip-vit-large-patch14-336 --out /ckpt/math-llava-13b
    python -m mathvlm.tools.convert import --format puma-qwen2vlm /ckpt/Math-PUMA_Qwen2VL-7B --out DIR
    python -m mathvlm.tools.convert import --format deepseek-vl /ckpt/Math-PUMA_DeepSeek-Math-VL-7B --out DIR
        [--dtype bfloat16] [--max-shard-size 5GB] [--template NAME]

    # any training run's model (newest checkpoint, or --step N) as a transformers folder
    python -m mathvlm.tools.convert export runs/align --out /out/align-hf --merge-lora
        [--dtype bfloat16|float32] [--max-shard-size 5GB] [--step N]

An orbax checkpoint directory holds ``state/`` (the model's ``nnx.State``, written by
``ocp.StandardCheckpointer``) and ``model.json`` (the HF config.json dict plus the build options, e.g.
``scan_layers``), enough to rebuild the model and restore it onto any mesh with :func:`load_orbax`.
``build-vlm``, ``import`` and ``export`` are :func:`mathvlm.hf.assemble.build_vlm`,
:func:`mathvlm.hf.releases.import_release` and :func:`mathvlm.hf.export.export_run`; each prints what it
wrote as JSON on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import SingleDeviceSharding

from mathvlm import hf, sharding


def save_orbax(model, path: str, options: dict[str, Any] | None = None) -> None:
    """Write ``model`` (any model with a registered HF format) to ``path``. ``options`` add to the
    build options the format records (for decoders: dtypes, ``scan_layers``, ``remat``)."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    fmt = hf.format_for_model(model)
    options = {**fmt.build_options(model), **(options or {})}
    meta = {"hf_config": fmt.hf_config(model), "options": options}
    with open(os.path.join(path, "model.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(path, "state"), nnx.state(model), force=True)
    checkpointer.wait_until_finished()


def load_orbax(path: str, *, mesh=None, rules=None, **option_overrides):
    """Rebuild and restore a model written by :func:`save_orbax`; with ``mesh`` it lands sharded by
    ``rules`` (default ``"fsdp"``), otherwise on the default device."""
    path = os.path.abspath(path)
    with open(os.path.join(path, "model.json")) as f:
        meta = json.load(f)
    options = {**meta["options"], **option_overrides}
    abstract = nnx.eval_shape(lambda: hf.build_from_config(meta["hf_config"], **options))
    graphdef, abstract_state = nnx.split(abstract)
    if mesh is not None:
        shardings = sharding.state_shardings(abstract_state, mesh, rules or "fsdp")
    else:
        device = SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract_state)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract_state, shardings)
    state = ocp.StandardCheckpointer().restore(os.path.join(path, "state"), target)
    return nnx.merge(graphdef, state)


def hf_to_orbax(hf_dir: str, out_dir: str, **options) -> None:
    save_orbax(hf.from_pretrained(hf_dir, **options), out_dir)


def orbax_to_hf(ckpt_dir: str, out_dir: str) -> None:
    hf.save_pretrained(load_orbax(ckpt_dir), out_dir)


def _feature_layer(text: str):
    layers = tuple(int(t) for t in text.split(",") if t.strip())
    return layers[0] if len(layers) == 1 else layers


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mathvlm.tools.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    to_orbax = sub.add_parser("hf-to-orbax", help="HF folder → orbax checkpoint")
    to_orbax.add_argument("hf_dir")
    to_orbax.add_argument("out_dir")
    to_orbax.add_argument("--scan-layers", action="store_true", help="stack layers for nnx scan")
    to_orbax.add_argument("--param-dtype", default=None, help="parameter dtype (default float32)")
    to_orbax.add_argument("--dtype", default=None, help="compute dtype (default: param dtype)")
    to_hf = sub.add_parser("orbax-to-hf", help="orbax checkpoint → HF folder")
    to_hf.add_argument("ckpt_dir")
    to_hf.add_argument("out_dir")

    vlm = sub.add_parser("build-vlm", help="vision folder + LLM folder → LLaVA-format VLM folder")
    vlm.add_argument("--vision", required=True,
                     help="CLIPVisionModel / CLIPModel / SiglipVisionModel / SiglipModel folder")
    vlm.add_argument("--llm", required=True, help="Llama / Mistral / Qwen2 causal-LM folder")
    vlm.add_argument("--projector", required=True, choices=("mlp2x_gelu", "gated", "linear"))
    vlm.add_argument("--out", required=True)
    vlm.add_argument("--image-token", default="<image>")
    vlm.add_argument("--feature-layer", type=_feature_layer, default=-2,
                     help="vision hidden-state index, or a comma list (features concatenated)")
    vlm.add_argument("--feature-strategy", choices=("default", "full"), default="default",
                     help="default: drop the tower's first token (CLIP's class token; SigLIP's first "
                          "patch, as Math-PUMA); full: keep all")
    vlm.add_argument("--template", default=None,
                     help="chat template (vicuna_v1, chatml, plain); default: vicuna_v1 for "
                          "LLaMA/Mistral, chatml for Qwen2")
    vlm.add_argument("--seed", type=int, default=0, help="projector initialisation seed")
    vlm.add_argument("--dtype", default=None, help="cast every tensor (default: keep each part's)")
    vlm.add_argument("--max-shard-size", default="5GB")
    vlm.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the LLM folder)")
    vlm.add_argument("--vocab-multiple", type=int, default=64,
                     help="a vocabulary grown for the image token is rounded up to this multiple")

    release = sub.add_parser("import", help="a paper's released checkpoint → a folder mathvlm loads")
    release.add_argument("src", help="the release folder (config.json, safetensors or .bin shards, "
                                     "tokenizer)")
    release.add_argument("--format", required=True,
                         choices=("llava-original", "puma-qwen2vlm", "deepseek-vl"))
    release.add_argument("--out", required=True)
    release.add_argument("--vision", default=None,
                         help="llava-original: the image tower folder its config.json names "
                              "(mm_vision_tower), which the release does not hold")
    release.add_argument("--dtype", default=None, help="cast every tensor (default: keep the release's)")
    release.add_argument("--max-shard-size", default="5GB")
    release.add_argument("--template", default=None,
                         help="chat template (default: the release's: vicuna_v1, chatml, deepseek)")

    export = sub.add_parser("export", help="a training run's checkpoint → transformers folder")
    export.add_argument("run", help="the run's workdir, its checkpoints folder or checkpoints/<step>")
    export.add_argument("--out", required=True)
    export.add_argument("--merge-lora", action="store_true",
                        help="fold LoRA adapters into the base weights (needed when the run has them)")
    export.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None,
                        help="cast the weights (default: the run's parameter dtype)")
    export.add_argument("--max-shard-size", default="5GB")
    export.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    args = parser.parse_args(argv)

    if args.command == "hf-to-orbax":
        options = {"scan_layers": args.scan_layers}
        for name in ("param_dtype", "dtype"):
            if getattr(args, name):
                options[name] = getattr(args, name)
        hf_to_orbax(args.hf_dir, args.out_dir, **options)
        print(f"wrote {args.out_dir}")
    elif args.command == "orbax-to-hf":
        orbax_to_hf(args.ckpt_dir, args.out_dir)
        print(f"wrote {args.out_dir}")
    else:
        from mathvlm.hf import assemble, export

        try:
            if args.command == "build-vlm":
                summary = assemble.build_vlm(
                    args.vision, args.llm, args.out, projector=args.projector,
                    image_token=args.image_token, feature_layer=args.feature_layer,
                    feature_strategy=args.feature_strategy, template=args.template, seed=args.seed,
                    dtype=args.dtype, max_shard_size=args.max_shard_size, tokenizer=args.tokenizer,
                    vocab_multiple=args.vocab_multiple)
            elif args.command == "import":
                from mathvlm.hf import releases

                summary = releases.import_release(
                    args.format, args.src, args.out, vision=args.vision, dtype=args.dtype,
                    max_shard_size=args.max_shard_size, template=args.template)
            else:
                summary = export.export_run(args.run, args.out, merge_lora=args.merge_lora,
                                              dtype=args.dtype, max_shard_size=args.max_shard_size,
                                              step=args.step)
        except assemble.ConversionError as err:
            print(f"convert {args.command}: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        for note in summary.get("notes", []):
            print(f"note: {note}")
        print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
