"""grain pipeline: batching, per-process slices, mixtures, complexity ratios, exact resume."""


import numpy as np
import pytest
from ml_collections import ConfigDict

from mathvlm import registry
from mathvlm.data import pipeline


@registry.register("source", "_test_levels")
class LevelSource:
    """Rows carrying their own index; levels 0..3 with very unequal counts (700/200/80/20)."""

    def __init__(self, data_config, *, seed, tokenizer):
        self.levels = np.repeat([0, 1, 2, 3], [700, 200, 80, 20])

    def __len__(self):
        return len(self.levels)

    def __getitem__(self, index):
        return {"index": np.int32(index), "tokens": np.full(4, index, np.int32)}


def config(**kw):
    return ConfigDict({"source": "_test_levels", "batch_size": 8, "seq_len": 4, **kw})


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_complexity_ratio_realised_within_two_percent():
    it = pipeline.make_iterator(config(batch_size=100, complexity_ratio=(2, 3, 4, 1)), seed=0)
    levels = np.concatenate([b["level"] for b in take(it, 100)])       # 10k rows
    realised = np.bincount(levels, minlength=4) / len(levels)
    np.testing.assert_allclose(realised, [0.2, 0.3, 0.4, 0.1], atol=0.02)
    # Each row really has the level it is tagged with.
    source = LevelSource(None, seed=0, tokenizer=None)
    rows = next(pipeline.make_iterator(config(batch_size=64, complexity_ratio=(1, 1, 1, 1)), seed=0))
    np.testing.assert_array_equal(source.levels[rows["index"]], rows["level"])


def test_complexity_ratio_errors():
    with pytest.raises(ValueError, match="four non-negative weights"):
        pipeline.make_dataset(config(complexity_ratio=(1, 2)), seed=0)


def test_mixture_tags_components_with_weights():
    mixture = [{"source": "_test_levels", "weight": 0.75}, {"source": "_test_levels", "weight": 0.25}]
    it = pipeline.make_iterator(config(batch_size=100, mixture=mixture), seed=0)
    ids = np.concatenate([b["mix_id"] for b in take(it, 40)])
    assert abs(np.mean(ids == 1) - 0.25) < 0.02


@pytest.mark.parametrize("extra", [{"shuffle": True}, {"complexity_ratio": (2, 3, 4, 1)}])
def test_two_processes_read_the_same_global_batches_as_one(extra):
    single = take(pipeline.make_iterator(config(**extra), seed=3), 4)
    per_process = [take(pipeline.make_iterator(config(**extra), seed=3, process_index=p, process_count=2), 4)
                   for p in (0, 1)]
    for step, expected in enumerate(single):
        local = [per_process[p][step]["index"] for p in (0, 1)]
        assert len(local[0]) == 4
        np.testing.assert_array_equal(np.concatenate(local), expected["index"])
    assert len({int(i) for b in single for i in b["index"]}) > 16  # real, varied rows
    with pytest.raises(ValueError, match="does not divide over 3 processes"):
        pipeline.make_dataset(config(batch_size=8), seed=0, process_count=3)


def test_resume_from_state_gives_identical_batches():
    make = lambda: pipeline.make_iterator(config(complexity_ratio=(2, 3, 4, 1)), seed=5)
    it = make()
    take(it, 7)
    state = it.get_state()
    expected = take(it, 3)
    resumed = make()
    resumed.set_state(state)
    for a, b in zip(expected, take(resumed, 3)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_trim_to_bucket_per_member():
    mask = np.zeros((2, 16), np.int32)
    mask[0, :5] = 1
    batch = {"tokens": np.ones((2, 16), np.int32), "targets": np.ones((2, 16), np.int32),
             "loss_mask": np.ones((2, 16), np.float32), "attention_mask": mask,
             "weak_tokens": np.ones((2, 16), np.int32), "weak_targets": np.ones((2, 16), np.int32),
             "weak_loss_mask": np.ones((2, 16), np.float32), "weak_attention_mask": np.ones((2, 16), np.int32),
             "images": np.zeros((2, 3, 3, 3), np.float32)}
    out = pipeline.trim_to_bucket(batch, (4, 8, 12))
    assert out["tokens"].shape == (2, 8) and out["attention_mask"].shape == (2, 8)
    assert out["weak_tokens"].shape == (2, 16)       # longest row fills seq_len: no bucket fits
    assert out["images"].shape == (2, 3, 3, 3)
    assert out["attention_mask"][0].sum() == 5       # nothing real was cut


def test_sync_bucket_cuts_to_the_agreed_length():
    mask = np.zeros((2, 16), np.int32)
    mask[0, :5] = 1
    batch = {"tokens": np.ones((2, 16), np.int32), "targets": np.ones((2, 16), np.int32),
             "loss_mask": np.ones((2, 16), np.float32), "attention_mask": mask,
             "segment_ids": mask, "positions": np.zeros((2, 16), np.int32)}
    # One process: the batch's own bucket, segment keys cut along with the rest.
    out = pipeline.sync_bucket(batch, (4, 8, 12), process_count=1)
    assert {v.shape for v in out.values()} == {(2, 8)}
    assert pipeline.sync_bucket(batch, None, process_count=1) is batch
    # A longer row elsewhere in the global batch (what the all-gather reports) widens the local cut.
    out = pipeline.trim_to_bucket(batch, (4, 8, 12), longest={"": 11})
    assert {v.shape for v in out.values()} == {(2, 12)}


def test_length_buckets_with_two_processes_leave_the_cut_to_the_trainer():
    # text_math rows are 47-51 bytes long.
    rows = {"source": "text_math", "batch_size": 8, "seq_len": 64, "length_buckets": (48, 50, 52, 64)}
    single = next(pipeline.make_iterator(ConfigDict(rows), seed=0))
    assert single["tokens"].shape[1] in (50, 52)           # cut in the pipeline
    local = next(pipeline.make_iterator(ConfigDict(rows), seed=0, process_index=1, process_count=2))
    assert local["tokens"].shape == (4, 64)               # left whole: sync_bucket cuts per step
