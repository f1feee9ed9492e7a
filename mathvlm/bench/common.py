"""Shared pieces of the benchmarks: timing, the machine's matmul peak, tables and the JSON line."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable


def machine() -> dict:
    """What the figures were measured on, including how busy the machine was (a shared CPU makes every
    timing pessimistic; ratios measured side by side in one run are the robust figures)."""
    info = {"cpus": os.cpu_count(), "platform": platform.machine(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


class Timings:
    """Wall and process-CPU seconds of repeated calls; ``median``/``best`` of the wall times."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def time(self, fn: Callable[[], object]):
        cpu, start = time.process_time(), time.perf_counter()
        out = fn()
        self.wall.append(time.perf_counter() - start)
        self.cpu.append(time.process_time() - cpu)
        return out

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def matmul_peak(size: int = 4096, reps: int = 3, timings: Timings | None = None) -> Timings:
    """This machine's matmul peak as XLA reaches it: ``jnp.dot`` of two ``size``² bf16 matrices
    accumulated in float32 (``preferred_element_type``), the precision the models compute in. Appends
    ``reps`` timings to ``timings`` (so calls interleaved with other measurements share one record)."""
    import jax
    import jax.numpy as jnp

    timings = timings or Timings()
    a = jnp.ones((size, size), jnp.bfloat16)
    b = jnp.full((size, size), 0.5, jnp.bfloat16)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    dot(a, b).block_until_ready()
    for _ in range(reps):
        timings.time(lambda: dot(a, b).block_until_ready())
    return timings


def read_bandwidth(megabytes: int = 512, reps: int = 3) -> dict[int, float]:
    """This machine's memory read bandwidth in GB/s, keyed by thread count (1 and every core): numpy
    sums a float32 array far larger than the caches, split evenly over the threads (numpy's
    reductions release the GIL). Decoding at small batch reads every weight once per token, so this
    bounds its tokens/s whatever the kernels (``decode``'s ceiling column)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    data = np.ones(megabytes * 2 ** 20 // 4, np.float32)
    result = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        parts = np.array_split(data, threads)
        timings = Timings()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(np.sum, parts))                  # warm-up: pages touched, threads started
            for _ in range(reps):
                timings.time(lambda: list(pool.map(np.sum, parts)))
        result[threads] = data.nbytes / timings.best / 1e9
    return result


def matmul_flops(size: int) -> float:
    return 2.0 * size ** 3


def table(title: str, header: list[str], rows: list[list]) -> str:
    """A plain fixed-width table (no tqdm, no colours): readable in a log and in a terminal."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in cells[1:]]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return "" if value is None else str(value)


def emit(figures: dict) -> None:
    """The last line of every subcommand: one JSON object with the figures."""
    print(json.dumps(figures, sort_keys=True, default=_json_default), flush=True)


def _json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def torch_or_none():
    """torch when installed (the test extra), else None: the comparisons against transformers are then
    skipped, never faked."""
    try:
        import torch
    except ImportError:
        return None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # plain output: no "Loading weights" bars
    return torch
