"""data.packing: several text-only rows per seq_len row, kept apart by segment ids in the decoder."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from mathvlm import registry
from mathvlm.data import pipeline
from mathvlm.data.sources import SKIP_REASONS
from mathvlm.models.decoder import decoder_lm
from mathvlm.train.steps import forward

SEQ = 32


@registry.register("source", "_test_pack_rows")
class PackRows:
    """Row i: ``n_i = 1 + (7i mod 20)`` tokens ``1000 i + 0..n_i-1`` (so every token names its row and
    place); every 10th row is blanked (``too_long``); ``image_row`` gets an image."""

    def __init__(self, data_config, *, seed, tokenizer):
        self.image_row = data_config.get("image_row", -1)

    def __len__(self):
        return 10**6

    def __getitem__(self, i):
        n = 0 if i % 10 == 9 else 1 + (7 * i) % 20
        tokens = np.zeros(SEQ, np.int32)
        tokens[:n] = 1000 * i + np.arange(n)
        return {"tokens": tokens, "targets": tokens + 1, "loss_mask": (tokens % 2).astype(np.float32),
                "attention_mask": (np.arange(SEQ) < n).astype(np.int32),
                "skip_reason": np.int32(3 if i % 10 == 9 else 0),
                "image_mask": np.bool_(i == self.image_row)}


def config(**kw):
    return ConfigDict({"source": "_test_pack_rows", "batch_size": 4, "seq_len": SEQ, "packing": True,
                       "packing_window": 4, **kw})


def take(it, n):
    return [next(it) for _ in range(n)]


def segments(row):
    """(tokens, targets, loss_mask, positions) of each segment of one packed row."""
    out = []
    for s in range(1, int(row["segment_ids"].max(initial=0)) + 1):
        where = row["segment_ids"] == s
        out.append(tuple(row[k][where] for k in ("tokens", "targets", "loss_mask", "positions")))
    return out


def test_every_row_packed_once_whole_with_its_loss_mask():
    it = pipeline.make_iterator(config(), seed=0)
    batches = take(it, 12)
    state = it.get_state()
    for lane in range(4):
        got = sorted(int(seg[0][0]) // 1000 for b in batches for seg in segments(
            {k: v[lane] for k, v in b.items()}))
        consumed = set(range(state["next"][lane])) - set(state["pending"][lane])
        rows = sorted(lane + 4 * m for m in consumed)
        assert got == [r for r in rows if r % 10 != 9]        # blanked rows take no room ...
        assert sum(int(b["skip_counts"][lane, 3]) for b in batches) == sum(r % 10 == 9 for r in rows)
    source = PackRows(config(), seed=0, tokenizer=None)
    for b in batches:
        assert b["tokens"].shape == (4, SEQ) and b["skip_counts"].shape == (4, len(SKIP_REASONS))
        np.testing.assert_array_equal(b["attention_mask"], b["segment_ids"] > 0)
        for lane in range(4):
            row = {k: v[lane] for k, v in b.items()}
            ids = row["segment_ids"][row["segment_ids"] > 0]
            assert np.all(np.diff(ids) >= 0) and ids[0] == 1    # 1, 2, 3, ... then padding
            for tokens, targets, loss_mask, positions in segments(row):
                original = source[int(tokens[0]) // 1000]
                n = int(original["attention_mask"].sum())
                np.testing.assert_array_equal(tokens, original["tokens"][:n])       # not truncated
                np.testing.assert_array_equal(targets, original["targets"][:n])
                np.testing.assert_array_equal(loss_mask, original["loss_mask"][:n])
                np.testing.assert_array_equal(positions, np.arange(n))


def test_resume_gives_identical_packed_batches():
    it = pipeline.make_iterator(config(), seed=0)
    take(it, 7)
    state = json.loads(json.dumps(it.get_state()))   # as grain's checkpoint handler stores it
    expected = take(it, 4)
    resumed = pipeline.make_iterator(config(), seed=0)
    resumed.set_state(state)
    for a, b in zip(expected, take(resumed, 4)):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_two_processes_pack_the_same_global_batches_as_one():
    single = take(pipeline.make_iterator(config(), seed=0), 5)
    per_process = [take(pipeline.make_iterator(config(), seed=0, process_index=p, process_count=2), 5)
                   for p in (0, 1)]
    for step, expected in enumerate(single):
        for key in expected:
            np.testing.assert_array_equal(
                np.concatenate([per_process[p][step][key] for p in (0, 1)]), expected[key])


def test_packing_refuses_image_rows_and_buckets_cut_segment_keys():
    with pytest.raises(ValueError, match="text-only"):
        take(pipeline.make_iterator(config(image_row=2), seed=0), 2)
    batch = next(pipeline.make_iterator(config(seq_len=SEQ, length_buckets=(8, 64)), seed=0))
    assert batch["segment_ids"].shape == batch["positions"].shape == batch["tokens"].shape


def text_math_config(packing, tokenizer="engine", seq_len=128):
    return ConfigDict({"source": "text_math", "tokenizer": tokenizer, "batch_size": 16,
                       "seq_len": seq_len, "packing": packing, "max_operand": 50})


def efficiency(data_config, steps=20):
    it = pipeline.make_iterator(data_config, seed=0)
    return float(np.mean([b["attention_mask"].mean() for b in take(it, steps)]))


def test_packing_efficiency_on_text_math():
    packed, unpacked = efficiency(text_math_config(True)), efficiency(text_math_config(False))
    packed_bytes = efficiency(text_math_config(True, "bytes", 256))
    print(f"text_math non-pad fraction: engine BPE seq 128 packed {packed:.3f} vs unpacked "
          f"{unpacked:.3f}; bytes seq 256 packed {packed_bytes:.3f}")
    assert packed > 0.75 and packed > 2.5 * unpacked and packed_bytes > 0.9


@pytest.mark.parametrize("scan_layers", [False, True])
def test_packed_logits_equal_each_row_alone(scan_layers):
    data = text_math_config(True, "bytes", 160)
    batch = next(pipeline.make_iterator(data, seed=0))
    model = decoder_lm("tiny", vocab_size=260, scan_layers=scan_layers, rngs=nnx.Rngs(0))
    packed = np.asarray(forward(model, {k: jnp.asarray(v) for k, v in batch.items()}))
    unmasked = np.asarray(model(jnp.asarray(batch["tokens"])))   # the same rows without segment ids
    # Every segment of the first rows as its own unpacked, right-padded row, all in one call.
    where = [(r, batch["segment_ids"][r] == s) for r in range(2)
             for s in range(1, int(batch["segment_ids"][r].max()) + 1)]
    alone_tokens = np.zeros((len(where), data.seq_len), np.int32)
    alone_mask = np.zeros((len(where), data.seq_len), np.int32)
    for i, (r, w) in enumerate(where):
        alone_tokens[i, : w.sum()], alone_mask[i, : w.sum()] = batch["tokens"][r][w], 1
    alone = np.asarray(model(jnp.asarray(alone_tokens), attention_mask=jnp.asarray(alone_mask)))
    assert len(where) >= 6
    for i, (r, w) in enumerate(where):
        np.testing.assert_allclose(packed[r][w], alone[i, : w.sum()], atol=1e-5, rtol=1e-5)
        if batch["segment_ids"][r][w][0] > 1:   # later segments would see earlier ones unmasked
            assert np.abs(unmasked[r][w] - alone[i, : w.sum()]).max() > 1e-3
