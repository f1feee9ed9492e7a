"""The ``weak_label_noise`` row transform (:mod:`mathvlm.experiments.label_noise`, puma_gap's noise
control): the vision-rich member's letter changes, the text-rich one's does not, and the rows are bit for
bit those the ``engine_vlm`` source built when it owned the knob (``data.weak_label_noise``)."""

import os

import numpy as np
import pytest
from ml_collections import ConfigDict

from mathvlm import config as mc
from mathvlm import recipes
from mathvlm.data import engine_prompts, pipeline
from mathvlm.data.engine_rows import EngineVLMSource, _pair_member, instruct_form
from mathvlm.data.sources import RowBuilder, join_members
from mathvlm.data.tokenization import load_tokenizer
from tests.data.test_engine_rows import decode_span

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PUMA_GAP = os.path.join(ROOT, "configs", "experiments", "puma_gap.py")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("engine")


def make_source(tokenizer, task, weak_label_noise, **changes):
    """engine_vlm rows (as tests/data/test_engine_rows.py makes them) through the row transform."""
    config = recipes.tiny_engine_data(task, batch_size=4, seq_len=1024, template="plain")
    config = ConfigDict({**config.to_dict(), **changes,
                         "row_transforms": ({"name": "weak_label_noise", "fraction": weak_label_noise},)})
    return pipeline.apply_row_transforms(EngineVLMSource(config, seed=5, tokenizer=tokenizer), config, seed=5)


def test_weak_label_noise_changes_only_the_vision_rich_letter(tokenizer):
    source = make_source(tokenizer, "pairs", multiple_choice=1.0, answer="letter", weak_label_noise=0.5)
    changed = 0
    for index in range(40):
        row, record = source[index], source.engine[index]
        strong = decode_span(tokenizer, row, "strong_", "loss_mask").strip()
        weak = decode_span(tokenizer, row, "weak_", "loss_mask").strip()
        assert strong == f"The answer is option {record['answer_mc']}."   # the target stays right
        assert weak.startswith("The answer is option ") and weak[-2] in "ABCD"
        changed += weak != strong
    assert 10 <= changed <= 30                                           # about half of 40
    assert all(row == again for row, again in zip(
        (decode_span(tokenizer, source[i], "weak_", "loss_mask") for i in range(8)),
        (decode_span(tokenizer, source[i], "weak_", "loss_mask") for i in range(8))))  # seeded
    for bad in ({"weak_label_noise": 1.0}, {"weak_label_noise": 0.5, "answer": "cot"}):
        with pytest.raises(ValueError, match="weak_label_noise"):
            make_source(tokenizer, "pairs", **bad)
    with pytest.raises(ValueError, match="weak_label_noise"):
        make_source(tokenizer, "instruct", answer="letter", weak_label_noise=0.5)


def old_pair_row(clean: EngineVLMSource, config, tokenizer, index: int, fraction: float) -> dict:
    """The pair row ``EngineVLMSource`` built with ``data.weak_label_noise=fraction`` before the knob moved
    to the experiment: the vision-rich member of a multiple-choice pair answers the letter its seeded draw
    picks (the right one, normalised, unless the draw falls under ``fraction``)."""
    e = clean.engine
    record = e[index]
    _, mc = instruct_form(e.seed, index, clean.versions, clean.multiple_choice)
    sides = {side: _pair_member(record, side) for side in ("strong", "weak")}
    if mc:
        rng = np.random.default_rng([e.seed, index, 23])
        letter = str(record["answer_mc"]).strip().upper()
        if rng.random() < fraction:
            others = [c for c in "ABCD"[:len(engine_prompts.choice_list(record))] if c != letter]
            letter = others[rng.integers(len(others))]
        sides["weak"]["answer_mc"] = letter
    build = RowBuilder(config, tokenizer, default_template="plain")
    members = {side: build({"id": f"{record['id']}/{side}", "images": [record[side + "_image"]],
                            "conversation": engine_prompts.engine_conversation(member, mc, answer="letter")})
               for side, member in sides.items()}
    return join_members(members) | {"level": np.int32(record["complexity"])}


@pytest.mark.parametrize("fraction,multiple_choice", [(0.5, 1.0), (0.75, 0.5)])
def test_rows_are_bit_identical_to_the_source_owned_knob(tokenizer, fraction, multiple_choice):
    changes = {"multiple_choice": multiple_choice, "answer": "letter", "families": ("function_shape",),
               "num_examples": 40}
    noisy = make_source(tokenizer, "pairs", fraction, **changes)
    config = ConfigDict({**recipes.tiny_engine_data("pairs", batch_size=4, seq_len=1024, template="plain")
                         .to_dict(), **changes})
    clean = EngineVLMSource(config, seed=5, tokenizer=tokenizer)
    changed = 0
    for index in range(16):
        row, expected = noisy[index], old_pair_row(clean, config, tokenizer, index, fraction)
        assert sorted(row) == sorted(expected)
        for key in expected:
            np.testing.assert_array_equal(row[key], expected[key], err_msg=f"{index} {key}")
            assert np.asarray(row[key]).dtype == np.asarray(expected[key]).dtype, (index, key)
        changed += not np.array_equal(row["weak_targets"], clean[index]["weak_targets"])
    assert changed > 0                                    # the transform did change letters
    np.testing.assert_array_equal(noisy.levels, clean.levels)     # the source's, passed through
    assert len(noisy) == len(clean) == 40


def test_puma_gap_noise_branches_name_the_row_transform(tmp_path):
    from mathvlm.train.chain import stage_config

    config = mc.load(f"{PUMA_GAP}:noise=0.75,lams=0,ntp=0")
    stages = {stage["name"]: stage for stage in config.stages}
    for name in ("puma_kl_noise0.75", "puma_lam0_noise0.75"):
        data = stage_config(stages[name], str(tmp_path), config.config_dir).data
        assert [dict(t) for t in data.row_transforms] == [{"name": "weak_label_noise", "fraction": 0.75}]
    assert stage_config(stages["text_sft"], str(tmp_path), config.config_dir).data.row_transforms == ()
