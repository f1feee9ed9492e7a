"""Metric sinks of a run: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard events,
and a tqdm bar with ETA on the console. Only process 0 writes.

On resume ``metrics.jsonl`` is cut back to the restored step, so it stays one clean history: a run
killed after its last checkpoint had logged steps that the resumed run logs again (with the same
values, the resume being exact). TensorBoard keeps both copies (it plots the newest).

These files are written with ordinary file calls (appended to, or by tensorboardX), which a bucket does
not take: for a ``gs://`` workdir they go to a local mirror that :class:`RunFiles` copies to the bucket."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Mapping

import numpy as np
from absl import logging

from mathvlm import workdir as wd


class MetricWriter:
    """``write(step, metrics)`` appends to ``metrics.jsonl`` and TensorBoard; ``bar`` shows progress.

    ``initial_step`` is the step the run starts (or resumes) from: records of later steps already in
    ``metrics.jsonl`` are dropped (see :func:`truncate_metrics`)."""

    def __init__(self, workdir: str, total_steps: int, initial_step: int = 0, enabled: bool = True,
                 desc: str = "train"):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = self._tb = self.bar = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm.auto import tqdm

        truncate_metrics(self.path, initial_step)
        self._jsonl = open(self.path, "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self.bar = tqdm(total=total_steps, initial=initial_step, desc=desc, dynamic_ncols=True,
                        mininterval=1.0)

    def write(self, step: int, metrics: Mapping[str, float]) -> dict:
        """Log scalars for ``step``; returns the plain-float record that was written."""
        record = {"step": int(step)}
        for key, value in metrics.items():
            value = float(np.asarray(value))
            record[key] = value if math.isfinite(value) else repr(value)
        if not self.enabled:
            return record
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, float):
                self._tb.add_scalar(key, value, step)
        if "loss" in record:
            loss = record["loss"]
            self.bar.set_postfix(loss=f"{loss:.4g}" if isinstance(loss, float) else loss, refresh=False)
        return record

    def flush(self) -> None:
        """Put what was logged so far on disk (TensorBoard buffers its events up to two minutes)."""
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self._tb.close()
        self._jsonl.close()


def truncate_metrics(path: str, last_step: int) -> int:
    """Drop the records of ``path`` logged after ``last_step`` (and a torn last line of a killed
    writer); returns how many were dropped. The file is replaced atomically, so a crash here leaves
    either the old or the new history, never half of one."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept, dropped = [], 0
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            # A kill -9 mid-write leaves a torn last line; anything else unreadable is reported.
            if line_no != len(lines) or line.endswith("\n"):
                logging.warning("%s: line %d is not a metrics record; dropped on resume", path, line_no)
            dropped += 1
            continue
        if step <= last_step:
            kept.append(line if line.endswith("\n") else line + "\n")
        else:
            dropped += 1
    # A record cut before its newline must not have the next record glued onto it: rewrite then too.
    if dropped or (lines and not lines[-1].endswith("\n")):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    if dropped:
        logging.warning("%s: dropped %d records after step %d (logged before the run was interrupted; "
                        "the resumed run logs those steps again)", path, dropped, last_step)
    return dropped


def read_metrics(workdir: str) -> list[dict]:
    """All records of ``DIR/metrics.jsonl``; a malformed line names the file and line number."""
    from mathvlm.eval.common import read_jsonl  # the one JSONL reader with file/line errors

    return read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def final_metrics(workdir: str) -> tuple[dict, list[tuple[int, float]]]:
    """The last logged value of every metric of a run or stage ({} when it logged nothing), and its
    (step, loss) curve."""
    out, curve = {}, []
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        for row in read_metrics(workdir):
            out.update(row)
            if "loss" in row:
                curve.append((int(row["step"]), float(row["loss"])))
    return out, curve


# Seconds between copies of a remote run's local files to the bucket while it logs (checkpoint saves
# and the end of the run copy them too).
SYNC_SECONDS = 300.0
# Files a run appends to across restarts: copied back from the bucket when it resumes, so it continues
# them (metrics.jsonl is then cut back to the restored step as for a local run).
APPENDED = ("metrics.jsonl", "rollouts.jsonl")


def mirror_dir(url: str) -> str:
    """The local folder that stands in for remote workdir ``url``: ``$MATHVLM_MIRROR_DIR`` (default
    ``~/.cache/mathvlm/mirror``) ``/<scheme>/<bucket>/<path>``."""
    base = os.environ.get("MATHVLM_MIRROR_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "mathvlm", "mirror")
    scheme, _, rest = url.partition("://")
    return os.path.join(base, scheme, *rest.split("/"))


def _copy(source, destination) -> None:
    """Stream one file between a local path and an ``epath.Path`` (either way)."""
    from etils import epath

    with epath.Path(source).open("rb") as f, epath.Path(destination).open("wb") as out:
        shutil.copyfileobj(f, out, 1 << 20)


class RunFiles:
    """Where a run's plain files go: ``metrics.jsonl``, TensorBoard events, ``rollouts.jsonl``, evaluation
    tables and ``summary.md``, written with ordinary file calls. For a local workdir that is the workdir
    itself and nothing else happens. For a ``gs://`` workdir it is a local mirror (:func:`mirror_dir`),
    copied to the same names under the workdir URL by :meth:`push`: after every checkpoint save, every
    :data:`SYNC_SECONDS` of logging and when the run ends, also when it fails. A copy that fails is
    logged with the files' local paths and retried at the next push; the run goes on. Only the process
    that writes the files (``enabled``: process 0) touches the mirror."""

    def __init__(self, workdir: str, enabled: bool = True, sync_seconds: float = SYNC_SECONDS):
        self.remote = wd.is_remote(workdir)
        self.workdir = wd.remote_url(workdir) if self.remote else workdir
        self.local = mirror_dir(self.workdir) if self.remote else workdir
        self.enabled = enabled and self.remote
        self.sync_seconds = sync_seconds
        self._pushed: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) last copied
        self._last_push = time.monotonic()

    def remote_path(self, local_path: str) -> str:
        """Where a file of the mirror goes (a local workdir's files are where they are)."""
        if not self.remote:
            return local_path
        return "/".join([self.workdir, *os.path.relpath(local_path, self.local).split(os.sep)])

    def _files(self) -> list[str]:
        out = []
        for root, _, files in os.walk(self.local):
            out += [os.path.relpath(os.path.join(root, name), self.local) for name in files]
        return sorted(out)

    def _in_bucket(self, relative: str) -> bool:
        from etils import epath

        try:
            remote = epath.Path(self.remote_path(os.path.join(self.local, relative)))
            return remote.exists() and remote.stat().length == os.path.getsize(
                os.path.join(self.local, relative))
        except Exception:  # cannot tell: count it as not copied
            return False

    def pull(self) -> None:
        """Set the mirror up before the run writes to it. A mirror an earlier process left is deleted
        when all of its files reached the bucket, and otherwise moved aside (kept, named in a
        warning). Then the files a resumed run appends to (:data:`APPENDED`) are copied from the
        bucket."""
        if not self.enabled:
            return
        from etils import epath

        if os.path.isdir(self.local):
            left = self._files()
            missing = [f for f in left if not self._in_bucket(f)]
            if missing:
                aside = stamp = f"{self.local}.unsynced-{time.strftime('%Y%m%d-%H%M%S')}"
                number = 1
                while os.path.exists(aside):  # two in the same second
                    number += 1
                    aside = f"{stamp}-{number}"
                os.rename(self.local, aside)
                logging.warning("%d file(s) an earlier run left in %s never reached %s (%s); kept in %s",
                                len(missing), self.local, self.workdir, ", ".join(missing[:5]), aside)
            else:
                shutil.rmtree(self.local)
        os.makedirs(self.local, exist_ok=True)
        for name in APPENDED:
            source, local = epath.Path(f"{self.workdir}/{name}"), os.path.join(self.local, name)
            if source.exists():
                _copy(source, local)
                stat = os.stat(local)
                self._pushed[name] = (stat.st_size, stat.st_mtime_ns)
        logging.warning("workdir %s: checkpoints and config.json are written there; metrics.jsonl, "
                        "TensorBoard events, rollouts, evaluation tables and summary.md are written to "
                        "%s and copied there at each checkpoint, every %d s and at the end",
                        self.workdir, self.local, self.sync_seconds)

    def push(self, flush=None) -> bool:
        """Copy the mirror's new and changed files to the bucket (``flush`` first: e.g. the metric
        writer's); True when every file got there. No-op for a local workdir."""
        if not self.enabled:
            return True
        if flush is not None:
            flush()
        failed = []
        for relative in self._files():
            local = os.path.join(self.local, relative)
            try:
                stat = os.stat(local)  # before reading: a write meanwhile is copied at the next push
            except FileNotFoundError:  # removed meanwhile (e.g. metrics.jsonl.tmp)
                continue
            key = (stat.st_size, stat.st_mtime_ns)
            if self._pushed.get(relative) == key:
                continue
            try:
                _copy(local, self.remote_path(local))
            except Exception as e:  # network, permissions, quota: keep training, retry next time
                failed.append(f"{relative} ({type(e).__name__}: {e})")
                continue
            self._pushed[relative] = key
        self._last_push = time.monotonic()
        if failed:
            logging.error("could not copy %d file(s) to %s: %s; they are kept in %s and copied again at "
                          "the next checkpoint or sync", len(failed), self.workdir, "; ".join(failed[:5]),
                          self.local)
        return not failed

    def push_if_due(self, flush=None) -> bool:
        """:meth:`push` when :data:`SYNC_SECONDS` passed since the last one."""
        if self.enabled and time.monotonic() - self._last_push >= self.sync_seconds:
            return self.push(flush)
        return True


class DataStats:
    """Host-side counts over the rows a run consumed: blanked rows per reason (``skip_reason``, or
    ``skip_counts`` [B, reasons] of packed batches), the
    realised mixture (``mix_id``) and complexity levels (``level``)."""

    def __init__(self, reasons: tuple[str, ...]):
        self.reasons = reasons
        self.rows = 0
        self.skipped = np.zeros(len(reasons), np.int64)
        self.mix: dict[int, int] = {}
        self.levels: dict[int, int] = {}

    def update(self, batch: Mapping[str, np.ndarray]) -> None:
        reason, packed = batch.get("skip_reason"), batch.get("skip_counts")
        if packed is not None:  # packed rows: source rows per reason, summed over each pack
            counts = np.asarray(packed).reshape(-1, len(self.reasons)).sum(axis=0)
            self.skipped += counts
            self.rows += int(counts.sum())
        elif reason is not None:
            self.skipped += np.bincount(np.asarray(reason).ravel(), minlength=len(self.reasons))
            self.rows += np.asarray(reason).size
        else:
            self.rows += len(next(iter(batch.values())))
        for key, table in (("mix_id", self.mix), ("level", self.levels)):
            if key in batch:
                for value, count in zip(*np.unique(batch[key], return_counts=True)):
                    table[int(value)] = table.get(int(value), 0) + int(count)

    @property
    def bad_fraction(self) -> float:
        return float(self.skipped[1:].sum()) / self.rows if self.rows else 0.0

    def metrics(self) -> dict[str, float]:
        out = {f"data/skipped_{name}": float(n) for name, n in zip(self.reasons[1:], self.skipped[1:])}
        for prefix, table in (("data/mix_", self.mix), ("data/level_", self.levels)):
            total = sum(table.values())
            out.update({f"{prefix}{key}": count / total for key, count in sorted(table.items())})
        return out

    def check(self, max_bad_fraction: float, min_rows: int = 100) -> None:
        if self.rows >= min_rows and self.bad_fraction > max_bad_fraction:
            counts = ", ".join(f"{name}: {n}" for name, n in zip(self.reasons[1:], self.skipped[1:]) if n)
            raise ValueError(f"{self.bad_fraction:.1%} of the {self.rows} rows read so far were unusable "
                             f"({counts}), above data.max_bad_fraction={max_bad_fraction}; the warnings "
                             "above name the records. Fix the data or raise the limit.")
