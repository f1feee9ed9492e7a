"""Benchmark suite: ``python -m mathvlm.bench {train,decode,engine,loader,compile} [--quick]``.

Each subcommand prints a readable table and, as its last line, one JSON object with the figures.
Comparisons (mathvlm against transformers, the loader against the step) are measured side by side in
one run on the same machine and printed as ratios; nothing is hard-coded. ``--quick`` shrinks every
size so a smoke test runs in seconds (its figures say nothing about speed).

* ``train``   — tokens/s of the Trainer's step vs a transformers LLaMA step, and MFU vs the bf16 peak;
* ``decode``  — tokens/s of KV-cache generation vs transformers ``generate`` on the same weights;
* ``engine``  — data-engine diagrams/s per core;
* ``loader``  — samples/s of a tiny config's data pipeline vs what its train step consumes;
* ``compile`` — lowering and compile seconds of the tiny step and of a 7B-shaped scanned decoder.
"""
