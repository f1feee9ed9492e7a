"""grain pipelines from registered sources: mixtures, complexity ratios, per-process slices, batching.

``data.source`` names one source; ``data.mixture`` (a list of ``{"name", "weight", <source keys>}``)
mixes several, each row tagged with ``mix_id`` (its component's index) so the trainer can report the
realised mix. ``data.complexity_ratio`` (e.g. ``(2, 3, 4, 1)``, Math-LLaVA's default) re-weights a source
whose rows have complexity levels 0–3 (the source exposes ``levels``, an int array per index): rows are
drawn level by level in that proportion, each level cycling through its own rows, and tagged ``level``.
(Selecting a fixed subset with "take all of a level" is :mod:`mathvlm.tools.select`'s job.)

``data.row_transforms`` (a tuple of ``{"name", <options>}``, empty in every recipe) wraps each source in
registered ``row_transform`` s, in order, before any of the above: ``transform(source, data_config,
seed=seed, **options)`` returns a source with the same indices (and ``levels``) whose rows it changes.
Experiments' changes to the data live there (:mod:`mathvlm.experiments`), not in the sources.

``data.packing: True`` (text-only rows) packs several rows into each ``seq_len`` row, see
:class:`PackedBatches`. ``data.length_buckets`` cuts each batch to the smallest bucket holding its
longest row; with several processes the cut is agreed on the global batch by :func:`sync_bucket`.

The returned iterator is a grain ``DatasetIterator``: ``get_state()`` / ``set_state()`` make it
checkpointable, so a resumed run sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import grain
import numpy as np
from ml_collections import ConfigDict

from mathvlm import registry
from mathvlm.data.sources import SKIP_REASONS
from mathvlm.data.tokenization import load_tokenizer


_SEQUENCE_KEYS = ("tokens", "targets", "loss_mask", "attention_mask")
_PACKED_KEYS = ("segment_ids", "positions")  # only in packed batches


def _longest(batch: dict) -> dict[str, int]:
    """Longest row (real tokens) per member prefix ("" / "strong_" / "chosen_" ...) of a batch."""
    groups = {key[: -len(s)] for key in batch for s in _SEQUENCE_KEYS if key.endswith(s)}
    return {prefix: int(np.max(np.sum(batch[prefix + "attention_mask"], axis=-1), initial=0))
            for prefix in sorted(groups)}


def trim_to_bucket(batch: dict, buckets, longest: dict[str, int] | None = None) -> dict:
    """Cut the length axis of a batch to the smallest bucket that holds its longest row (per member of
    pair/preference rows), so a run compiles one step per bucket instead of padding everything to
    ``seq_len``. ``longest`` overrides the batch's own longest rows (:func:`sync_bucket`)."""
    buckets = sorted(buckets)
    longest = _longest(batch) if longest is None else longest
    out = dict(batch)
    for prefix, need in longest.items():
        full = batch[prefix + "tokens"].shape[-1]
        length = next((b for b in buckets if b >= need and b <= full), full)
        for suffix in _SEQUENCE_KEYS + _PACKED_KEYS:
            if prefix + suffix in batch:
                out[prefix + suffix] = batch[prefix + suffix][..., :length]
    return out


def sync_bucket(local_batch: dict, buckets, process_count: int) -> dict:
    """:func:`trim_to_bucket` on a process's local rows with the cut of the *global* batch: every
    process must give ``make_array_from_process_local_data`` the same length, so the longest row is
    all-gathered across processes (a tiny collective, run by every process every step). With one
    process the pipeline has already cut the batch and this is a no-op re-cut."""
    if not buckets:
        return local_batch
    longest = _longest(local_batch)
    if process_count > 1:
        from jax.experimental import multihost_utils

        prefixes = sorted(longest)
        local = np.asarray([longest[p] for p in prefixes], np.int32)
        gathered = np.asarray(multihost_utils.process_allgather(local))  # [processes, members]
        longest = dict(zip(prefixes, np.max(gathered.reshape(-1, len(prefixes)), axis=0).tolist()))
    return trim_to_bucket(local_batch, buckets, longest)


def _tag(ds, key: str, value: int):
    return ds.map(lambda row: {**row, key: np.int32(value)})


def complexity_mix(source, ratio, *, seed: int):  # infinite: each level cycles
    """A MapDataset over ``source`` whose rows come from levels 0..3 in proportion ``ratio``."""
    levels = np.asarray(source.levels)
    ratio = [float(r) for r in ratio]
    if len(ratio) != 4 or min(ratio) < 0 or max(ratio) <= 0:
        raise ValueError(f"data.complexity_ratio={tuple(ratio)}: give four non-negative weights for "
                         "levels 0-3, at least one positive")
    base = grain.MapDataset.source(source)
    parts, weights = [], []
    for level, weight in enumerate(ratio):
        indices = np.flatnonzero(levels == level)
        if weight == 0:
            continue
        if not len(indices):
            raise ValueError(f"data.complexity_ratio asks for level {level}, but the source has no rows "
                             f"of that level (levels present: {sorted(set(levels.tolist()))})")
        parts.append(_tag(_subset(base, indices), "level", level).repeat())
        weights.append(weight)
    return grain.MapDataset.mix(parts, weights=weights).seed(seed)


def _subset(ds, indices: np.ndarray):
    return grain.MapDataset.range(len(indices)).map(lambda i: ds[int(indices[i])])


def apply_row_transforms(source, data_config, *, seed: int):
    """``source`` wrapped in the row transforms ``data.row_transforms`` names (see module docstring)."""
    for spec in data_config.get("row_transforms", None) or ():
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"data.row_transforms entry {spec} has no 'name'; registered: "
                             f"{registry.names('row_transform')}")
        options = {k: v for k, v in spec.items() if k != "name"}
        source = registry.get("row_transform", spec["name"])(source, data_config, seed=seed, **options)
    return source


def _component(component_config, *, seed: int, tokenizer):
    source = registry.get("source", component_config.source)(component_config, seed=seed,
                                                              tokenizer=tokenizer)
    source = apply_row_transforms(source, component_config, seed=seed)
    ratio = component_config.get("complexity_ratio", None)
    if ratio:
        return complexity_mix(source, ratio, seed=seed)
    ds = grain.MapDataset.source(source)
    if component_config.get("shuffle", False):
        ds = ds.shuffle(seed=seed)  # before repeat: every epoch is a new permutation
    return ds.repeat()


def _segment(row: dict) -> dict:
    """The real tokens of one text-only row, cut out of its padding (``attention_mask``)."""
    if bool(row.get("image_mask", False)):
        raise ValueError("data.packing is for text-only rows, but a row has an image; packed rows "
                         "carry no images (use length_buckets for image stages)")
    if "tokens" not in row:
        raise ValueError(f"data.packing needs plain rows (tokens/targets/loss_mask), got keys "
                         f"{sorted(row)}; pair and preference rows are not packed")
    n = int(np.sum(row["attention_mask"]))
    return {"tokens": row["tokens"][:n], "targets": row["targets"][:n],
            "loss_mask": row["loss_mask"][:n], "skip_reason": int(row.get("skip_reason", 0))}


class PackedBatches(grain.IterDataset):
    """Local batches of packed rows: each ``seq_len`` row holds several examples back to back.

    Keys: ``tokens``, ``targets``, ``loss_mask`` (each example's own supervision), ``attention_mask``
    (1 on real tokens), ``segment_ids`` (1, 2, ... per example, 0 on padding), ``positions``
    (restarting at 0 per example) and ``skip_counts`` [B, len(SKIP_REASONS)] (source rows consumed per
    skip reason, column 0 = packed rows: blanked rows take no room but are still counted).

    The global batch has ``B`` lanes; lane ``j`` packs the rows ``j, j + B, j + 2B, ...`` of the
    source stream, and global batch ``k`` is pack ``k`` of every lane. A process reads only its own
    lanes, and the processes' batches stacked in process order are exactly the batches one process
    would build, as for unpacked data. Each pack is a greedy first fit over the lane's next
    ``window`` rows (in order); a row that does not fit waits for the next pack, never truncated, and
    the oldest waiting row always goes first, so no row waits more than one pack. The state (per lane:
    next unread row, rows waiting) is a few ints; rows are re-read by index on restore.
    """

    def __init__(self, rows: grain.MapDataset, *, global_batch: int, lanes: range, seq_len: int,
                 pad_id: int, window: int = 16):
        super().__init__()
        self.rows, self.global_batch, self.lanes = rows, global_batch, lanes
        self.seq_len, self.pad_id, self.window = seq_len, pad_id, window

    def __iter__(self):
        return _PackIterator(self)


class _PackIterator(grain.DatasetIterator):
    def __init__(self, spec: PackedBatches):
        super().__init__()
        self.spec = spec
        self.next = [0] * len(spec.lanes)                # per lane: next unread lane-row
        self.pending: list[list[int]] = [[] for _ in spec.lanes]  # read, not yet placed
        self._cache: dict[tuple[int, int], dict] = {}

    def _row(self, lane: int, m: int) -> dict:
        key = (lane, m)
        if key not in self._cache:
            index = self.spec.lanes[lane] + self.spec.global_batch * m
            self._cache[key] = _segment(self.spec.rows[index])
        return self._cache[key]

    def _pack(self, lane: int) -> dict:
        spec, L = self.spec, self.spec.seq_len
        pending = self.pending[lane]
        while len(pending) < spec.window:
            pending.append(self.next[lane])
            self.next[lane] += 1
        out = {"tokens": np.full(L, spec.pad_id, np.int32), "targets": np.full(L, spec.pad_id, np.int32),
               "loss_mask": np.zeros(L, np.float32), "segment_ids": np.zeros(L, np.int32),
               "positions": np.zeros(L, np.int32)}
        counts = np.zeros(len(SKIP_REASONS), np.int32)
        used, placed, segment = 0, [], 0
        for m in pending:
            seg = self._row(lane, m)
            n = len(seg["tokens"])
            if n > L - used:
                continue
            placed.append(m)
            counts[seg["skip_reason"]] += 1
            if n:  # a blanked row has no tokens: counted above, takes no room
                segment += 1
                for key in ("tokens", "targets", "loss_mask"):
                    out[key][used:used + n] = seg[key]
                out["segment_ids"][used:used + n] = segment
                out["positions"][used:used + n] = np.arange(n)
                used += n
        self.pending[lane] = [m for m in pending if m not in placed]
        for m in placed:
            del self._cache[(lane, m)]
        out["attention_mask"] = (out["segment_ids"] > 0).astype(np.int32)
        return out | {"skip_counts": counts}

    def __next__(self) -> dict:
        packs = [self._pack(lane) for lane in range(len(self.spec.lanes))]
        return {key: np.stack([p[key] for p in packs]) for key in packs[0]}

    def get_state(self) -> dict:
        # Plain ints: grain's checkpoint handler writes the state as JSON.
        return {"next": list(self.next), "pending": [list(p) for p in self.pending]}

    def set_state(self, state: dict) -> None:
        self.next = [int(v) for v in state["next"]]
        self.pending = [[int(v) for v in p] for p in state["pending"]]
        self._cache = {}


def make_dataset(data_config, *, seed: int, process_index: int = 0, process_count: int = 1):
    """This process's local batches (``batch_size / process_count`` rows): a ``grain.MapDataset``, or
    with ``data.packing`` a ``grain.IterDataset`` (packing is sequential)."""
    if data_config.batch_size % process_count:
        raise ValueError(f"data.batch_size={data_config.batch_size} does not divide over "
                         f"{process_count} processes")
    tokenizer = load_tokenizer(data_config.get("tokenizer", "bytes"))
    mixture = data_config.get("mixture", None)
    if mixture:
        components = []
        for i, part in enumerate(mixture):
            part = ConfigDict({**data_config.to_dict(), "mixture": None, **dict(part)})
            components.append(_tag(_component(part, seed=seed + i, tokenizer=tokenizer), "mix_id", i))
        ds = grain.MapDataset.mix(components, weights=[float(p["weight"]) for p in mixture])
    else:
        ds = _component(data_config, seed=seed, tokenizer=tokenizer)
    per_process = data_config.batch_size // process_count
    if data_config.get("packing", False):
        lanes = range(process_index * per_process, (process_index + 1) * per_process)
        local = PackedBatches(ds, global_batch=data_config.batch_size, lanes=lanes,
                              seq_len=data_config.seq_len, pad_id=tokenizer.pad_id,
                              window=data_config.get("packing_window", 16))
    else:
        # Local batch k of process p holds rows [(kP + p)L, (kP + p + 1)L): the processes' batches,
        # stacked in process order, are exactly the global batch a single process would read.
        local = ds.batch(per_process, drop_remainder=True)
        local = local[process_index::process_count]
    buckets = data_config.get("length_buckets", None)
    # One process cuts here, in the pipeline; several must agree on the cut of the global batch, which
    # the trainer does per step with sync_bucket (a collective, so not inside the data pipeline).
    if buckets and process_count == 1:
        local = local.map(lambda batch: trim_to_bucket(batch, buckets))
    return local


def make_iterator(data_config, *, seed: int, process_index: int = 0, process_count: int = 1):
    """Checkpointable iterator over local batches (dicts of numpy arrays)."""
    ds = make_dataset(data_config, seed=seed, process_index=process_index, process_count=process_count)
    if not isinstance(ds, grain.MapDataset):
        return iter(ds)
    # grain's defaults (16 threads, 500 elements) read 500 *batches* ahead: minutes of CPU that a short
    # stage never uses and that compete with the train step. A few batches hide the loading latency.
    options = grain.ReadOptions(num_threads=data_config.get("read_threads", 4),
                                prefetch_buffer_size=data_config.get("prefetch_batches", 4))
    return iter(ds.to_iter_dataset(options))
