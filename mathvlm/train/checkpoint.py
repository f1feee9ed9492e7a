"""Checkpoints with orbax: train state (model + optimizer), data-iterator state and run metadata,
written asynchronously, keeping the newest ``keep``. Layout: ``DIR/checkpoints/<step>/{state,
data_iter, meta}``. Restoring targets the *current* mesh, so a checkpoint written on one mesh or process
count restores onto another.

Safety: orbax writes each step into a temporary folder and renames it when complete, so a save that
dies midway is never restored. :meth:`Checkpointer.check_space` refuses to start a run whose workdir
cannot hold its checkpoints, and a save that fails mid-run (disk full, quota, I/O error) stops the run
with :class:`CheckpointSaveError`, naming the newest intact checkpoint a restart resumes from.

A ``gs://BUCKET/PATH`` workdir is written natively: orbax gets the URL (as an ``epath.Path``), writes the
arrays through tensorstore's GCS driver and its metadata through etils.epath. On GCS there is no rename:
orbax writes each step into its final folder and marks it complete with ``commit_success.txt``, which is
what :meth:`Checkpointer.complete_steps` looks for there. Free space cannot be asked of a bucket, so
:meth:`Checkpointer.check_space` logs its estimate and checks nothing."""

from __future__ import annotations

import os
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from mathvlm import workdir as wd
from mathvlm.sharding import path_name


def abstract_like(tree):
    """ShapeDtypeStructs carrying each placed array's sharding: the restore target for ``tree``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def saved_shapes(state_dir: str) -> dict[str, tuple[int, ...]]:
    """``{"0/layers/attn/q_proj/kernel": shape, ...}`` of a saved ``state`` item, from its metadata."""
    tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
    return {path_name(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def compare_to_saved(state_dir: str, target) -> list[str]:
    """Differences between a saved state and the state a restore would fill (names and shapes)."""
    saved = saved_shapes(state_dir)
    wanted = {path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(target)}
    problems = [f"missing in checkpoint: {k} {wanted[k]}" for k in sorted(set(wanted) - set(saved))]
    problems += [f"not in this model: {k} {saved[k]}" for k in sorted(set(saved) - set(wanted))]
    problems += [f"shape {k}: checkpoint {saved[k]} vs model {wanted[k]}"
                 for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]]
    return problems


class WorkdirSpaceError(OSError):
    """The workdir's disk cannot hold the run's checkpoints (raised before training starts)."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the newest complete one is intact."""


def state_bytes(state) -> int:
    """Bytes of every array of ``state`` (global shapes: what one checkpoint of it writes)."""
    def nbytes(x) -> int:
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # RNG streams: their raw key data
            x = jax.random.key_data(x)
        return int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize

    return sum(nbytes(x) for x in jax.tree.leaves(state) if hasattr(x, "dtype"))


# What orbax writes for one step: each array shard as one zstd-compressed chunk (never larger than
# its raw bytes: random float32 weights save at 0.92x, bfloat16 at 0.78x, zeros at almost nothing),
# plus metadata per chunk and per step. Measured on 8 fake CPU devices: at most ~0.9 KiB per chunk
# (400 arrays x 8 shards of 320 bytes: 2.9 MB where 0.13 MB are data; the same step saved again wrote
# 0.6 MB, the OCDBT layout depending on write timing) and ~0.2 MB per step. The budget takes 4 KiB per
# chunk and 16 MiB per step: an upper bound, which at 13B (156 GB of f32 weights and Adam moments) is
# within 1% of the raw bytes instead of 3x.
CHUNK_OVERHEAD, STEP_OVERHEAD = 4096, 16 * 2**20


def _chunks(x) -> int:
    """Shards orbax writes for one array (replicas are written once)."""
    sharding = getattr(x, "sharding", None)
    if sharding is None or not hasattr(sharding, "devices_indices_map"):
        return 1
    indices = sharding.devices_indices_map(tuple(np.shape(x)))
    return len({tuple((s.start, s.stop) for s in index) for index in indices.values()})


def checkpoint_bytes(state) -> int:
    """An upper bound of the disk one checkpoint of ``state`` takes."""
    chunks = sum(_chunks(x) for x in jax.tree.leaves(state) if hasattr(x, "dtype"))
    return state_bytes(state) + CHUNK_OVERHEAD * chunks + STEP_OVERHEAD


def directory_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:  # deleted meanwhile (orbax removing an old step)
                pass
    return total


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n:,} bytes)"


class Checkpointer:
    """Save / restore ``(state, data iterator, meta)`` under ``workdir/checkpoints``."""

    def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
        self.remote = wd.is_remote(workdir)
        if self.remote:  # gs://: the URL goes to orbax as it is (never through os.path.abspath)
            self.workdir = wd.remote_url(workdir)
            wd.check_remote_backend(self.workdir)
            self.directory = f"{self.workdir}/checkpoints"
            directory = epath.Path(self.directory)
        else:
            self.workdir = os.path.abspath(wd.local_path(workdir))
            self.directory = directory = os.path.join(self.workdir, "checkpoints")
        self.keep = keep
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save))
        self._pending: int | None = None  # step whose (asynchronous) save is not yet verified
        self._failed = False

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def complete_steps(self) -> list[int]:
        """Steps with a finished checkpoint on disk (unfinished saves live in temporary folders whose
        names are not plain step numbers; on gs://, step folders holding orbax's commit marker)."""
        if self.remote:
            return sorted(ocp.step.checkpoint_steps(epath.Path(self.directory)))
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

    def check_space(self, state, min_free_bytes: int = 0) -> int:
        """Fail before training if the workdir's disk cannot hold ``keep`` checkpoints of ``state`` plus
        the one being written (orbax deletes the oldest only once the new one is complete); space the
        existing checkpoints already take counts as available. ``min_free_bytes`` is headroom demanded
        on top. Returns the bytes needed."""
        one = checkpoint_bytes(state)
        if self.remote:
            needed = one * (self.keep + 1) + int(min_free_bytes)
            if jax.process_index() == 0:
                logging.warning("checkpoint space check skipped: the free space of %s cannot be queried "
                                "(a bucket has no disk); the run needs about %s there (checkpoint.keep=%d "
                                "+ 1 being written, %s each), mind the bucket's quota", self.directory,
                                _size(needed), self.keep, _size(one))
            return needed
        needed = max(one, one * (self.keep + 1) - directory_bytes(self.directory)) + int(min_free_bytes)
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            extra = f" + checkpoint.min_free_bytes={int(min_free_bytes):,}" if min_free_bytes else ""
            raise WorkdirSpaceError(
                f"not enough disk space for checkpoints in workdir {self.workdir}: {_size(free)} free, "
                f"about {_size(needed)} needed (checkpoint.keep={self.keep} checkpoints + 1 being "
                f"written, {_size(one)} each: parameters and optimizer state{extra}). Free space on that "
                "disk, lower checkpoint.keep, or choose a --workdir on a larger disk.")
        return needed

    def _failure(self, step: int | None, error: BaseException) -> CheckpointSaveError:
        self._failed = True
        complete = self.complete_steps()
        intact = (f"the newest complete checkpoint, step {complete[-1]}, is intact and rerunning the same "
                  "command resumes from it" if complete else "there is no earlier complete checkpoint, "
                  "so rerunning starts from step 0")
        what = "checkpoint save" if step is None else f"checkpoint save of step {step}"
        return CheckpointSaveError(
            f"{what} in {self.directory} failed ({type(error).__name__}: {error}); {intact}. Free "
            "disk space or fix the error above (permissions, quota, storage), then rerun.")

    def save(self, step: int, state, data_iterator=None, meta: dict | None = None, force=False) -> None:
        """Start saving ``step`` (asynchronously). Raises :class:`CheckpointSaveError` if this save or
        the previous one failed: continuing would only run further from the last safe point."""
        self.wait()  # orbax waits for the previous save here anyway; this also verifies it
        items = {"state": ocp.args.StandardSave(state),
                 "meta": ocp.args.JsonSave({"step": int(step), **(meta or {})})}
        if data_iterator is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            started = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as error:  # disk full, permissions, ... (tensorstore raises ValueError too)
            raise self._failure(step, error) from error
        if started:
            self._pending = step

    def restore(self, step: int, target_state, data_iterator=None):
        """(state placed like ``target_state``, meta dict); ``data_iterator`` is advanced in place."""
        state_dir = (f"{self.directory}/{step}/state" if self.remote
                     else os.path.join(self.directory, str(step), "state"))
        problems = compare_to_saved(state_dir, target_state)
        if problems:
            shown = "; ".join(problems[:12]) + (f"; ... {len(problems) - 12} more" if len(problems) > 12 else "")
            raise ValueError(f"checkpoint {state_dir} does not match this model and optimizer "
                             f"(another architecture or size?): {shown}")
        items = {"state": ocp.args.StandardRestore(abstract_like(target_state)),
                 "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        """Block until the pending save is done and check it reached the disk complete: orbax logs
        some background failures instead of raising them, which would lose a checkpoint silently."""
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            raise self._failure(step, error) from error
        if step is not None and jax.process_index() == 0 and step not in self.complete_steps():
            raise self._failure(step, RuntimeError("no complete checkpoint folder after the save "
                                                   "finished; see the orbax errors logged above"))

    def close(self) -> None:
        """Finish pending saves (raising if one failed) and release orbax's threads. After a failure
        was already raised, closing only cleans up, so the first error stays the one reported."""
        try:
            if not self._failed:
                self.wait()
        finally:
            try:
                self.manager.close()
            except Exception as error:  # after a failure, the save error raised earlier is the real one
                if not self._failed:
                    raise self._failure(None, error) from error
