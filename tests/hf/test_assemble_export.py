"""``python -m mathvlm.tools.convert build-vlm`` (a LLaVA folder from a vision folder + an LLM folder) and
``export`` (a training run → a transformers folder), against transformers on tiny models."""

import json
import os

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from mathvlm import config as mc
from mathvlm import hf, main, recipes, sharding
from mathvlm.tools import convert
from mathvlm.data import templates
from mathvlm.hf import assemble, export
from mathvlm.models.projectors import GatedProjector, MLPProjector
from mathvlm.models.vlm import VLM

torch = pytest.importorskip("torch")
import transformers as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = ["What is the area of the circle? The radius is 3, so the area is 9 pi.",
          "A chat between a curious user and an assistant. USER: ASSISTANT: system helpful"] * 20


def _tokenizer(folder, *, specials, vocab_size, **tokens):
    """A byte-level BPE tokenizer folder (as a released LLM's, minus the size)."""
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)
    fast.save_pretrained(folder)
    return len(fast)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Released-part stand-ins: a CLIP vision tower (with its image processor), a SigLIP dual encoder,
    a Mistral LLM whose vocabulary has room for ``<image>``, and a ChatML Qwen2 whose has not."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    clip = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, image_size=28, patch_size=14)
    tf.CLIPVisionModel(clip).save_pretrained(root / "clip")
    with open(root / "clip" / "preprocessor_config.json", "w") as f:
        json.dump(assemble.image_processor_config("clip", 28), f)
    siglip = tf.SiglipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=14),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=64))
    tf.SiglipModel(siglip).save_pretrained(root / "siglip")

    _tokenizer(root / "mistral", specials=["<unk>", "<s>", "</s>"], vocab_size=300,
               bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tf.MistralForCausalLM(tf.MistralConfig(
        vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=4096)).save_pretrained(root / "mistral")
    n = _tokenizer(root / "qwen2", specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                   vocab_size=300, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tf.Qwen2ForCausalLM(tf.Qwen2Config(
        vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        rope_theta=1e6)).save_pretrained(root / "qwen2")
    return {name: str(root / name) for name in ("clip", "siglip", "mistral", "qwen2")}


def _run(argv, capsys) -> dict:
    convert.main(argv)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _torch_logits(model, tokens, images, **kw):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens), **kw,
                     pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).logits.numpy()


def test_build_vlm_clip_mistral_loads_in_transformers(parts, tmp_path, capsys):
    out = str(tmp_path / "vlm")
    summary = _run(["build-vlm", "--vision", parts["clip"], "--llm", parts["mistral"],
                    "--projector", "mlp2x_gelu", "--out", out], capsys)
    config = json.loads(open(os.path.join(out, "config.json")).read())
    image_id = config["image_token_index"]
    assert summary["image_token_added"] and summary["vocab_size"] == [384, 384]
    assert config["mathvlm_template"] == "vicuna_v1" and config["projector_type"] == "mlp2x_gelu"
    assert config["text_config"]["vocab_size"] == 384 and summary["transformers_loadable"]

    tok = tf.AutoTokenizer.from_pretrained(out)
    assert tok.encode("the <image> area", add_special_tokens=False).count(image_id) == 1
    assert tok.convert_tokens_to_ids("<image>") == image_id
    # The LlavaProcessor expands one <image> to the model's tokens per image (4 patches − CLS → 4).
    processor = tf.AutoProcessor.from_pretrained(out)
    ids = processor(text="what <image> is", images=np.zeros((40, 30, 3), np.uint8))["input_ids"][0]
    assert list(ids).count(image_id) == summary["tokens_per_image"] == 4

    torch_model = tf.LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    model = hf.from_pretrained(out)
    assert isinstance(model, VLM) and isinstance(model.projector, MLPProjector)
    assert model.config.image_token_id == image_id and model.config.tokens_per_image == 4
    rng = np.random.RandomState(0)
    text = tok.encode(" USER: what is the area ASSISTANT:", add_special_tokens=False)
    tokens = np.array([text[:3] + [image_id] * 4 + text[3:]])
    images = rng.randn(1, 28, 28, 3).astype(np.float32)
    diff = float(np.abs(np.asarray(model(tokens, images)) - _torch_logits(torch_model, tokens, images)).max())
    print(f"build-vlm clip+mistral: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4


def test_build_vlm_siglip_qwen2_gated(parts, tmp_path, capsys):
    out = str(tmp_path / "puma")
    summary = _run(["build-vlm", "--vision", parts["siglip"], "--llm", parts["qwen2"],
                    "--projector", "gated", "--out", out, "--seed", "3", "--max-shard-size", "100KB"],
                   capsys)
    old_vocab = summary["vocab_size"][0]
    assert summary["vocab_size"][1] == 64 * -(-(old_vocab + 1) // 64)     # grown for <image>
    assert summary["shards"] >= 2 and "model.safetensors.index.json" in summary["files"]
    assert summary["template"] == "chatml" and not summary["transformers_loadable"]
    model = hf.from_pretrained(out)
    assert isinstance(model.projector, GatedProjector)
    assert model.config.image_token_id == summary["image_token_index"] == old_vocab
    # SigLIP has no class token: "default" drops the first patch (Math-PUMA's 729 − 1).
    assert model.config.feature_strategy == "drop_first" and model.config.tokens_per_image == 3

    # The decoder and the tower are the source folders' (the new embedding row is the mean).
    llm = load_file(os.path.join(parts["qwen2"], "model.safetensors"))
    vision = load_file(os.path.join(parts["siglip"], "model.safetensors"))
    embed = np.asarray(model.decoder.embed_tokens.embedding[...])
    np.testing.assert_array_equal(embed[:old_vocab], llm["model.embed_tokens.weight"])
    np.testing.assert_allclose(embed[old_vocab:], np.broadcast_to(
        llm["model.embed_tokens.weight"].mean(0), embed[old_vocab:].shape), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(model.decoder.layers[1].mlp.down_proj.kernel[...]),
                                  llm["model.layers.1.mlp.down_proj.weight"].T)
    np.testing.assert_array_equal(np.asarray(model.vision_tower.layers[1].mlp.fc1.kernel[...]),
                                  vision["vision_model.encoder.layers.1.mlp.fc1.weight"].T)
    np.testing.assert_array_equal(np.asarray(model.vision_tower.head.probe[...]),
                                  vision["vision_model.head.probe"])
    # Text-only rows are the Qwen2 model's own logits.
    qwen = tf.Qwen2ForCausalLM.from_pretrained(parts["qwen2"], dtype=torch.float32).eval()
    tokens = np.array([[5, 17, 42, 9, 100]])
    with torch.no_grad():
        ref = qwen(input_ids=torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(tokens))[..., :old_vocab], ref, atol=1e-4)
    # The gated folder round-trips through save_pretrained (keys, config, tensors).
    back = tmp_path / "back"
    hf.save_pretrained(model, back)
    again = hf.from_pretrained(back)
    images = np.random.RandomState(0).randn(1, 28, 28, 3).astype(np.float32)
    tokens = np.array([[summary["image_token_index"]] * 3 + [5, 17]])
    np.testing.assert_array_equal(np.asarray(again(tokens, images)), np.asarray(model(tokens, images)))
    written = load_file(back / "model.safetensors")
    assert {"multi_modal_projector.gate.weight", "multi_modal_projector.up.weight",
            "multi_modal_projector.down.weight"} <= set(written)
    assert not any(k.startswith("multi_modal_projector.") and k.endswith("bias") for k in written)

    tok = tf.AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<image>") == old_vocab


def test_llava_folder_holds_a_calibrated_siglip_vlm(tmp_path):
    """A VLM trained with ``feature_norm: calibrated`` on a SigLIP tower (``drop_cls`` keeps every
    patch: LLaVA's "full") is written with its feature statistics and reads back exactly."""
    from flax import nnx

    from mathvlm.models.decoder import DecoderConfig
    from mathvlm.models.vit import VIT_PRESETS, ViTConfig
    from mathvlm.models.vlm import VLMConfig

    config = VLMConfig(vision=ViTConfig(**VIT_PRESETS["siglip-tiny"], num_layers=1),
                       decoder=DecoderConfig(num_layers=1, vocab_size=64), image_token_id=63,
                       feature_norm="calibrated", projector="linear")
    model = VLM(config, rngs=nnx.Rngs(0))
    stats = np.random.RandomState(1).rand(*model.feature_stats[...].shape).astype(np.float32) + 0.5
    model.feature_stats[...] = stats
    summary = hf.save_pretrained(model, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["feature_norm"] == "calibrated" and written["vision_feature_select_strategy"] == "full"
    assert summary["shards"] == 1 and summary["dtype"] == "float32"
    back = hf.from_pretrained(tmp_path)
    assert back.config.tokens_per_image == config.tokens_per_image == 16
    np.testing.assert_array_equal(np.asarray(back.feature_stats[...]), stats)
    tokens = np.array([[63] * 16 + [1, 2]])
    images = np.random.RandomState(0).randn(1, 32, 32, 3).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(back(tokens, images)), np.asarray(model(tokens, images)))


@pytest.mark.parametrize("name", sorted(templates.TEMPLATES))
def test_chat_template_renders_like_the_trainer(parts, name):
    tok = tf.AutoTokenizer.from_pretrained(parts["mistral"])
    conversation = [{"role": "user", "content": "<image>\nWhat is the area?"},
                    {"role": "assistant", "content": "9 pi"},
                    {"role": "user", "content": "And the radius?"},
                    {"role": "assistant", "content": "3"}]
    jinja = assemble.chat_template_jinja(name, "<img>")

    def expected(pieces):
        return "".join(p.text if p.kind == "text" else "<img>" if p.kind == "image" else tok.eos_token
                       for p in pieces)

    assert tok.apply_chat_template(conversation, tokenize=False, chat_template=jinja) == \
        expected(templates.render(conversation, name))
    prompt = tok.apply_chat_template(conversation[:3], tokenize=False, chat_template=jinja,
                                     add_generation_prompt=True)
    assert prompt == expected(templates.render_prompt(conversation[:3], name))


# ------------------------------------------------------------------------------------------ export

def _stage(recipe: str, **changes):
    """A recipe cut to 2 steps of batch 8 with checkpoints at both, no evaluators."""
    config = mc.load(os.path.join(ROOT, "configs", recipe))
    config.unlock()
    config.train.steps, config.data.batch_size, config.train.log_every = 2, 8, 1
    config.optim.warmup_steps, config.optim.lr = 0, 1e-2
    config.checkpoint.every_steps = 1
    config.eval.evaluators = ()
    for key, value in changes.items():
        mc.set_value(config, key, value)
    return config


def _trained(workdir, step=None):
    from mathvlm.train.build import init_model

    config = mc.load_run_config(workdir)
    restore = export.checkpoint_location(workdir, step)
    return init_model(config, sharding.make_mesh(config.mesh), restore=restore)


def _lora_b_max(model) -> float:
    from flax import nnx

    from mathvlm.models.lora import LoRADense

    return max(float(np.abs(np.asarray(m.lora_b[...])).max())
               for _, m in nnx.iter_modules(model) if isinstance(m, LoRADense))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """The text demo's decoder (byte tokenizer: no files) trained 2 steps with rank-4 adapters on q/v;
    returns the workdir, tokens and the logits of the trained model with its adapters."""
    workdir = str(tmp_path_factory.mktemp("text_lora"))
    main.run(_stage("text_demo.py", **{"lora.rank": 4, "lora.alpha": 8.0}), workdir)
    model = _trained(workdir)
    assert _lora_b_max(model) > 0                      # the adapters trained: merging matters
    tokens = np.random.RandomState(0).randint(0, 256, (2, 9))
    return workdir, tokens, np.asarray(model(tokens))


def _llama_logits(folder, tokens):
    torch_model = tf.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch_model(input_ids=torch.tensor(tokens)).logits.numpy()


def test_export_without_merge_lora_is_refused(text_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["export", text_run[0], "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert "pass --merge-lora" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # --step picks checkpoints/<step>; a step never saved is named with the saved ones.
    assert export.checkpoint_location(text_run[0], 1).endswith(os.path.join("checkpoints", "1"))
    with pytest.raises(assemble.ConversionError, match=r"saved steps: \[1, 2\]"):
        export.checkpoint_location(text_run[0], 7)


def test_export_merged_sharded_matches_transformers(text_run, tmp_path, capsys):
    workdir, tokens, ref = text_run
    out = tmp_path / "out"
    summary = _run(["export", workdir, "--out", str(out), "--merge-lora", "--max-shard-size", "100KB"],
                   capsys)
    assert summary["class"] == "LlamaForCausalLM" and summary["lora_merged"] == 4
    assert summary["shards"] >= 2 and summary["dtype"] == "float32" and summary["step"] == 2
    assert summary["tokenizer"] is None and any("'bytes' has no files" in n for n in summary["notes"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == summary["shards"] and not (out / "model.safetensors").exists()
    for shard in shards:
        with safe_open(out / shard, "np") as f:
            sizes = [f.get_tensor(k).nbytes for k in f.keys()]
        assert sum(sizes) <= 100_000 or len(sizes) == 1
    assert index["metadata"]["total_size"] == summary["bytes"]
    diff = float(np.abs(_llama_logits(out, tokens) - ref).max())
    print(f"export text LoRA run, merged, {len(shards)} shards: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4


def test_export_bfloat16(text_run, tmp_path, capsys):
    workdir, tokens, ref = text_run
    out = tmp_path / "out"
    summary = _run(["export", workdir, "--out", str(out), "--merge-lora", "--dtype", "bfloat16"], capsys)
    assert summary["dtype"] == "bfloat16" and summary["shards"] == 1
    with safe_open(out / "model.safetensors", "np") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"bfloat16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    torch_model = tf.LlamaForCausalLM.from_pretrained(out).eval()
    assert torch_model.model.embed_tokens.weight.dtype == torch.bfloat16
    got = _llama_logits(out, tokens)                   # bf16 weights, float32 compute
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    # mathvlm reads the bf16 folder back too.
    np.testing.assert_allclose(np.asarray(hf.from_pretrained(out)(tokens)), got, atol=1e-4)


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory):
    """The tiny MAVIS alignment stage (one decoder and one tower layer) with rank-4 adapters on the
    decoder's q/v, the engine tokenizer, checkpoints at steps 1 and 2."""
    workdir = str(tmp_path_factory.mktemp("align_lora"))
    config = _stage("mavis/align.py:size=tiny", **{
        "lora.rank": 4, "lora.alpha": 8.0, "lora.targets": recipes.DECODER_LORA_TARGETS,
        "train.trainable": "projector,lora", "model.decoder.num_layers": 1})
    config.model.vision.num_layers = 1
    config.data.length_buckets = (config.data.seq_len,)          # one compiled step
    main.run(config, workdir)
    return workdir


@pytest.mark.long
def test_export_vlm_run_loads_in_transformers(vlm_run, tmp_path, capsys):
    out = tmp_path / "out"
    summary = _run(["export", vlm_run, "--out", str(out), "--merge-lora", "--step", "1"], capsys)
    assert summary["class"] == "LlavaForConditionalGeneration" and summary["step"] == 1
    assert summary["tokenizer"].startswith("data.tokenizer=engine") and summary["template"] == "plain"
    assert {"tokenizer.json", "chat_template.jinja", "preprocessor_config.json"} <= set(summary["files"])
    tok = tf.AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids("<image>") == recipes.ENGINE_IMAGE_ID

    model = _trained(vlm_run, step=1)
    assert _lora_b_max(model) > 0
    n = model.config.tokens_per_image
    rng = np.random.RandomState(0)
    tokens = np.array([[recipes.ENGINE_IMAGE_ID] * n + list(rng.randint(10, 1000, 6))])
    images = rng.randn(1, 64, 64, 3).astype(np.float32)
    ref = np.asarray(model(tokens, images))
    torch_model = tf.LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    diff = float(np.abs(_torch_logits(torch_model, tokens, images) - ref).max())
    print(f"export VLM LoRA run (step 1), merged: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4
