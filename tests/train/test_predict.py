"""The evaluation Predictor: VLM prompts with images decode exactly like an uncached greedy loop, images
change the output, evaluation prompts are tokenised like training rows, text-only models still work."""

import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from mathvlm import registry
from mathvlm.data import images as image_ops
from mathvlm.data.sources import RowBuilder
from mathvlm.data.tokenization import ByteTokenizer
from mathvlm.train.predict import Predictor


class IdTokenizer(ByteTokenizer):
    """Byte tokenizer whose decode shows every id (pad, image and eos included), so a comparison of
    outputs is a comparison of generated tokens."""

    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


def tiny_vlm(seed=0):
    return registry.get("model", "vlm")(vision_preset="tiny", decoder_preset="tiny",
                                        decoder={"vocab_size": 260}, image_token_id=ByteTokenizer.image_id,
                                        rngs=nnx.Rngs(seed))


def picture(seed, size=40):
    return np.random.default_rng(seed).integers(0, 256, (size, size + 7, 3), dtype=np.uint8)


def greedy_uncached(model, batch, steps, eos):
    """Argmax of a full forward pass over the whole sequence, one token at a time; rows stop at eos."""
    tokens, mask = batch["tokens"], batch["attention_mask"]
    vision = {"images": batch["images"], "image_mask": batch["image_mask"]} if "images" in batch else {}
    out = [[] for _ in tokens]
    for _ in range(steps):
        logits = np.asarray(model(tokens, attention_mask=mask, **vision))
        nxt = logits[:, -1].argmax(-1).astype(np.int32)
        for row, token in enumerate(nxt):
            if not out[row] or out[row][-1] != eos:
                out[row].append(int(token))
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
    return out


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml"])
def test_vlm_predictions_equal_uncached_greedy_for_a_mixed_batch(template):
    model, tok = tiny_vlm(), IdTokenizer()
    predictor = Predictor(tok, template, max_new_tokens=6, batch_size=4, pad_to=16)
    prompts = ["What is the area?", "Count the sides.", "What is 2 + 3?"]
    images = [picture(1), picture(2), None]
    outputs = predictor(model, prompts, images)
    (rows, batch), = list(predictor.batches(model, prompts, images))
    assert rows == 3 and batch["tokens"].shape[0] == 4  # padded to batch_size with a copy of the last row
    assert batch["image_mask"].tolist() == [True, True, False, False]
    assert not batch["images"][2].any()  # the text-only row's image is zeros
    # Each image row holds tokens_per_image placeholders; the text-only row none.
    per_row = (batch["tokens"] == tok.image_id).sum(1)
    assert per_row.tolist() == [model.config.tokens_per_image] * 2 + [0, 0]
    expected = greedy_uncached(model, batch, 6, tok.eos_id)
    assert outputs == [tok.decode([t for t in ids if t != tok.eos_id]) for ids in expected[:3]]


def test_images_change_the_first_step_logits_and_the_image_is_preprocessed_like_training():
    model, tok = tiny_vlm(), ByteTokenizer()
    predictor = Predictor(tok, "vicuna_v1", batch_size=2, pad_to=16, image_preprocess="clip")
    (_, batch), = list(predictor.batches(model, ["Which angle?"] * 2, [picture(3), picture(4)]))
    np.testing.assert_array_equal(batch["images"][0], image_ops.preprocess(picture(3), "clip", 32))
    logits = np.asarray(model(batch["tokens"], batch["images"], batch["image_mask"],
                              attention_mask=batch["attention_mask"]))[:, -1]
    assert np.abs(logits[0] - logits[1]).max() > 1e-4
    # Masked out, the two images give identical logits: the difference above comes from the pictures.
    off = np.asarray(model(batch["tokens"], batch["images"], np.zeros(2, bool),
                           attention_mask=batch["attention_mask"]))[:, -1]
    np.testing.assert_allclose(off[0], off[1], atol=1e-6)


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml", "plain"])
def test_evaluation_prompt_is_the_prompt_part_of_the_training_row(template):
    tok = ByteTokenizer()
    data = ConfigDict({"template": template, "seq_len": 256, "image_size": 32, "image_preprocess": "siglip",
                       "num_image_tokens": 16})
    image = picture(5)
    question = "Given AB = 3, what is BC?"
    row = RowBuilder(data, tok)({"id": "r0", "images": [image], "conversation": [
        {"role": "user", "content": "<image>\n" + question}, {"role": "assistant", "content": "BC = 4."}]})
    predictor = Predictor(tok, template, num_image_tokens=16, image_size=32, image_preprocess="siglip")
    prompt = predictor.encode(question, has_image=True)
    n = len(prompt)
    np.testing.assert_array_equal(row["tokens"][:n], prompt)
    # The answer starts right after the prompt: the first supervised target is token n.
    assert row["loss_mask"][n - 1] == 1 and not row["loss_mask"][: n - 1].any()
    assert (prompt == tok.image_id).sum() == 16


def test_text_only_model_still_decodes_and_refuses_images():
    model = registry.get("model", "decoder_lm")(preset="tiny", vocab_size=260, rngs=nnx.Rngs(1))
    tok = IdTokenizer()
    predictor = Predictor(tok, "plain", max_new_tokens=5, batch_size=2, pad_to=8)
    prompts = ["Q: 1 + 2?\nA: ", "Q: 7 * 3?\nA: ", "Q: 9 - 4?\nA: "]
    outputs = predictor(model, prompts)
    expected = []
    for rows, batch in predictor.batches(model, prompts):
        expected += greedy_uncached(model, batch, 5, tok.eos_id)[:rows]
    assert outputs == [tok.decode([t for t in ids if t != tok.eos_id]) for ids in expected]
    with pytest.raises(ValueError, match="takes no images"):
        predictor(model, prompts[:1], [picture(0)])


def test_mismatched_image_settings_are_clear_errors():
    model = tiny_vlm()
    with pytest.raises(ValueError, match="num_image_tokens=9"):
        Predictor(ByteTokenizer(), "chatml", num_image_tokens=9)(model, ["q"], [picture(0)])
    with pytest.raises(ValueError, match="image_size=64"):
        Predictor(ByteTokenizer(), "chatml", image_size=64)(model, ["q"], [picture(0)])
    other = registry.get("model", "vlm")(vision_preset="tiny", decoder_preset="tiny", decoder={"vocab_size": 260},
                                         rngs=nnx.Rngs(0))  # image_token_id 255: a byte, not the tokenizer's
    with pytest.raises(ValueError, match="model.image_token_id"):
        Predictor(ByteTokenizer(), "chatml")(other, ["q"], [picture(0)])


def test_from_config_takes_data_and_eval_settings():
    config = ConfigDict({
        "data": {"tokenizer": "bytes", "template": "chatml", "image_size": 32, "image_preprocess": "siglip",
                 "num_image_tokens": 16},
        "eval": {"max_new_tokens": 7, "batch_size": 4, "evaluators": ()}})
    predictor = Predictor.from_config(config)
    assert (predictor.template, predictor.image_size, predictor.image_preprocess, predictor.num_image_tokens,
            predictor.max_new_tokens, predictor.batch_size) == ("chatml", 32, "siglip", 16, 7, 4)
    assert isinstance(predictor.tokenizer, ByteTokenizer)
    assert predictor(tiny_vlm(), ["Which?"], [picture(6)])[0] is not None


def test_make_evaluators_runs_engine_heldout_on_a_vlm_config(tmp_path):
    from mathvlm import config as mc
    from mathvlm.train import build, loop

    config = mc.defaults()
    config.model = mc.ConfigDict({"name": "vlm", "vision_preset": "tiny", "decoder_preset": "tiny",
                                  "decoder": {"vocab_size": 260}, "image_token_id": 259})
    config.data = mc.ConfigDict({"source": "engine", "tokenizer": "bytes", "template": "vicuna_v1",
                                 "image_size": 32, "image_preprocess": "clip", "batch_size": 4, "seq_len": 256})
    config.eval.max_new_tokens = 4
    config.eval.evaluators = ({"name": "engine_heldout", "num_examples": 2, "image_size": 48,
                               "versions": ("vision_dominant", "text_only")},)
    evaluators = loop.make_evaluators(config, workdir=str(tmp_path))
    assert evaluators[0].batch_size == 16 and evaluators[0].workdir == str(tmp_path)  # the predictor's
    predictor = evaluators[0].predict_fn
    assert (predictor.template, predictor.image_size, predictor.tokenizer.image_id) == ("vicuna_v1", 32, 259)
    metrics = loop.evaluate(evaluators, build.build_model(config.model, 0))
    assert {"engine/accuracy", "engine/version/vision_dominant", "engine/version/text_only"} <= set(metrics)
    assert (tmp_path / "engine.json").exists()
