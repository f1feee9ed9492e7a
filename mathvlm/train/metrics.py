"""Metric sinks of a run: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard events,
and a tqdm bar with ETA on the console. Only process 0 writes.

On resume ``metrics.jsonl`` is cut back to the restored step, so it stays one clean history: a run
killed after its last checkpoint had logged steps that the resumed run logs again (with the same
values, the resume being exact). TensorBoard keeps both copies (it plots the newest)."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import numpy as np
from absl import logging


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
