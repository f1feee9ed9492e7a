"""The real-size path, rehearsed end to end: each paper's own ``size=7b|13b`` recipe, from folders in
the released models' layouts (miniature widths, same code branches) to an exported, evaluated model,
through the commands docs/scale.md documents (``mathvlm.main``, ``mathvlm.tools.convert``, ``mathvlm.tools.dpo_pairs``,
``mathvlm.tools.select``, ``mathvlm.evaluate``: their command lines, called in-process to save interpreter
start-ups), on 8 fake devices with each recipe's own default mesh (FSDP over all of them).

Only the budget changes (``steps=2``, batch 8): what a pod run would change for a smoke test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.rehearsal import miniature
from tests.rehearsal.commands import assert_exported_logits_equal, convert, train, trained_lora

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.long


def test_mavis_from_clip_and_mistral_to_an_exported_dpo_model(tmp_path):
    """MAVIS: build-vlm (CLIP ViT-L/14-336 + MAmmoTH2/Mistral, mlp2x_gelu) → CLIP-Math → alignment
    (projector + LoRA) → instruction tuning (continues the LoRA) → dpo_pairs → DPO → export
    --merge-lora → transformers' LlavaForConditionalGeneration gives mathvlm's logits."""
    clip = miniature.make_clip_vit_l_336(tmp_path / "clip-vit-large-patch14-336")
    llm = miniature.make_mistral(tmp_path / "MAmmoTH2-7B")
    vlm = str(tmp_path / "mavis-7b-start")
    convert("build-vlm", "--vision", clip, "--llm", llm, "--projector", "mlp2x_gelu", "--out", vlm)

    runs = tmp_path / "runs"
    train(f"configs/mavis/clip_math.py:size=vit-l-336,hf={clip},steps=2", runs / "clip_math_l",
          "--config.eval.at_start=False")
    train(f"configs/mavis/align.py:size=7b,hf={vlm},init={runs / 'clip_math_l'},steps=2", runs / "align_7b")
    align_lora = trained_lora(runs / "align_7b")
    assert align_lora and any(np.abs(v).max() > 0 for k, v in align_lora.items() if "lora_b" in k)
    train(f"configs/mavis/instruct.py:size=7b,hf={vlm},init={runs / 'align_7b'},steps=2",
          runs / "instruct_7b")
    instruct_lora = trained_lora(runs / "instruct_7b")
    assert instruct_lora.keys() == align_lora.keys()       # the same adapters, trained on

    from mathvlm.tools import dpo_pairs

    assert dpo_pairs.main(["--config", f"configs/mavis/instruct.py:size=7b,hf={vlm}", "--checkpoint",
                           str(runs / "instruct_7b"), "--num", "16", "--batch-size", "8",
                           "--out", str(runs / "dpo_pairs")]) == 0
    stats = json.loads((runs / "dpo_pairs" / "stats.json").read_text())
    assert stats["pairs"] >= 8, stats                     # an untrained miniature is wrong on most
    train(f"configs/mavis/dpo.py:size=7b,hf={vlm},init={runs / 'instruct_7b'},"
          f"data={runs / 'dpo_pairs' / 'pairs.jsonl'},steps=2", runs / "dpo_7b")

    exported = str(tmp_path / "mavis-7b-hf")
    convert("export", str(runs / "dpo_7b"), "--out", exported, "--merge-lora")
    assert_exported_logits_equal(runs / "dpo_7b", exported)
