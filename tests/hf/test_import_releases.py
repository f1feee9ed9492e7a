"""``python -m mathvlm.tools.convert import`` on tiny random checkpoints written in the exact layouts of the
papers' releases (key names, config fields, shard index, safetensors and ``.bin``), against a PyTorch
forward of the same architecture: transformers' ``LlavaForConditionalGeneration`` for the original
LLaVA layout (after the renames), and for Math-PUMA's ``qwen2vlm`` a SigLIP tower + the gated aligner
(three torch lines) + ``Qwen2ForCausalLM``. Preprocessing is compared with the releases' processors
on real benchmark images."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mathvlm import hf
from mathvlm.tools import convert
from mathvlm.data import images as images_lib
from mathvlm.hf import assemble
from mathvlm.models.projectors import GatedProjector, MLPProjector

torch = pytest.importorskip("torch")
import transformers as tf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REAL_IMAGES = [os.path.join(HERE, "..", "fixtures", "images", n)
               for n in ("math_v_923.jpg", "math_v_1343.jpg")]
CORPUS = ["What is the area of the circle? The radius is 3, so the area is 9 pi.",
          "A chat between a curious user and an assistant. USER: ASSISTANT: system helpful"] * 50
VICUNA = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
          "helpful, detailed, and polite answers to the user's questions.")


def _run(argv, capsys) -> dict:
    convert.main(argv)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _save_shards(state: dict, folder, kind: str, shards: int = 2) -> None:
    """The weights as the releases ship them: ``pytorch_model-0000i-of-0000N.bin`` +
    ``pytorch_model.bin.index.json`` (LLaVA-1.5) or ``model-0000i-of-0000N.safetensors`` + index."""
    from safetensors.torch import save_file

    stem, suffix = ("pytorch_model", "bin") if kind == "bin" else ("model", "safetensors")
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{suffix}"
        part = {k: state[k].contiguous() for k in keys[i::shards]}
        if kind == "bin":
            torch.save(part, os.path.join(folder, name))
        else:
            save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    with open(os.path.join(folder, f"{stem}.{suffix}.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


# ------------------------------------------------------------------------------- original LLaVA

@pytest.fixture(scope="module")
def llava_release(tmp_path_factory):
    """A tiny LLaVA-1.5 release (LlavaLlamaForCausalLM keys and config, sentencepiece LlamaTokenizer,
    no tower weights), the CLIP tower folder it names, and the torch model it came from."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("llava_release")
    (root / "corpus.txt").write_text("\n".join(CORPUS))
    release = root / "release"
    release.mkdir()
    spm.SentencePieceTrainer.train(input=str(root / "corpus.txt"), model_prefix=str(release / "tokenizer"),
                                   vocab_size=100, model_type="bpe", bos_id=1, eos_id=2, unk_id=0,
                                   pad_id=-1, character_coverage=1.0, minloglevel=2)
    os.remove(release / "tokenizer.vocab")
    with open(release / "tokenizer_config.json", "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
                   "legacy": False, "model_max_length": 2048, "padding_side": "right"}, f)
    vocab = 100   # the release's; the reference has room for <image> at id 100 (rows ≥ 100 unused)
    torch.manual_seed(0)
    config = tf.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=14,
                           projection_dim=16),
        text_config=dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         rms_norm_eps=1e-5),
        image_token_index=vocab, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    model = tf.LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.save_pretrained(root / "clip")
    with open(root / "clip" / "preprocessor_config.json", "w") as f:
        json.dump(assemble.image_processor_config("clip", 28), f)

    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.vision_tower."):
            continue        # LLaVA-1.5 releases do not hold the tower
        key = (key.replace("model.language_model.", "model.")
               .replace("model.multi_modal_projector.linear_1.", "model.mm_projector.0.")
               .replace("model.multi_modal_projector.linear_2.", "model.mm_projector.2."))
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            value = value[:vocab]
        state[key] = value.clone()
    text = config.text_config.to_dict()
    release_config = {
        "_name_or_path": "./checkpoints/vicuna-tiny-v1.5", "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava", **{k: text[k] for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "hidden_act")},
        "vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "tie_word_embeddings": False, "rope_theta": 10000.0, "torch_dtype": "float32",
        "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad", "mm_hidden_size": 32,
        "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "tune_mm_mlp_adapter": False,
        "use_mm_proj": True}
    folders = {}
    for kind in ("bin", "safetensors"):
        folder = root / f"release_{kind}"
        folder.mkdir()
        for name in ("tokenizer.model", "tokenizer_config.json"):
            (folder / name).write_bytes((release / name).read_bytes())
        with open(folder / "config.json", "w") as f:
            json.dump(release_config, f)
        _save_shards(state, folder, kind)
        folders[kind] = str(folder)
    return {"model": model, "vocab": vocab, "clip": str(root / "clip"), **folders}


@pytest.mark.parametrize("kind", ["bin", "safetensors"])
def test_import_llava_original_matches_the_torch_model(llava_release, kind, tmp_path, capsys):
    out = str(tmp_path / "imported")
    summary = _run(["import", "--format", "llava-original", llava_release[kind],
                    "--vision", llava_release["clip"], "--out", out], capsys)
    vocab = llava_release["vocab"]
    assert summary["command"] == "import" and summary["image_token_index"] == vocab
    assert summary["vocab_size"] == [vocab, 128] and summary["template"] == "vicuna_v1"
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["mathvlm_release"]["format"] == "llava-original"
    assert config["mathvlm_image_preprocess"] == "clip"

    model = hf.from_pretrained(out)
    assert isinstance(model.projector, MLPProjector) and model.config.tokens_per_image == 4
    tok = tf.AutoTokenizer.from_pretrained(out)
    text = tok.encode("USER: what is the area ASSISTANT:")
    tokens = np.array([text[:3] + [vocab] * 4 + text[3:]])
    pixels = np.random.RandomState(0).randn(1, 28, 28, 3).astype(np.float32)
    with torch.no_grad():
        expected = llava_release["model"](
            input_ids=torch.tensor(tokens), pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2))
        ).logits.numpy()[..., :vocab]
    ours = np.asarray(model(tokens, pixels))[..., :vocab]
    print(f"llava-original ({kind}): max |Δlogits| = {np.abs(ours - expected).max():.2e}")
    assert np.abs(ours - expected).max() <= 1e-4
    # The folder is also a transformers LLaVA folder (what llava-hf's conversion writes).
    reloaded = tf.LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = reloaded(input_ids=torch.tensor(tokens),
                          pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2))).logits.numpy()
    assert np.abs(theirs[..., :vocab] - expected).max() <= 1e-4

    # Vicuna v1 exactly as LLaVA's conv_vicuna_v1 renders a first turn with an image.
    prompt = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat is x?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt == f"{VICUNA} USER: <image>\nWhat is x? ASSISTANT:"


def test_llava_original_preprocessing_is_the_releases_pad_then_clip(llava_release, tmp_path, capsys):
    """LLaVA's eval does ``expand2square(image, tuple(int(x*255) for x in mean))`` then the CLIP
    processor; the imported folder's processor, and mathvlm's own preprocessing, give the same pixels."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out = str(tmp_path / "imported")
    _run(["import", "--format", "llava-original", llava_release["safetensors"],
          "--vision", llava_release["clip"], "--out", out], capsys)
    processor = tf.AutoImageProcessor.from_pretrained(out)
    clip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = type(processor).from_dict({**processor.to_dict(), "size": {"shortest_edge": 336},
                                           "crop_size": {"height": 336, "width": 336}})
    for path in REAL_IMAGES:
        image = Image.open(path).convert("RGB")
        assert image.size[0] != image.size[1]
        mean = tuple(int(x * 255) for x in images_lib.CLIP_MEAN)
        side = max(image.size)
        square = Image.new("RGB", (side, side), mean)
        square.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
        release = clip(images=square, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        folder = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        ours = images_lib.preprocess(path, "clip", 336)
        assert np.abs(folder - release).max() <= 1e-4, path
        assert np.abs(ours - release).max() <= 1e-4, path


def test_import_llava_original_refuses_what_it_cannot_read(llava_release, tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main(["import", "--format", "llava-original", llava_release["safetensors"],
                      "--out", str(tmp_path / "x")])
    assert "pass --vision DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.main(["import", "--format", "puma-qwen2vlm", llava_release["safetensors"],
                      "--out", str(tmp_path / "y")])
    assert "is not the Math-PUMA Qwen2VL" in capsys.readouterr().err
    # A stray tensor (another layout) is named, not dropped.
    stray = tmp_path / "stray"
    stray.mkdir()
    for name in os.listdir(llava_release["safetensors"]):
        (stray / name).write_bytes(open(os.path.join(llava_release["safetensors"], name), "rb").read())
    from safetensors.numpy import save_file

    save_file({"model.image_newline": np.zeros(4, np.float32)}, str(stray / "extra.safetensors"))
    index = json.load(open(stray / "model.safetensors.index.json"))
    index["weight_map"]["model.image_newline"] = "extra.safetensors"
    json.dump(index, open(stray / "model.safetensors.index.json", "w"))
    with pytest.raises(SystemExit):
        convert.main(["import", "--format", "llava-original", str(stray), "--vision",
                      llava_release["clip"], "--out", str(tmp_path / "z")])
    assert "model.image_newline" in capsys.readouterr().err


# ------------------------------------------------------------------------------ Math-PUMA qwen2vlm

class GatedAligner(torch.nn.Module):
    """Math-PUMA's ``Qwen2vlmAligner``: ``down(gelu(gate(x)) * up(x))``, no biases."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.gate_proj = torch.nn.Linear(d_in, d_out, bias=False)
        self.up_proj = torch.nn.Linear(d_in, d_out, bias=False)
        self.down_proj = torch.nn.Linear(d_out, d_out, bias=False)

    def forward(self, x):
        return self.down_proj(torch.nn.functional.gelu(self.gate_proj(x)) * self.up_proj(x))


@pytest.fixture(scope="module")
def puma_release(tmp_path_factory):
    """A tiny Math-PUMA_Qwen2VL release: qwen2vlm config, ``vision_model.vision_model.*`` (with the
    unused pooling head), ``aligner.*``, ``language_model.*`` (tied embeddings, as the 1.5B), a
    tokenizer with ``<|image|>``, SigLIP's preprocessor config; and its torch parts."""
    import tokenizers

    root = tmp_path_factory.mktemp("puma_release")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>")
    fast.save_pretrained(root)
    image_id = fast.convert_tokens_to_ids("<|image|>")
    torch.manual_seed(1)
    vision_config = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                          num_attention_heads=2, image_size=28, patch_size=14)
    tower = tf.SiglipVisionModel(vision_config).eval()
    text_config = tf.Qwen2Config(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=True, rope_theta=1e6)
    llm = tf.Qwen2ForCausalLM(text_config).eval()
    aligner = GatedAligner(32, 64).eval()
    # transformers 4.42 (the release's) nests SigLIP's tensors under vision_model. inside the tower.
    state = {**{f"vision_model.vision_model.{k}": v for k, v in tower.state_dict().items()},
             **{f"aligner.{k}": v for k, v in aligner.state_dict().items()},
             **{f"language_model.{k}": v for k, v in llm.state_dict().items()
                if k != "lm_head.weight"}}
    assert any(k.startswith("vision_model.vision_model.head.") for k in state)
    _save_shards(state, root, "safetensors")
    vision_dict, text_dict = vision_config.to_dict(), text_config.to_dict()
    vision_dict["model_type"], text_dict["model_type"] = "siglip_vision_model", "qwen2"
    with open(root / "config.json", "w") as f:
        json.dump({"architectures": ["Qwen2vlmForConditionalGeneration"], "model_type": "qwen2vlm",
                   "image_token_index": image_id, "ignore_index": -100, "projector_hidden_act": "gelu",
                   "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
                   "vision_config": vision_dict, "text_config": text_dict,
                   "tie_word_embeddings": True, "torch_dtype": "float32"}, f)
    with open(root / "preprocessor_config.json", "w") as f:
        json.dump({"image_processor_type": "SiglipImageProcessor", "do_resize": True,
                   "size": {"height": 28, "width": 28}, "resample": 3, "do_rescale": True,
                   "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3,
                   "image_std": [0.5] * 3, "processor_class": "Qwen2vlmProcessor"}, f)
    return {"folder": str(root), "tower": tower, "aligner": aligner, "llm": llm, "image_id": image_id}


def test_import_puma_qwen2vlm_matches_the_torch_model(puma_release, tmp_path, capsys):
    out = str(tmp_path / "imported")
    summary = _run(["import", "--format", "puma-qwen2vlm", puma_release["folder"], "--out", out], capsys)
    image_id = puma_release["image_id"]
    assert summary["image_token"] == "<|image|>" and summary["image_token_index"] == image_id
    assert not summary["image_token_added"] and summary["template"] == "chatml"
    model = hf.from_pretrained(out)
    assert isinstance(model.projector, GatedProjector)
    n = model.config.tokens_per_image
    assert n == 3          # 2×2 patches, the first one dropped as Math-PUMA's "default" does

    tok = tf.AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat is the area?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "<|image|>\nWhat is the area?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(prompt, add_special_tokens=False)
    assert ids.count(image_id) == 1
    pixels = np.random.RandomState(1).randn(1, 28, 28, 3).astype(np.float32)

    # The release's forward: one <|image|> replaced by the aligned features (Qwen2vlm's merge).
    with torch.no_grad():
        hidden = puma_release["tower"](torch.tensor(pixels.transpose(0, 3, 1, 2)),
                                       output_hidden_states=True).hidden_states[-2][:, 1:]
        features = puma_release["aligner"](hidden)[0]
        embeds = puma_release["llm"].get_input_embeddings()(torch.tensor([ids]))[0]
        at = ids.index(image_id)
        merged = torch.cat([embeds[:at], features, embeds[at + 1:]])[None]
        expected = puma_release["llm"](inputs_embeds=merged).logits.numpy()
    expanded = np.array([ids[:at] + [image_id] * n + ids[at + 1:]])
    ours = np.asarray(model(expanded, pixels))
    assert ours.shape == expected.shape
    print(f"puma-qwen2vlm: max |Δlogits| = {np.abs(ours - expected).max():.2e}")
    assert np.abs(ours - expected).max() <= 1e-4


def test_puma_preprocessing_is_siglip_resize(puma_release, tmp_path, capsys):
    out = str(tmp_path / "imported")
    _run(["import", "--format", "puma-qwen2vlm", puma_release["folder"], "--out", out], capsys)
    assert json.load(open(os.path.join(out, "config.json")))["mathvlm_image_preprocess"] == "siglip"
    processor = tf.AutoImageProcessor.from_pretrained(out)
    processor = type(processor).from_dict({**processor.to_dict(), "size": {"height": 384, "width": 384}})
    for path in REAL_IMAGES:
        release = processor(images=Image.open(path).convert("RGB"),
                            return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        assert np.abs(images_lib.preprocess(path, "siglip", 384) - release).max() <= 1e-4, path


# ----------------------------------------------------------------- imported folder → paper protocol

PROTOCOL_DATA = os.path.join(HERE, "..", "eval", "fixtures", "protocols", "mathvista")


@pytest.mark.parametrize("release, protocol", [("llava", "math_llava_mathvista.py"),
                                               ("puma", "puma_mathvista.py")])
def test_an_imported_release_runs_its_papers_protocol(llava_release, puma_release, release, protocol,
                                                      tmp_path, capsys):
    """The first thing a user does with a release: import it, run the paper's protocol on it, re-score
    the official-format responses with ``score``."""
    from mathvlm import evaluate

    out = str(tmp_path / "imported")
    if release == "llava":
        _run(["import", "--format", "llava-original", llava_release["safetensors"],
              "--vision", llava_release["clip"], "--out", out], capsys)
    else:
        _run(["import", "--format", "puma-qwen2vlm", puma_release["folder"], "--out", out], capsys)
    work = tmp_path / "eval"
    config = os.path.join(HERE, "..", "..", "configs", "eval", protocol)
    assert evaluate.main(["run", "--config", config, "--hf", out, "--data", PROTOCOL_DATA,
                          "--workdir", str(work), "--max-new-tokens", "6"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = json.load(open(work / "mathvista.json"))["overall"]
    assert metrics["mathvista/accuracy"] == table["accuracy"]
    responses = json.load(open(work / "mathvista_responses.json"))
    assert len(responses) == table["total"] > 0
    for record in responses.values():
        assert {"pid", "query", "response", "extraction", "prediction", "true_false"} <= set(record)
        # Math-LLaVA shows the choices; Math-PUMA's prompt does not.
        if record["choices"]:
            assert ("Choices:" in record["query"]) == (release == "llava")
    assert evaluate.main(["score", "--benchmark", "mathvista", "--predictions",
                          str(work / "mathvista_responses.json")]) == 0
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (rescored["correct"], rescored["total"]) == (table["correct"], table["total"])
