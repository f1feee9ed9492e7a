"""Chat templates and assistant-only loss masks.

A conversation is a list of ``{"role": "user"|"assistant", "content": str}`` turns; ``<image>`` in a user
turn marks where an image goes. A template renders it into pieces — text, special tokens and image slots —
each flagged supervised or not; :func:`tokenize_conversation` turns the pieces into ids and a loss mask,
expanding every image slot into ``num_image_tokens`` copies of the tokenizer's image token id (the VLM
replaces exactly those positions with projected image features).

Templates:

* ``vicuna_v1`` (Math-LLaVA / LLaVA-1.5): ``{system} USER: {q} ASSISTANT: {a}</s>USER: ...``
* ``chatml`` (Math-PUMA Qwen2): ``<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n`` + every image
  first as ``<image>\\n`` + text ``<|im_end|>\\n<|im_start|>assistant\\n{a}<|im_end|>\\n``
* ``plain`` (caption alignment): ``<image>{caption}</s>``, only the caption supervised.
* ``deepseek`` (Math-PUMA DeepSeek-Math / DeepSeek-VL SFT format): ``{system}\n\nUser: {q}\n\nAssistant:
  {a}<｜end▁of▁sentence｜>User: ...`` (deepseek_vl/utils/conversation.py, ``sep="\n\n"``, ``sep2`` = eos;
  images stay where the text puts them, as DeepSeek-VL's ``<image_placeholder>``).

Pieces are tokenised separately and concatenated, so a supervised span never shares a token with the
prompt (at the cost of rare merges across the boundary that whole-string tokenisation would make).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

IMAGE = "<image>"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant "
                 "gives helpful, detailed, and polite answers to the user's questions.")
CHATML_SYSTEM = "You are a helpful assistant."
# DeepSeek-VL's VLChatProcessor.system_prompt (deepseek_vl/models/processing_vlm.py).
DEEPSEEK_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                   "content that the user provides, and assist the user with a variety of tasks using natural "
                   "language.")


@dataclasses.dataclass(frozen=True)
class Piece:
    kind: str            # "text", "eos" (the tokenizer's end token), or "image"
    text: str = ""
    supervised: bool = False


def _text(text, supervised=False):
    return Piece("text", text, supervised)


def _user_text(content: str, images_first: bool) -> list[Piece]:
    """Split a user turn at ``<image>`` marks; ChatML moves all images to the front."""
    if images_first:
        count = content.count(IMAGE)
        rest = re.sub(r"<image>\n?", "", content)
        return [Piece("image"), _text("\n")] * count + [_text(rest)]
    pieces = []
    for i, part in enumerate(content.split(IMAGE)):
        if i:
            pieces.append(Piece("image"))
        if part:
            pieces.append(_text(part))
    return pieces


def _check_turns(conversation) -> None:
    roles = [turn["role"] for turn in conversation]
    if not roles or roles[0] != "user" or any(a == b for a, b in zip(roles, roles[1:])):
        raise ValueError(f"conversation must alternate user/assistant starting with user, got {roles}")
    if roles[-1] != "assistant":
        raise ValueError("conversation must end with an assistant turn (the supervised answer); "
                         "use render_prompt() for generation prompts")


def _role_turns(conversation, user: str, cue: str) -> list[Piece]:
    """Vicuna's and DeepSeek's turns: ``user`` + question + ``cue`` per user turn, ``" "`` + answer + eos
    (supervised) per assistant turn."""
    pieces = []
    for turn in conversation:
        if turn["role"] == "user":
            pieces += [_text(user)] + _user_text(turn["content"], False) + [_text(cue)]
        else:
            pieces += [_text(" " + turn["content"], True), Piece("eos", supervised=True)]
    return pieces


def vicuna_v1(conversation, system: str | None = None, generation: bool = False) -> list[Piece]:
    return ([_text((VICUNA_SYSTEM if system is None else system) + " ")]
            + _role_turns(conversation, "USER: ", " ASSISTANT:"))


def chatml(conversation, system: str | None = None, generation: bool = False) -> list[Piece]:
    pieces = [_text(f"<|im_start|>system\n{CHATML_SYSTEM if system is None else system}<|im_end|>\n")]
    for turn in conversation:
        if turn["role"] == "user":
            pieces += ([_text("<|im_start|>user\n")] + _user_text(turn["content"], True)
                       + [_text("<|im_end|>\n<|im_start|>assistant\n")])
        else:
            pieces += [_text(turn["content"], True), Piece("eos", supervised=True), _text("\n")]
    return pieces


def plain(conversation, system: str | None = None, generation: bool = False) -> list[Piece]:
    pieces = []
    for turn in conversation:
        if turn["role"] == "user":
            pieces += _user_text(turn["content"], False)
        else:
            pieces += [_text(turn["content"], True), Piece("eos", supervised=True)]
    return pieces


def deepseek(conversation, system: str | None = None, generation: bool = False) -> list[Piece]:
    system = DEEPSEEK_SYSTEM if system is None else system
    pieces = [_text(system + "\n\n")] if system else []   # an empty system adds no separator
    return pieces + _role_turns(conversation, "User: ", "\n\nAssistant:")


TEMPLATES = {"vicuna_v1": vicuna_v1, "chatml": chatml, "plain": plain, "deepseek": deepseek}


def render(conversation, template: str, system: str | None = None) -> list[Piece]:
    """Pieces of a complete (training) conversation."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; templates: {sorted(TEMPLATES)}")
    _check_turns(conversation)
    return TEMPLATES[template](conversation, system)


def render_prompt(conversation, template: str, system: str | None = None) -> list[Piece]:
    """Pieces of a generation prompt: the conversation up to and including the assistant cue."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; templates: {sorted(TEMPLATES)}")
    pieces = TEMPLATES[template](list(conversation) + [{"role": "assistant", "content": ""}], system)
    while pieces and pieces[-1].supervised or pieces and pieces[-1].text == "\n":
        pieces.pop()
    return pieces


def tokenize_pieces(pieces, tokenizer, num_image_tokens: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, supervised mask, number of images) of rendered pieces.

    ``tokenizer`` needs ``encode(text) -> list[int]``, ``eos_id`` and, when images occur, ``image_id``.
    """
    ids, mask, images = [], [], 0
    for piece in pieces:
        if piece.kind == "text":
            new = tokenizer.encode(piece.text) if piece.text else []
        elif piece.kind == "eos":
            new = [tokenizer.eos_id]
        else:
            image_id = getattr(tokenizer, "image_id", None)
            if image_id is None:
                raise ValueError("the tokenizer has no image token; add one (e.g. '<image>') to the "
                                 "tokenizer folder's added tokens, or use a text-only template input")
            if num_image_tokens < 1:
                raise ValueError("an <image> occurs but num_image_tokens is not set")
            new = [image_id] * num_image_tokens
            images += 1
        ids += new
        mask += [piece.supervised] * len(new)
    return np.asarray(ids, np.int32), np.asarray(mask, bool), images
