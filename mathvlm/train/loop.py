"""The one training loop. Every stage of every paper is this loop with another config: which
parameters train, which step kind, which loss terms, which data.

Resumes from the newest checkpoint in the workdir (model, optimizer and data-iterator state), saves
every ``checkpoint.every_steps`` and at the end, saves and exits cleanly on SIGTERM, and skips updates
whose loss or gradient is not finite (stopping after ``train.max_nonfinite`` in a row).
"""

from __future__ import annotations

import functools
import inspect
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from mathvlm import registry, sharding
from mathvlm.data import pipeline
from mathvlm.losses import make_loss
from mathvlm.models.vlm import merge_moments
from mathvlm.train import optim, steps
from mathvlm.train.checkpoint import Checkpointer
from mathvlm.train.build import init_model
from mathvlm.data.sources import SKIP_REASONS
from mathvlm.train.metrics import DataStats, MetricWriter, RunFiles
from mathvlm.train.summary import write_summary


def global_batch(local: dict, mesh, rules) -> dict:
    """Assemble each process's rows into global arrays split over the batch axes of the mesh."""
    return {key: jax.make_array_from_process_local_data(
        sharding.batch_sharding(mesh, rules, np.ndim(value)), np.asarray(value))
        for key, value in local.items()}


def make_train_step(config, graphdef, model_graphdef, trainable):
    """The pure ``train_step(state, batch, reference_state) -> (state, metrics)`` of a config, for any
    ``(model, optimizer)`` graph: the Trainer jits it on placed arrays, ``launch/aot_compile.py`` lowers
    it on abstract ones."""
    step_fn = registry.get("step", config.train.step)
    options = dict(config.train.get("step_options", {}) or {})
    chunk = int(config.train.get("logits_chunk", 0) or 0)
    if chunk:
        if "logits_chunk" not in inspect.signature(step_fn).parameters:
            raise ValueError(f"train.logits_chunk={chunk}: the {config.train.step!r} step has no token "
                             "logits to chunk; set it to 0")
        options["logits_chunk"] = chunk
    loss_fn = make_loss(config.loss.terms)
    rules = config.sharding.rules

    def train_step(state, batch, reference_state):
        model, optimizer = nnx.merge(graphdef, state)
        reference = None if reference_state is None else nnx.merge(model_graphdef, reference_state)
        with sharding.use_rules(rules):
            metrics = step_fn(model, optimizer, batch, loss_fn=loss_fn, trainable=trainable,
                              reference=reference, **options)
        new_state = nnx.state((model, optimizer))
        # A non-finite loss or gradient leaves parameters and optimizer state untouched.
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        return new_state, {**metrics, "finite": finite}

    return train_step


class DoesNotFitError(MemoryError):
    """The compiled train step needs more memory than a device has (raised before the first step)."""


def peak_bytes(memory) -> int:
    """Peak device bytes of a compiled step from its ``memory_analysis()``: XLA's own peak where the
    backend reports one, else arguments + temporaries + outputs − donated (aliased) buffers."""
    return int(getattr(memory, "peak_memory_in_bytes", 0) or (
        memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
        - memory.alias_size_in_bytes))


def _signature(batch: dict) -> tuple:
    return tuple(sorted((k, np.shape(v), str(np.asarray(v).dtype)) for k, v in batch.items()))


class Trainer:
    """Model + optimizer placed on the mesh, and the jitted step that updates them."""

    def __init__(self, config, mesh):
        self.config, self.mesh, self.rules = config, mesh, config.sharding.rules
        batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
        if config.data.batch_size % batch_ways:
            raise ValueError(f"data.batch_size={config.data.batch_size} must divide over the "
                             f"{batch_ways} batch shards of mesh {dict(mesh.shape)} (data × fsdp)")
        self.trainable = optim.trainable_filter(config.train.trainable)
        self.schedule = optim.make_schedule(config.optim, optim.total_updates(config))

        model = init_model(config, mesh)
        tx = optim.make_optimizer(config.optim, optim.total_updates(config))
        with jax.set_mesh(mesh), sharding.use_rules(self.rules):
            optimizer = nnx.Optimizer(model, tx, wrt=self.trainable)  # moments placed like parameters
        # DPO's reference: a frozen copy of the model as initialised (before any update or resume).
        model_graphdef, model_state = nnx.split(model)
        self.reference_state = (jax.tree.map(lambda x: x.copy(), model_state)
                                if steps.needs_reference(config) else None)
        self.graphdef, self.state = nnx.split((model, optimizer))
        train_step = make_train_step(config, self.graphdef, model_graphdef, self.trainable)
        shardings = jax.tree.map(lambda x: x.sharding, self.state)
        # The state is donated: the update happens in place in device memory.
        self._step = jax.jit(train_step, out_shardings=(shardings, None), donate_argnums=0)
        self._checked = None  # (batch signature, executable) from check_memory

    @functools.cached_property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(self.model, nnx.Param)))

    @property
    def model(self):
        return nnx.merge(self.graphdef, self.state)[0]

    def step(self, local_batch: dict) -> dict:
        batch = global_batch(local_batch, self.mesh, self.rules)
        step = self._step
        if self._checked is not None and self._checked[0] == _signature(local_batch):
            step = self._checked[1]  # the executable the memory check compiled for these shapes
        with jax.set_mesh(self.mesh):
            self.state, metrics = step(self.state, batch, self.reference_state)
        return metrics

    def check_memory(self, local_batch: dict) -> dict | None:
        """Compile the step for this batch's shapes and compare its memory analysis with the devices'
        memory (``train.device_memory_bytes``, else what the device reports; skipped when neither is
        known, as on CPU). Raises :class:`DoesNotFitError` saying what to change when it cannot fit."""
        limit = int(self.config.train.get("device_memory_bytes", 0) or 0)
        if not limit:
            # A device of this process: another host's devices report nothing (PjRt refuses).
            stats = self.mesh.local_devices[0].memory_stats() or {}
            limit = int(stats.get("bytes_limit", 0))
        if not limit:
            return None
        batch = global_batch(local_batch, self.mesh, self.rules)
        with jax.set_mesh(self.mesh):
            compiled = self._step.lower(self.state, batch, self.reference_state).compile()
        self._checked = (_signature(local_batch), compiled)
        peak = peak_bytes(compiled.memory_analysis())
        report = {"peak_bytes_per_device": peak, "device_bytes": limit}
        if peak > limit:
            c, gib = self.config, 2**30
            raise DoesNotFitError(
                f"the compiled train step needs {peak / gib:.2f} GiB per device, the devices have "
                f"{limit / gib:.2f} GiB (mesh {dict(self.mesh.shape)}, sharding.rules={c.sharding.rules!r}, "
                f"data.batch_size={c.data.batch_size}, seq_len={c.data.get('seq_len')}). To fit: shard "
                "the parameters over more chips (mesh.data=1, mesh.fsdp=-1; sharding.rules=fsdp_tp with "
                "mesh.tensor), lower data.batch_size and raise optim.accum_steps to keep the global "
                "batch, set model.remat=full (or dots_with_no_batch_dims, offload) / "
                "model.scan_layers=True (a VLM's image tower: model.vision.remat / "
                "model.vision.scan_layers), shorten data.seq_len, or train "
                "fewer parameters (train.trainable, lora.rank).")
        logging.warning("memory check: the step needs %.2f of %.2f GiB per device", peak / 2**30,
                        limit / 2**30)
        return report

    def report(self) -> sharding.ReplicationReport:
        return sharding.replicated_report(self.state[0])  # the model's parameters


def calibrate_image_features(trainer, batches, num_batches: int) -> None:
    """``train.calibrate_image_features: N`` — measure the image tower's feature mean and spread on N
    training batches and fix them in a VLM built with ``feature_norm: calibrated`` (the MAVIS stages
    after CLIP-Math keep the tower frozen, so the statistics stay true)."""
    model, optimizer = nnx.merge(trainer.graphdef, trainer.state)
    if not getattr(getattr(model, "config", None), "feature_norm", ""):
        raise ValueError("train.calibrate_image_features needs a VLM with model.feature_norm='calibrated'")
    measure = nnx.jit(lambda m, images, mask: m.feature_moments(images, mask))
    moments = None
    with jax.set_mesh(trainer.mesh):
        for _ in range(num_batches):
            local = next(batches)
            if "images" not in local:
                raise ValueError("train.calibrate_image_features: the data has no images to measure")
            batch = global_batch({k: local[k] for k in ("images", "image_mask") if k in local},
                                 trainer.mesh, trainer.rules)
            part = measure(model, batch["images"], batch.get("image_mask"))
            moments = part if moments is None else merge_moments(moments, part)
        placement = model.feature_stats.get_value().sharding
        model.calibrate_feature_norm(*moments)
        model.feature_stats.set_value(jax.device_put(model.feature_stats.get_value(), placement))
    trainer.state = nnx.state((model, optimizer))


def flops_metrics(num_params: int, tokens_per_s: float, peak_tflops: float) -> dict:
    """Model FLOPs/s by the 6·N·D rule (forward + backward, attention scores left out, so an estimate
    that errs low at long sequences) and, given the hardware's peak per process group, the MFU."""
    tflops = 6.0 * num_params * tokens_per_s / 1e12
    out = {"model_tflops_per_s": tflops}
    if peak_tflops:
        out["mfu"] = tflops / peak_tflops
    return out


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (save, then exit 0)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: checkpointing at the end of this step, then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _accepted_options(cls) -> set[str]:
    """Keyword names ``cls(...)`` takes, following ``**kwargs`` up the ``__init__`` chain (an evaluator
    such as ``MathVistaEvaluator(predict_fn, *, integer_rule, **kwargs)`` takes its base's options)."""
    import inspect

    if not isinstance(cls, type):
        return set(inspect.signature(cls).parameters)
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters
        names.update(parameters)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            break
    return names


def make_evaluators(config, workdir: str | None = None):
    """The evaluators of ``config.eval.evaluators`` (``[{"name", **options}]``), sharing one
    :class:`~mathvlm.train.predict.Predictor` built from ``config`` (tokenizer, template, image size and
    preprocessing, image tokens: as the training rows). Evaluators that batch get the predictor's batch
    size unless they set one (the compiled generation shape); ``workdir`` is where those
    that write tables put them, unless their options say otherwise."""
    if not config.eval.evaluators:
        return []
    from mathvlm.train.predict import Predictor

    predictor = Predictor.from_config(config)
    evaluators = []
    for spec in config.eval.evaluators:
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"config.eval.evaluators entry {spec} has no 'name'; registered evaluators: "
                             f"{registry.names('evaluator')}")
        cls = registry.get("evaluator", spec["name"])
        options = {k: v for k, v in spec.items() if k not in ("name", "label")}
        if "label" in spec:  # the metric prefix, so one evaluator can run twice (e.g. blind)
            options["name"] = spec["label"]
        accepted = _accepted_options(cls)
        if "batch_size" in accepted:
            options.setdefault("batch_size", predictor.batch_size)
        if workdir and "workdir" in accepted:
            options.setdefault("workdir", workdir)
        if "data_config" in accepted:  # evaluators that build rows exactly as training does
            options.setdefault("data_config", config.data)
        evaluators.append(cls(predictor, **options))
    return evaluators


def evaluate(evaluators, model) -> dict[str, float]:
    return {name: float(value) for evaluator in evaluators for name, value in evaluator.run(model)}


@registry.register("job", "train")
def train(config, *, workdir: str, mesh):
    """Train to ``config.train.steps``; logs to ``workdir``; returns the last logged metrics."""
    trainer = Trainer(config, mesh)
    if jax.process_index() == 0:
        print(trainer.report(), flush=True)
    # Plain files (metrics, TensorBoard, rollouts, tables, summary): the workdir, or for a gs:// workdir
    # a local mirror copied to it; checkpoints always go to the workdir itself.
    files = RunFiles(workdir, enabled=jax.process_index() == 0)
    files.pull()
    if getattr(registry.get("step", config.train.step), "needs_rollouts", False):
        from mathvlm.train.rollout import RolloutStream  # sampled from the policy itself (GRPO)

        batches = RolloutStream(config, trainer, workdir=files.local)
    else:
        batches = pipeline.make_iterator(config.data, seed=config.seed, process_index=jax.process_index(),
                                         process_count=jax.process_count())
    ckpt = Checkpointer(workdir, keep=config.checkpoint.keep)
    # A full disk is reported now, not as a failed save hours in (min_free_bytes: optional headroom).
    ckpt.check_space(trainer.state, config.checkpoint.get("min_free_bytes", 0))
    start = ckpt.latest_step() or 0
    if start:
        trainer.state, _ = ckpt.restore(start, trainer.state, batches)
        logging.warning("resumed from step %d of %s", start, ckpt.directory)
    elif config.train.calibrate_image_features:
        # its own stream: the training batches stay those of an uncalibrated run
        calibrate_image_features(trainer, pipeline.make_iterator(
            config.data, seed=config.seed + 1, process_index=jax.process_index(),
            process_count=jax.process_count()), config.train.calibrate_image_features)
    total, every = config.train.steps, config.checkpoint.every_steps
    tables_dir = files.local if jax.process_index() == 0 else None  # evaluators' tables: one writer
    evaluators, eval_every = make_evaluators(config, tables_dir), config.eval.every_steps
    max_nonfinite = config.train.get("max_nonfinite", 5)
    writer = MetricWriter(files.local, total, initial_step=start, enabled=jax.process_index() == 0)
    last, window_start, window_tokens, nonfinite, skipped = {}, time.perf_counter(), 0, 0, 0
    pending_finite = []  # device flags, read at log time so steps stay asynchronous
    data_stats = DataStats(SKIP_REASONS)
    max_bad_fraction = config.data.get("max_bad_fraction", 0.1)
    step = start
    if evaluators and not start and config.eval.get("at_start", False):
        last = writer.write(0, evaluate(evaluators, trainer.model))  # the untrained baseline
    try:
        with _Preemption() as preemption:
            while step < total:
                # One cut for the global batch: every process must hand the mesh the same length.
                local = pipeline.sync_bucket(next(batches), config.data.get("length_buckets", None),
                                             jax.process_count())
                data_stats.update(local)
                data_stats.check(max_bad_fraction)
                if step == start:
                    trainer.check_memory(local)  # before the first step: stop early if it cannot fit
                metrics = trainer.step(local)
                step += 1
                # Every member of pair / preference rows ("strong_attention_mask", ...) is a forward pass.
                window_tokens += jax.process_count() * sum(
                    int(np.sum(v)) for k, v in local.items() if k.endswith("attention_mask"))
                pending_finite.append(metrics.pop("finite"))
                writer.advance()
                log_now = step % config.train.log_every == 0 or step == total
                if log_now or preemption.requested:
                    for finite in jax.device_get(pending_finite):
                        nonfinite = 0 if finite else nonfinite + 1
                        skipped += not finite
                        if nonfinite >= max_nonfinite:
                            raise FloatingPointError(
                                f"{nonfinite} consecutive steps (up to step {step}) had a non-finite loss "
                                f"or gradient; their updates were skipped and the checkpoints in "
                                f"{ckpt.directory} hold only finite states. Lower optim.lr or check the "
                                "data.")
                    pending_finite = []
                if log_now:
                    metrics = jax.device_get(metrics)
                    elapsed = time.perf_counter() - window_start
                    metrics.update(lr=float(trainer.schedule(step * optim.updates_per_step(config) - 1)), skipped_steps=skipped,
                                   tokens_per_s=window_tokens / elapsed, **data_stats.metrics(),
                                   **flops_metrics(trainer.num_params, window_tokens / elapsed,
                                                   config.train.get("peak_tflops", 0.0)),
                                   **getattr(batches, "last_metrics", {}))
                    last = writer.write(step, metrics)
                    window_start, window_tokens = time.perf_counter(), 0
                    files.push_if_due(writer.flush)
                if evaluators and ((eval_every and step % eval_every == 0) or step == total):
                    last = {**last, **writer.write(step, evaluate(evaluators, trainer.model))}
                if (every and step % every == 0) or step == total or preemption.requested:
                    ckpt.save(step, trainer.state, batches, force=preemption.requested)
                    files.push(writer.flush)
                if preemption.requested:
                    break
    finally:
        try:
            ckpt.close()
            writer.close()
        finally:
            files.push()  # also after a failure: what was logged reaches the bucket
    if jax.process_index() == 0 and step == total and last:
        summary = write_summary(files.local, title=config.name)
        files.push()
        print(f"summary: {files.remote_path(summary)}", flush=True)
    return last
