"""The engine_vlm source: tokenised rows of the three tasks, prompts shared with the evaluator."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from mathvlm import recipes
from mathvlm.data import engine_prompts
from mathvlm.engine import core, wording
from mathvlm.data.engine_rows import EngineVLMSource, _pair_member, instruct_form, parse_versions
from mathvlm.data.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("engine")


def make_source(tokenizer, task, **changes):
    config = recipes.tiny_engine_data(task, batch_size=4, seq_len=1024, template="plain")
    return EngineVLMSource(ConfigDict({**config.to_dict(), **changes}), seed=5, tokenizer=tokenizer)


def decode_span(tokenizer, row, prefix, which):
    mask = row[prefix + which].astype(bool)
    return tokenizer.decode(row[prefix + ("targets" if which == "loss_mask" else "tokens")][mask])


def test_recipe_constants_match_the_shipped_tokenizer(tokenizer):
    assert tokenizer.vocab_size == recipes.ENGINE_VOCAB
    assert tokenizer.image_id == recipes.ENGINE_IMAGE_ID


def test_instruct_rows_ask_the_evaluator_prompt_and_supervise_the_cot(tokenizer):
    source = make_source(tokenizer, "instruct", version=("vision_dominant", "text_only"),
                         multiple_choice=0.5)
    seen_mc, seen_text_only = set(), set()
    for index in range(12):
        row = source[index]
        version, mc = instruct_form(5, index, source.versions, 0.5)
        record = core.make_record(5, index, kind="instruct", version=version, image_size=224,
                                  families=source.engine.families)
        assert int(row["skip_reason"]) == 0
        # The supervised span is exactly the engine's CoT (then eos, which decodes to nothing).
        assert decode_span(tokenizer, row, "", "loss_mask").strip() == engine_prompts.engine_target(record, mc)
        first_supervised = int(np.argmax(row["loss_mask"]))  # targets are tokens shifted by one
        prompt = tokenizer.decode(row["tokens"][: first_supervised + 1])
        assert engine_prompts.engine_prompt(record, mc) in prompt
        image_slots = int(np.sum(row["tokens"] == tokenizer.image_id))
        assert image_slots == (0 if version == "text_only" else recipes.TINY_IMAGE_TOKENS)
        assert bool(row["image_mask"]) == (version != "text_only")
        assert row["images"].shape == (recipes.TINY_IMAGE_SIZE, recipes.TINY_IMAGE_SIZE, 3)
        assert int(row["level"]) == int(record["complexity"])
        seen_mc.add(mc)
        seen_text_only.add(version == "text_only")
    assert seen_mc == {True, False} and seen_text_only == {True, False}


def test_pair_rows_share_the_answer_and_differ_in_the_question(tokenizer):
    source = make_source(tokenizer, "pairs")
    row = source[3]
    assert int(row["skip_reason"]) == 0
    strong = decode_span(tokenizer, row, "strong_", "loss_mask")
    weak = decode_span(tokenizer, row, "weak_", "loss_mask")
    assert strong == weak and "The answer is" in strong
    assert row["strong_loss_mask"].sum() == row["weak_loss_mask"].sum()
    assert not np.array_equal(row["strong_images"], row["weak_images"])


def test_pair_members_ask_the_evaluators_multiple_choice_forms(tokenizer):
    # Both members ask the instruction the instruct rows and the evaluator draw from, the same one;
    # they used to hard-code one sentence the evaluator asks only a quarter of the time.
    source = make_source(tokenizer, "pairs", multiple_choice=1.0)
    instructions = set()
    for index in range(16):
        record, row = source.engine[index], source[index]
        asked = {}
        for side in ("strong", "weak"):
            question, question_mc = record[side + "_question"], record[side + "_question_mc"]
            first_supervised = int(np.argmax(row[side + "_loss_mask"]))
            assert question_mc in tokenizer.decode(row[side + "_tokens"][: first_supervised + 1])
            assert question_mc.startswith(question)
            asked[side] = question_mc[len(question):].strip().split("\n")[0]
        assert asked["strong"] == asked["weak"] and asked["weak"] in wording._MC_PROMPTS
        instructions.add(asked["weak"])
    assert len(instructions) > 1
    stale = {k: v for k, v in source.engine[0].items() if not k.endswith("_question_mc")}  # built < 1.1.0
    with pytest.raises(KeyError, match="rebuild it"):
        _pair_member(stale, "weak")


def test_caption_rows_supervise_the_caption_only(tokenizer):
    source = make_source(tokenizer, "caption")
    row = source[0]
    record = source.engine[0]
    assert decode_span(tokenizer, row, "", "loss_mask").strip() == record["caption"]
    assert int(np.sum(row["tokens"] == tokenizer.image_id)) == recipes.TINY_IMAGE_TOKENS


def test_levels_and_bad_config(tokenizer):
    source = make_source(tokenizer, "instruct", num_examples=40)
    assert source.levels.shape == (40,) and set(source.levels.tolist()) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="unknown versions"):
        parse_versions(("vision_dominant", "visual"))
    with pytest.raises(ValueError, match="data.task"):
        make_source(tokenizer, "captions")
    with pytest.raises(ValueError, match="num_examples"):
        make_source(tokenizer, "instruct").levels  # noqa: B018  (a million problems: refused)


def test_rows_from_a_built_dataset_equal_the_on_the_fly_rows(tokenizer, tmp_path):
    from mathvlm.engine import builders

    builders.build("pairs", 3, 5, str(tmp_path), num_heldout=1, image_size=224)
    path = str(tmp_path / "math_engine_pairs" / "1.1.0")
    built = make_source(tokenizer, "pairs", path=path)
    fly = make_source(tokenizer, "pairs", families=None)  # the builder draws from every family
    assert len(built) == 3
    for index in range(3):
        # tfds shuffles records when it writes them: the record id names the engine index.
        engine_index = int(built.built[index]["id"].rsplit("/", 1)[1])
        a, b = built[index], fly[engine_index]
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{index}/{key}")
    with pytest.raises(FileNotFoundError, match="not a built engine dataset"):
        make_source(tokenizer, "pairs", path=str(tmp_path))
