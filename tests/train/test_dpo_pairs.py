"""MAVIS stage-4 pairs from a model's wrong answers, then the DPO recipe trains on them."""

import json
import os

import numpy as np

from mathvlm import config as mc
from mathvlm.data import engine_prompts
from mathvlm.data.sources import ConversationSource
from mathvlm.data.tokenization import load_tokenizer
from mathvlm.tools.dpo_pairs import build_pairs, engine_records
from mathvlm.train.build import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs")


def test_pairs_from_wrong_answers_feed_the_dpo_recipe(tmp_path):
    config = mc.load(os.path.join(CONFIGS, "mavis/instruct.py") + ":size=tiny")
    config.unlock()
    config.eval.max_new_tokens = 8   # an untrained model: short (wrong) answers are enough
    model = build_model(config.model, seed=0)
    stats = build_pairs(config, model, str(tmp_path), num=6, batch_size=4)
    assert stats["problems"] == 6 and stats["pairs"] + stats["correct"] == 6
    assert stats["pairs"] >= 5  # a random model is right at most by chance

    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    records = {r["id"]: (r, mc_) for r, mc_ in engine_records(config.data, config.seed, 0, 6)}
    for row in rows:
        record, multiple_choice = records[row["id"]]
        assert row["chosen"] == engine_prompts.engine_target(record, multiple_choice)
        assert row["prompt"] == engine_prompts.engine_prompt(record, multiple_choice)
        assert not engine_prompts.is_correct(record, row["rejected"], multiple_choice)
        if engine_prompts.has_image(record):
            assert os.path.exists(row["image"])

    dpo = mc.load(os.path.join(CONFIGS, "mavis/dpo.py")
                  + f":size=tiny,data={tmp_path / 'pairs.jsonl'},steps=2")
    source = ConversationSource(dpo.data, seed=0, tokenizer=load_tokenizer(dpo.data.tokenizer))
    row = source[0]
    assert row["chosen_images"].shape == row["rejected_images"].shape
    assert int(np.sum(row["chosen_loss_mask"])) > 0 and int(np.sum(row["rejected_loss_mask"])) > 0

    from mathvlm import main as entry

    dpo.unlock()
    dpo.eval.evaluators = ()
    dpo.data.batch_size = 8
    last = entry.run(dpo, str(tmp_path / "dpo"))
    assert np.isfinite(last["loss"]) and "dpo/reward_margin" in " ".join(last)
