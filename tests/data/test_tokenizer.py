"""The engine BPE shipped in mathvlm/data/assets/engine_bpe: offline loading, exact round trips,
compression, the image token, template tokenisation, and a deterministic training script."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mathvlm.data import templates, tokenization
from mathvlm.tools import train_tokenizer
from mathvlm.data.tokenization import HFTokenizer, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("engine")


@pytest.fixture(scope="module")
def held_out_texts():
    # Seed 7 is not the training corpus' seed 0: compression must generalise, not memorise.
    return list(train_tokenizer.engine_texts(seed=7, num=40))


def test_loads_offline_with_special_ids(tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(tok, HFTokenizer) and tok.path == tokenization.ENGINE_TOKENIZER
    assert tok.vocab_size == 1024
    ids = {tok.pad_id, tok.bos_id, tok.eos_id, tok.image_id}
    assert None not in ids and len(ids) == 4
    hf = tok.hf
    assert (hf.pad_token, hf.bos_token, hf.eos_token) == ("<pad>", "<s>", "</s>")
    assert hf.convert_ids_to_tokens(tok.image_id) == "<image>"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert os.path.getsize(os.path.join(tokenization.ENGINE_TOKENIZER, name)) < 100_000


def test_round_trips_engine_text_exactly(tok, held_out_texts):
    extra = ["Δx = −3.5, ∠ABC = 45°, √2 ≈ 1.414", "  two  spaces\n\ttab", "12345678901234567890"]
    for s in held_out_texts + extra:
        assert tok.decode(tok.encode(s)) == s


def test_compresses_engine_text_much_better_than_bytes(tok, held_out_texts):
    chars = sum(len(s) for s in held_out_texts)
    tokens = sum(len(tok.encode(s)) for s in held_out_texts)
    num_bytes = sum(len(s.encode()) for s in held_out_texts)
    ratio = tokens / chars
    print(f"engine BPE: {ratio:.3f} tokens/char vs bytes {num_bytes / chars:.3f} on {chars} chars")
    assert ratio < 0.5 * num_bytes / chars


def test_image_token_is_one_id_and_templates_use_it(tok):
    assert tok.encode("<image>") == [tok.image_id]
    assert tok.encode("x <image>\ny").count(tok.image_id) == 1
    conversation = [{"role": "user", "content": "<image>\nWhat is the slope of line CD?"},
                    {"role": "assistant", "content": "The answer is 1/4."}]
    for template in ("vicuna_v1", "chatml", "plain"):
        ids, mask, images = templates.tokenize_pieces(templates.render(conversation, template), tok,
                                                      num_image_tokens=5)
        assert images == 1 and np.sum(ids == tok.image_id) == 5
        assert ids[mask][-1] == tok.eos_id
        assert tok.decode(ids[mask][:-1]).strip() == "The answer is 1/4."
    # ChatML role markers are single ids, so the template scaffolding costs little.
    assert len(tok.encode("<|im_start|>")) == 1 and len(tok.encode("<|im_end|>")) == 1


def test_training_script_is_deterministic(tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        subprocess.run([sys.executable, "-m", "mathvlm.tools.train_tokenizer", "--out", str(out),
                        "--vocab-size", "400", "--num", "15"], cwd=ROOT, check=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    small = HFTokenizer(str(outs[0]))
    assert small.vocab_size == 400 and small.image_id is not None
    assert small.encode("<image>") == [small.image_id]
