"""Tokenizers behind one small interface, and the packing of token rows into the batch contract of
:mod:`mathvlm.data`.

Interface: ``encode(text) -> list[int]`` (no special tokens added), ``decode(ids)``, ``vocab_size``,
``pad_id``, ``bos_id`` (or None), ``eos_id``, ``image_id`` (or None).
"""

from __future__ import annotations

import os

import numpy as np

# Names an image placeholder token has in the papers' tokenizers (LLaVA, Math-PUMA Qwen2, DeepSeek-VL).
IMAGE_TOKEN_NAMES = ("<image>", "<|image|>", "<image_placeholder>")


class ByteTokenizer:
    """UTF-8 bytes as ids 0–255, plus pad / bos / eos / image. Lossless, needs no vocabulary file."""

    pad_id, bos_id, eos_id, image_id = 256, 257, 258, 259
    vocab_size = 260

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer from a local folder (no hub, no remote code)."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"tokenizer folder {path!r} does not exist")
        self.path = path
        self.hf = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        if self.hf.eos_token_id is None:
            raise ValueError(f"tokenizer {path!r} has no eos token; set eos_token in tokenizer_config.json")
        self.eos_id = self.hf.eos_token_id
        self.bos_id = self.hf.bos_token_id
        self.pad_id = self.hf.pad_token_id if self.hf.pad_token_id is not None else self.eos_id
        vocab = self.hf.get_vocab()
        self.image_id = next((vocab[name] for name in IMAGE_TOKEN_NAMES if name in vocab), None)
        self.vocab_size = len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)


# The byte-level BPE trained on data-engine text (mathvlm.tools.train_tokenizer), shipped as package data.
ENGINE_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "engine_bpe")


def load_tokenizer(spec: str):
    """``"bytes"`` → :class:`ByteTokenizer`; ``"engine"`` → the shipped engine BPE (1024 ids, for tiny
    configs); anything else is a local transformers tokenizer folder."""
    if spec == "bytes":
        return ByteTokenizer()
    return HFTokenizer(ENGINE_TOKENIZER if spec == "engine" else spec)


def pack_tokens(ids, supervised, *, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """One row of the batch contract from a full token sequence and its per-token supervision flags.

    Position t of ``tokens`` predicts ``targets[t] = ids[t + 1]``; ``loss_mask[t]`` is the supervision
    flag of that target. Sequences longer than ``seq_len + 1`` raise ValueError (callers skip and count).
    """
    ids = np.asarray(ids, np.int32)
    if len(ids) > seq_len + 1:
        raise ValueError(f"sequence of {len(ids)} tokens does not fit seq_len={seq_len}")
    padded = np.full(seq_len + 1, pad_id, np.int32)
    padded[: len(ids)] = ids
    flags = np.zeros(seq_len + 1, np.float32)
    flags[: len(ids)] = np.asarray(supervised, np.float32)
    return {
        "tokens": padded[:-1],
        "targets": padded[1:],
        "loss_mask": flags[1:],
        "attention_mask": (np.arange(seq_len) < len(ids)).astype(np.int32),
    }

