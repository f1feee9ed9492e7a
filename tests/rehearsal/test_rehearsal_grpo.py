"""The real-size GRPO path, rehearsed: ``configs/rl/grpo.py:size=7b`` from a folder in
llava-hf/llava-1.5's layout (miniature widths, same code branches: its SentencePiece-style tokenizer,
Vicuna v1 template, CLIP preprocessing), LoRA on the LLM, the KL reference being the same weights with
LoRA switched off, on 8 fake devices with the recipe's FSDP mesh, then exported with the adapters
merged. Only the budget changes (3 steps, 8 completions, 8 new tokens)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.rehearsal import miniature
from tests.rehearsal.commands import assert_exported_logits_equal, convert, train, trained_lora

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.long


def test_grpo_7b_recipe_from_a_llava_folder_with_lora_and_a_lora_off_reference(tmp_path):
    folder = miniature.make_llava_15(str(tmp_path / "llava-1.5-7b-hf"))
    run = tmp_path / "grpo_7b"
    last = train(f"configs/rl/grpo.py:size=7b,hf={folder},steps=3,group=4,beta=0.04,lr=0.05", run,
                 "--config.rl.max_new_tokens=8", "--config.rl.prompt_len=400",  # a 300-token prompt: tiny vocabulary
                 # A random miniature model is never right: a length penalty gives the groups a spread.
                 "--config.rl.rewards=({'name': 'correct'}, {'name': 'length', 'max_chars': 16})")
    saved = json.load(open(run / "config.json"))
    assert saved["train"]["step_options"]["reference_model"] == "lora_disabled"
    assert saved["train"]["trainable"] == "lora" and saved["rl"]["group_size"] == 4

    records = [json.loads(line) for line in open(run / "metrics.jsonl") if '"grpo/loss"' in line]
    assert [r["step"] for r in records] == [1, 2, 3]
    # Steps 1 and 2 sample with zero adapters (warm-up makes the first update's lr 0), so the policy
    # is its LoRA-off reference (KL exactly 0); after the second update the KL to the base is positive.
    assert records[0]["grpo/kl"] == 0.0 and records[1]["grpo/kl"] == 0.0
    assert all(r["grpo/zero_advantage_groups"] < 1.0 for r in records)
    assert records[2]["grpo/kl"] > 0.0
    assert 1 <= last["rollout/completion_tokens"] <= 8
    rollouts = [json.loads(line) for line in open(run / "rollouts.jsonl")]
    assert {r["step"] for r in rollouts} == {0, 1, 2} and all(isinstance(r["completion"], str) for r in rollouts)

    adapters = trained_lora(run)
    assert adapters and all(np.isfinite(v).all() for v in adapters.values())
    moved = [k for k, v in adapters.items() if k.endswith("lora_b") and np.abs(v).max() > 0]
    assert moved

    exported = str(tmp_path / "grpo-7b-hf")
    convert("export", str(run), "--out", exported, "--merge-lora")
    assert_exported_logits_equal(run, exported)
