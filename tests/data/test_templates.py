"""Chat templates, assistant-only loss masks and image-token expansion, with a real transformers
tokenizer trained here and the built-in byte tokenizer."""

import pytest

from mathvlm.data import templates
from mathvlm.data.tokenization import ByteTokenizer, HFTokenizer, load_tokenizer

CONVERSATION = [
    {"role": "user", "content": "<image>\nWhat is the area of square ABCD?"},
    {"role": "assistant", "content": "The side is 3, so the area is 9."},
    {"role": "user", "content": "And the perimeter?"},
    {"role": "assistant", "content": "12"},
]


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    corpus = [turn["content"] for turn in CONVERSATION] * 20 + ["USER: ASSISTANT: A chat between"]
    tok.train_from_iterator(corpus, tokenizers.trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<image>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            additional_special_tokens=["<image>"]).save_pretrained(path)
    return HFTokenizer(str(path))


@pytest.mark.parametrize("make", ["bytes", "hf"])
def test_vicuna_masks_only_answers_and_expands_image(make, hf_tokenizer):
    tok = ByteTokenizer() if make == "bytes" else hf_tokenizer
    ids, mask, images = templates.tokenize_pieces(templates.render(CONVERSATION, "vicuna_v1"), tok,
                                                  num_image_tokens=5)
    assert images == 1
    assert (ids == tok.image_id).sum() == 5 and not mask[ids == tok.image_id].any()
    supervised = ids[mask]
    # Exactly the two answers, each followed by the end token.
    assert (supervised == tok.eos_id).sum() == 2 and supervised[-1] == tok.eos_id
    text = tok.decode(supervised[supervised != tok.eos_id])
    assert text.replace(" ", "") == "Thesideis3,sotheareais9.12"
    full = tok.decode(ids[ids != tok.image_id])
    assert full.startswith(templates.VICUNA_SYSTEM)
    assert "USER: " in full and "ASSISTANT:" in full and "And the perimeter?" in full


def test_vicuna_layout_string():
    pieces = templates.render(CONVERSATION[:2], "vicuna_v1", system="SYS")
    rendered = "".join(p.text if p.kind == "text" else f"[{p.kind}]" for p in pieces)
    assert rendered == ("SYS USER: [image]\nWhat is the area of square ABCD? ASSISTANT: "
                        "The side is 3, so the area is 9.[eos]")


def test_chatml_puts_images_first():
    conversation = [{"role": "user", "content": "Find x in <image> please"},
                    {"role": "assistant", "content": "x=2"}]
    pieces = templates.render(conversation, "chatml")
    rendered = "".join(p.text if p.kind == "text" else f"[{p.kind}]" for p in pieces)
    assert rendered == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                        "[image]\nFind x in  please<|im_end|>\n<|im_start|>assistant\nx=2[eos]\n")
    assert [p.text for p in pieces if p.supervised] == ["x=2", ""]


def test_prompt_ends_at_assistant_cue():
    pieces = templates.render_prompt(CONVERSATION[:1], "vicuna_v1")
    assert pieces[-1].text == " ASSISTANT:" and not any(p.supervised for p in pieces)
    pieces = templates.render_prompt(CONVERSATION[:1], "chatml")
    assert pieces[-1].text.endswith("<|im_start|>assistant\n")


def test_plain_supervises_caption():
    ids, mask, _ = templates.tokenize_pieces(
        templates.render([{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "A square."}],
                         "plain"), ByteTokenizer(), num_image_tokens=3)
    assert list(ids[:3]) == [ByteTokenizer.image_id] * 3
    assert ByteTokenizer().decode(ids[mask]) == "A square."


def test_errors(hf_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="unknown chat template"):
        templates.render(CONVERSATION, "alpaca")
    with pytest.raises(ValueError, match="alternate"):
        templates.render(CONVERSATION[1:], "chatml")
    with pytest.raises(ValueError, match="end with an assistant"):
        templates.render(CONVERSATION[:1], "chatml")
    text_only = ByteTokenizer()
    text_only.image_id = None
    with pytest.raises(ValueError, match="no image token"):
        templates.tokenize_pieces(templates.render(CONVERSATION, "plain"), text_only, 4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing"))
