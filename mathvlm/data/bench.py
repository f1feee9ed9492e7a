"""Loader throughput: ``python -m mathvlm.data.bench --config configs/text_demo.py --workers 0,2``.

Prints samples/s of the config's data pipeline for each worker count (0 = in-process), then one JSON
line with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grain


def measure(data_config, *, workers: int, batches: int, seed: int = 0) -> float:
    """Samples per second over ``batches`` batches, after one warm-up batch (worker start-up)."""
    from mathvlm.data import pipeline

    ds = pipeline.make_dataset(data_config, seed=seed)
    if isinstance(ds, grain.MapDataset):  # packing already gives an IterDataset
        ds = ds.to_iter_dataset()
    if workers:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    it = iter(ds)
    try:
        next(it)
        start = time.perf_counter()
        rows = 0
        for _ in range(batches):
            batch = next(it)
            rows += len(next(iter(batch.values())))
        return rows / (time.perf_counter() - start)
    finally:
        close = getattr(it, "close", None)
        if close:
            close()


def main(argv=None) -> None:
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    from mathvlm import config as mc

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/text_demo.py")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--batches", type=int, default=500)
    args = parser.parse_args(argv)
    data_config = mc.load(args.config).data
    figures = {}
    for workers in (int(w) for w in args.workers.split(",")):
        figures[f"workers_{workers}"] = rate = measure(data_config, workers=workers, batches=args.batches)
        print(f"{args.config} data  workers={workers:<2d} {rate:10.1f} samples/s", flush=True)
    print(json.dumps({"config": args.config, "samples_per_s": figures}))


if __name__ == "__main__":
    main(sys.argv[1:])
