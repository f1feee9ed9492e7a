"""``python -m mathvlm.bench engine`` and ``... loader``: the input side.

* engine — diagrams/s per core of the data engine (:mod:`mathvlm.engine`): render only, and full
  records (problem, texts, render).
  "Per core" is diagrams per CPU-second of this single-threaded process, which a busy machine does not
  distort; the wall-clock rate is printed next to it.
* loader — samples/s of a tiny training config's data pipeline (the iterator the trainer reads, and
  the dataset through ``--workers`` grain worker processes, 0 = in-process) against the samples/s its
  train step consumes on the same batches, measured in the same run.
"""

from __future__ import annotations

import time

import numpy as np

from mathvlm.bench import common


def add_engine_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--image-size", type=int, default=336)


def add_loader_arguments(parser) -> None:
    parser.add_argument("--config", default="configs/mavis/instruct.py:size=tiny",
                        help="training config whose data and step are compared")
    parser.add_argument("--workers", default="2",
                        help="grain worker-process counts to measure besides the trainer's iterator "
                             "(0 is in-process: it reads 500 batches ahead, so it overstates a "
                             "sustained rate)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per measurement")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps")


def _rate(fn, seconds: float) -> tuple[float, float, int]:
    """Calls of ``fn`` per wall second and per CPU second over about ``seconds``."""
    n, cpu, start = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds or n == 0:
        fn(n)
        n += 1
    return n / (time.perf_counter() - start), n / max(time.process_time() - cpu, 1e-9), n


def run_engine(args) -> dict:
    from mathvlm.engine import core
    from mathvlm.engine.render import random_style

    seconds = 0.3 if args.quick else args.seconds
    size = args.image_size
    problems = [core.make_problem(0, i) for i in range(60)]
    styles = [random_style(np.random.default_rng(i), size) for i in range(60)]
    render_wall, render_cpu, n_render = _rate(
        lambda n: core.render(problems[n % 60], "vision_dominant", styles[n % 60]), seconds)
    record_wall, record_cpu, n_record = _rate(lambda n: core.make_record(1, n, image_size=size), seconds)
    figures = {"image_size": size, "diagrams_per_s_per_core": render_cpu,
               "diagrams_per_s_wall": render_wall, "records_per_s_per_core": record_cpu,
               "records_per_s_wall": record_wall, "rendered": n_render, "records": n_record,
               "machine": common.machine()}
    print(common.table(f"engine: {size} px, {seconds:g} s per measurement, one process; "
                       f"load {figures['machine']['load_avg_1m']}",
                       ["", "per core (per CPU-s)", "wall"],
                       [["render (diagrams/s)", render_cpu, render_wall],
                        ["full records (records/s)", record_cpu, record_wall]]))
    return figures


def _samples_per_s(it, batches: int) -> float:
    """Samples/s of iterator ``it`` over ``batches`` batches, after one warm-up batch (worker
    start-up); closes it."""
    try:
        next(it)
        rows, start = 0, time.perf_counter()
        for _ in range(batches):
            rows += len(next(iter(next(it).values())))
        return rows / (time.perf_counter() - start)
    finally:
        close = getattr(it, "close", None)
        if close:
            close()


def _iterator_rate(data_config, batches: int, seed: int = 0) -> float:
    """Samples/s of the iterator the trainer reads (``pipeline.make_iterator``)."""
    from mathvlm.data import pipeline

    return _samples_per_s(pipeline.make_iterator(data_config, seed=seed), batches)


def _workers_rate(data_config, *, workers: int, batches: int, seed: int = 0) -> float:
    """Samples/s of the config's dataset read through ``workers`` grain worker processes."""
    import grain

    from mathvlm.data import pipeline

    ds = pipeline.make_dataset(data_config, seed=seed)
    if isinstance(ds, grain.MapDataset):  # packing already gives an IterDataset
        ds = ds.to_iter_dataset()
    if workers:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return _samples_per_s(iter(ds), batches)


def _step_rate(config, steps: int) -> tuple[float, float, int]:
    """Samples/s the config's train step consumes: a few real batches (every length bucket they hit is
    compiled first), then ``steps`` timed steps cycling over them. Returns (samples/s, s/step, params)."""
    import jax

    from mathvlm import sharding
    from mathvlm.data import pipeline
    from mathvlm.train.loop import Trainer

    mesh = sharding.make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    it = pipeline.make_iterator(config.data, seed=config.seed)
    batches = [next(it) for _ in range(min(steps, 4))]
    close = getattr(it, "close", None)
    if close:
        close()
    for batch in batches:  # compile every shape first
        jax.block_until_ready(trainer.step(batch))
    timings = common.Timings()
    rows = 0
    for i in range(steps):
        batch = batches[i % len(batches)]
        timings.time(lambda: jax.block_until_ready(trainer.step(batch)))
        rows += len(batch["tokens"])
    return rows / sum(timings.wall), timings.median, trainer.num_params


def run_loader(args) -> dict:
    from mathvlm import config as mc

    spec = "configs/text_demo.py:batch_size=8" if args.quick else args.config
    batches, steps = (3, 3) if args.quick else (args.batches, args.steps)
    workers = [] if args.quick else [int(w) for w in args.workers.split(",") if w.strip()]
    config = mc.load(spec)
    data_rates = {"trainer_iterator": _iterator_rate(config.data, batches, config.seed)}
    for w in workers:
        data_rates[f"workers_{w}"] = _workers_rate(config.data, workers=w, batches=batches,
                                                   seed=config.seed)
    step_rate, step_s, params = _step_rate(config, steps)
    best = max(data_rates, key=data_rates.get)
    figures = {"config": spec, "batch_size": config.data.batch_size,
               "data_samples_per_s": data_rates, "step_samples_per_s": step_rate, "step_s": step_s,
               "model_params": params,
               # The headline: the iterator the trainer actually reads, against the step.
               "ratio": data_rates["trainer_iterator"] / step_rate,
               "ratio_best": data_rates[best] / step_rate, "ratio_best_source": best,
               "machine": common.machine()}
    rows = [[f"data: {name}", rate, f"x{rate / step_rate:.1f}"] for name, rate in data_rates.items()]
    rows.append([f"train step ({params / 1e6:.2f}M params, {step_s:.3f} s/step)", step_rate, "x1"])
    print(common.table(f"loader: {spec}, batch {config.data.batch_size}; "
                       f"load {figures['machine']['load_avg_1m']}",
                       ["", "samples/s", "vs step"], rows))
    return figures
