"""CLI of :mod:`mathvlm.bench`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = {  # name → (module, help)
    "train": ("mathvlm.bench.train", "train-step tokens/s vs transformers, and MFU"),
    "decode": ("mathvlm.bench.decode", "KV-cache generation tokens/s vs transformers generate"),
    "engine": ("mathvlm.bench.pipelines", "data-engine diagrams/s per core"),
    "loader": ("mathvlm.bench.pipelines", "data-pipeline samples/s vs train-step samples/s"),
    "compile": ("mathvlm.bench.compile", "lowering / compile seconds: tiny step, 7B-shaped decoder"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mathvlm.bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, seconds)")
        add = getattr(importlib.import_module(module), f"add_{name}_arguments", None) or getattr(
            importlib.import_module(module), "add_arguments")
        add(s)
    return p


def main(argv=None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    args = parser().parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    run = getattr(module, f"run_{args.command}", None) or module.run
    from mathvlm.bench import common

    figures = {"benchmark": args.command, "quick": bool(args.quick), **run(args)}
    common.emit(figures)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
