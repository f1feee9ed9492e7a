"""The miniature released-model folders (tests/rehearsal/miniature.py): each loads in its transformers
class and in mathvlm with equal outputs (float32, ≤ 1e-4), keeps the released config fields, and its
tokenizer loads in mathvlm's HFTokenizer and covers the data engine's text."""

import json
import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mathvlm import hf  # noqa: E402
from mathvlm.data import templates  # noqa: E402
from mathvlm.data.tokenization import HFTokenizer  # noqa: E402
from tests.rehearsal import miniature  # noqa: E402

TOL = 1e-4
PROMPT = "USER: What is 3 + 4? ASSISTANT: 7"
EXTRA = {"qwen2_tied": lambda out, seed=0: miniature.make_qwen2(out, seed, tied=True),
         "siglip_vision": lambda out, seed=0: miniature.make_siglip_so400m(out, seed, vision_only=True)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("miniature")
    miniature.corpus()                     # engine import + corpus once, outside the timings
    built, seconds = {}, {}
    for name, make in {**miniature.MAKERS, **EXTRA}.items():
        start = time.perf_counter()
        built[name] = make(str(root / name))
        seconds[name] = time.perf_counter() - start
    print("maker seconds:", {k: round(v, 2) for k, v in seconds.items()})
    return built


def _config(folder):
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


def _maxdiff(a, b):
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def _image(size=80, seed=0):
    """A PIL diagram-like picture (not square-sized, so the processors resize and crop)."""
    from PIL import Image, ImageDraw
    rng = np.random.RandomState(seed)
    image = Image.new("RGB", (size, size - 10), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0, x1, y1 = rng.randint(0, size - 10, 4)
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(c) for c in rng.randint(0, 255, 3)), width=2)
    return image


def test_sizes_are_miniature(folders):
    for name, folder in folders.items():
        config = _config(folder)
        parts = [config.get("text_config", config), config.get("vision_config", {})]
        for part in parts:
            assert part.get("vocab_size", 0) <= 512, name
            assert part.get("hidden_size", 0) <= 64, name
            assert part.get("num_hidden_layers", 0) <= 2, name
            assert part.get("intermediate_size", 0) <= 128, name
        assert os.path.isfile(os.path.join(folder, "model.safetensors")), name
        assert not any(f.endswith((".bin", ".pt", ".pth")) for f in os.listdir(folder)), name


# ------------------------------------------------------------------------------------ decoders

DECODERS = {  # name → (mathvlm arch, kv heads, tied, θ, qkv bias, sliding window, rms eps)
    "vicuna": ("llama", 4, False, 1e4, False, None, 1e-5),
    "mistral": ("mistral", 2, False, 1e4, False, 4096, 1e-5),
    "qwen2": ("qwen2", 2, False, 1e6, True, None, 1e-6),
    "qwen2_tied": ("qwen2", 2, True, 1e6, True, None, 1e-6),
}


def _prompt_batch(tok):
    """Two prompts from the folder's own tokenizer, the shorter left-padded."""
    if tok.chat_template:
        texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                         add_generation_prompt=True)
                 for q in ("What is 3 + 4?", "Find ∠ABC if ∠ABD = 30° and ∠DBC = 45°.")]
    else:
        texts = [templates.VICUNA_SYSTEM + " " + PROMPT,
                 "USER: Find ∠ABC if ∠ABD = 30° and ∠DBC = 45°. ASSISTANT:"]
    rows = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tokens = np.full((2, width), pad)
    mask = np.zeros((2, width), np.int64)
    for i, row in enumerate(rows):
        tokens[i, width - len(row):], mask[i, width - len(row):] = row, 1
    assert mask.sum(1).min() < width          # one row is padded
    return tokens, mask


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_matches_transformers(folders, name):
    folder = folders[name]
    arch, kv, tied, theta, qkv_bias, window, eps = DECODERS[name]
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(torch_model).__name__ == _config(folder)["architectures"][0]
    model = hf.from_pretrained(folder)
    c = model.config
    assert (c.arch, c.num_heads, c.num_kv_heads, c.tie_embeddings, c.rope_theta, c.qkv_bias,
            c.o_bias, c.sliding_window, c.rms_eps) == (arch, 4, kv, tied, theta, qkv_bias, False,
                                                       window, eps)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    tokens, mask = _prompt_batch(tok)
    with torch.no_grad():
        ref = torch_model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(model(tokens, attention_mask=mask))
    diff = float(np.abs(got - ref)[mask.astype(bool)].max())
    print(f"{name}: max |logit diff| = {diff:.2e}")
    assert diff <= TOL


def test_released_decoder_fields(folders):
    vicuna, mistral = _config(folders["vicuna"]), _config(folders["mistral"])
    qwen, qwen_tied = _config(folders["qwen2"]), _config(folders["qwen2_tied"])
    assert vicuna["num_key_value_heads"] == vicuna["num_attention_heads"]   # LLaMA-2-13B: no GQA
    assert (vicuna["max_position_embeddings"], vicuna["pad_token_id"]) == (4096, 0)
    assert (mistral["sliding_window"], mistral["max_position_embeddings"]) == (4096, 32768)
    assert mistral["num_key_value_heads"] < mistral["num_attention_heads"]
    assert qwen["tie_word_embeddings"] is False and qwen_tied["tie_word_embeddings"] is True
    assert qwen["use_sliding_window"] is False
    for config in (vicuna, mistral, qwen):
        assert config["dtype"] == "float32" and config["hidden_act"] == "silu"


# ------------------------------------------------------------------------------------ tokenizers

def _round_trips(tok, texts):
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text, text


@pytest.mark.parametrize("name", ["vicuna", "mistral", "llava_15"])
def test_llama_tokenizer(folders, name):
    tok = HFTokenizer(folders[name])
    hf_tok = tok.hf
    assert [hf_tok.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    assert hf_tok.convert_tokens_to_ids("<0x41>") == 3 + 0x41            # byte-fallback pieces
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode(PROMPT)
    assert tok.decode(ids) == PROMPT
    assert hf_tok.convert_ids_to_tokens(ids)[:2] == ["▁", "U"]            # SentencePiece ▁ prefix
    assert hf_tok(PROMPT)["input_ids"] == [1] + ids                       # add_bos_token, no eos
    assert all(len(hf_tok.convert_ids_to_tokens(tok.encode(d))) == 2 for d in "0123456789")  # ▁ + digit
    # Characters outside the pieces fall back to bytes, never to <unk>.
    odd = "△ABC ∥ DE, ½ 😀"
    assert 0 not in tok.encode(odd) and tok.decode(tok.encode(odd)) == odd
    _round_trips(tok, miniature.corpus())
    config = json.load(open(os.path.join(folders[name], "tokenizer_config.json")))
    assert (config["add_bos_token"], config["add_eos_token"], config["legacy"]) == (True, False, False)
    if name == "llava_15":
        assert tok.image_id == hf_tok.convert_tokens_to_ids("<image>") == 510
        assert tok.pad_id == hf_tok.convert_tokens_to_ids("<pad>") == 511
        assert tok.encode("<image>\nHi")[0] == 510
    else:
        assert hf_tok.pad_token is None and tok.pad_id == tok.eos_id      # as Vicuna ships
        assert tok.image_id is None and tok.vocab_size == miniature.SP_VOCAB


def test_qwen2_tokenizer(folders):
    tok = HFTokenizer(folders["qwen2"])
    hf_tok = tok.hf
    specials = [hf_tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    assert specials == [480, 481, 482] and tok.vocab_size == 483
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (482, 480, None)
    assert tok.decode(tok.encode(PROMPT)) == PROMPT
    _round_trips(tok, miniature.corpus() + ("△ABC ∥ DE, ½ 😀",))
    # ChatML scaffolding is one id each, and the template is Qwen2-Instruct's.
    assert tok.encode("<|im_start|>user\nHi<|im_end|>")[0] == 481
    assert tok.encode("<|im_start|>user\nHi<|im_end|>")[-1] == 482
    text = hf_tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                      add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids, mask, _ = templates.tokenize_pieces(templates.render(
        [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}],
        "chatml"), tok)
    assert tok.decode(ids[mask]) == "7" and ids[mask][-1] == 482


def test_clip_tokenizer(folders):
    tok = HFTokenizer(folders["clip_vit_l_336"])
    hf_tok = tok.hf
    assert type(hf_tok).__name__ == "CLIPTokenizer" and hf_tok.model_max_length == 77
    # The specials are the two highest ids (the legacy eos_token_id-2 config pools at argmax id).
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (510, 511, 511, 512)
    ids = hf_tok(PROMPT)["input_ids"]
    assert ids[0] == 510 and ids[-1] == 511
    for text in miniature.corpus():
        ids = tok.encode(text)
        assert hf_tok.unk_token_id not in ids, text
        assert tok.decode(ids).replace(" ", "") == text.lower().replace(" ", "").replace("\n", "")


def test_siglip_tokenizer(folders):
    tok = HFTokenizer(folders["siglip_so400m"])
    assert type(tok.hf).__name__ == "SiglipTokenizer"
    assert (tok.eos_id, tok.pad_id) == (1, 1)
    ids = tok.encode("the circle has radius 5")
    assert tok.hf.unk_token_id not in ids and tok.decode(ids) == "the circle has radius 5"


# ------------------------------------------------------------------------------------ image towers

def test_clip_model_matches_transformers(folders):
    from mathvlm.models.dual_encoder import DualEncoder, logits_per_image

    folder = folders["clip_vit_l_336"]
    torch_model = transformers.CLIPModel.from_pretrained(folder).eval()
    processor = transformers.CLIPProcessor.from_pretrained(folder)
    model = hf.from_pretrained(folder)
    assert isinstance(model, DualEncoder)
    v = model.vision_model.config
    assert (v.image_size, v.patch_size, v.has_class_token, v.hidden_act) == (56, 14, True, "quick_gelu")
    assert model.text_model.config.eos_token_id == 2 and model.projection_dim == 16
    captions = ["The graph of f(x) = 2·x + 7 passes through (1, 9).", "∠ABC = 30°", PROMPT]
    inputs = processor(text=captions, images=[_image(80, 0), _image(96, 1)], padding=True,
                       return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (2, 3, 56, 56)
    with torch.no_grad():
        ref = torch_model(**inputs)
    images = inputs["pixel_values"].numpy().transpose(0, 2, 3, 1)
    out = model(images, inputs["input_ids"].numpy())
    diffs = {"image": _maxdiff(out["image_embeds"], ref.image_embeds.numpy()),
             "text": _maxdiff(out["text_embeds"], ref.text_embeds.numpy()),
             "logits": _maxdiff(logits_per_image(out), ref.logits_per_image.numpy())}
    print("clip", diffs)
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("name", ["siglip_so400m", "siglip_vision"])
def test_siglip_matches_transformers(folders, name):
    from mathvlm.models.dual_encoder import DualEncoder, logits_per_image
    from mathvlm.models.vit import ViT

    folder = folders[name]
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=[_image(80, 2), _image(90, 3)], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (2, 3, 62, 62)
    images = pixels.numpy().transpose(0, 2, 3, 1)
    model = hf.from_pretrained(folder)
    if name == "siglip_vision":
        torch_model = transformers.SiglipVisionModel.from_pretrained(folder).eval()
        assert isinstance(model, ViT)
        with torch.no_grad():
            ref = torch_model(pixel_values=pixels, output_hidden_states=True)
        last, pooled = model(images)
        diffs = {"last": _maxdiff(last, ref.last_hidden_state.numpy()),
                 "pooled": _maxdiff(pooled, ref.pooler_output.numpy()),
                 "hidden[-2]": _maxdiff(model.features(images, -2, "keep_all"),
                                        ref.hidden_states[-2].numpy())}
        v = model.config
    else:
        torch_model = transformers.SiglipModel.from_pretrained(folder).eval()
        assert isinstance(model, DualEncoder)
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        tokens = tok(["the circle has radius 5", "a parabola"], padding="max_length",
                     max_length=64, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = torch_model(input_ids=tokens, pixel_values=pixels)
        out = model(images, tokens.numpy())
        diffs = {"image": _maxdiff(out["image_embeds"], ref.image_embeds.numpy()),
                 "text": _maxdiff(out["text_embeds"], ref.text_embeds.numpy()),
                 "logits": _maxdiff(logits_per_image(out), ref.logits_per_image.numpy())}
        v = model.vision_model.config
    # so400m's quirk kept: 62 = 4·14 + 6, so 16 patches and the last 6 pixels unused; no class token.
    assert (v.image_size, v.patch_size, v.num_patches, v.has_class_token, v.use_head) == \
        (62, 14, 16, False, True)
    print(name, diffs)
    assert max(diffs.values()) <= TOL, diffs


def test_processors_match_mathvlm_preprocessing(folders):
    """The folders' preprocessor_config.json does what mathvlm's clip / siglip preprocessing does."""
    from mathvlm.data import images as mimages

    square = _image(84, 4).resize((84, 84))
    clip = transformers.AutoImageProcessor.from_pretrained(folders["clip_vit_l_336"])
    ref = clip(images=[square], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    got = mimages.clip_preprocess(square, 56, pad_to_square=False)
    siglip = transformers.AutoImageProcessor.from_pretrained(folders["siglip_so400m"])
    ref_s = siglip(images=[square], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    got_s = mimages.siglip_preprocess(square, 62)
    diffs = {"clip": _maxdiff(got, ref), "siglip": _maxdiff(got_s, ref_s)}
    print("preprocess", diffs)
    assert max(diffs.values()) <= 1e-3, diffs


# ------------------------------------------------------------------------------------ LLaVA

def test_llava_matches_transformers(folders):
    from mathvlm.models.vlm import VLM

    folder = folders["llava_15"]
    config = _config(folder)
    assert (config["image_token_index"], config["pad_token_id"], config["text_config"]["vocab_size"],
            config["vision_feature_layer"], config["vision_feature_select_strategy"]) == \
        (510, 511, 512, -2, "default")
    torch_model = transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is 3 + 4?"}], add_generation_prompt=True)
    assert prompt == templates.VICUNA_SYSTEM + " USER: <image>\nWhat is 3 + 4? ASSISTANT:"
    inputs = processor(images=[_image(80, 5)], text=[prompt], return_tensors="pt")
    tokens = inputs["input_ids"].numpy()
    assert (tokens == 510).sum() == 16                       # 4×4 patches (+ CLS − CLS)
    model = hf.from_pretrained(folder)
    assert isinstance(model, VLM)
    assert (model.config.tokens_per_image, model.config.image_token_id) == (16, 510)
    assert model.config.decoder.num_kv_heads == model.config.decoder.num_heads == 4
    with torch.no_grad():
        ref = torch_model(**inputs).logits.numpy()
    images = inputs["pixel_values"].numpy().transpose(0, 2, 3, 1)
    diff = _maxdiff(model(tokens, images), ref)
    print(f"llava max |logit diff| = {diff:.2e}")
    assert diff <= TOL

    # mathvlm's own Vicuna v1 rendering with the folder's tokenizer: 16 image slots, answer + </s>.
    tok = HFTokenizer(folder)
    ids, mask, n_images = templates.tokenize_pieces(templates.render(
        [{"role": "user", "content": "<image>\nWhat is 3 + 4?"}, {"role": "assistant", "content": "7"}],
        "vicuna_v1"), tok, num_image_tokens=16)
    assert n_images == 1 and (ids == 510).sum() == 16
    assert tok.decode(ids[mask]).strip() == "7" and ids[mask][-1] == 2


def test_same_seed_same_folder(folders, tmp_path):
    """Byte-identical folders for a seed (tokenizer training included); another seed, other weights."""
    for name in ("vicuna", "qwen2", "clip_vit_l_336", "siglip_so400m"):
        again = miniature.MAKERS[name](str(tmp_path / name))
        files = sorted(os.listdir(folders[name]))
        assert files == sorted(os.listdir(again)), name
        for file in files:
            with open(os.path.join(folders[name], file), "rb") as fa, \
                    open(os.path.join(again, file), "rb") as fb:
                assert fa.read() == fb.read(), (name, file)
    other = miniature.make_vicuna(str(tmp_path / "seed1"), seed=1)
    with open(os.path.join(other, "model.safetensors"), "rb") as f1, \
            open(os.path.join(folders["vicuna"], "model.safetensors"), "rb") as f0:
        assert f1.read() != f0.read()
