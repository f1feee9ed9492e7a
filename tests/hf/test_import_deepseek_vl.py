"""DeepSeek-VL hybrid (Math-PUMA DeepSeek-Math-VL): a tiny random transformers
``DeepseekVLHybridForConditionalGeneration`` written in the ORIGINAL release layout (keys and
``multi_modality`` config inverted here by hand, independently of the importer), imported, loaded in
JAX and compared logit by logit; plus preprocessing against torch / transformers and the template."""

import json
import os

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mathvlm import hf  # noqa: E402
from mathvlm.hf.assemble import ConversionError  # noqa: E402
from mathvlm.hf.deepseek_vl import CHAT_TEMPLATE, import_deepseek_vl, preprocess_image  # noqa: E402
from mathvlm.models.hybrid_vision import CLIP_MEAN, CLIP_STD, HybridVLM  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "images")
IMG = 100                     # image token id inside the tiny vocabulary
SAM = {"model_type": "sam_vision_model", "hidden_size": 16, "output_channels": 8, "mlp_dim": 64,
       "image_size": 64, "patch_size": 8, "num_attention_heads": 2, "num_hidden_layers": 2,
       "window_size": 3, "global_attn_indexes": [1]}          # 8×8 grid: windows of 3 pad to 9
SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
          "image_size": 32, "patch_size": 8, "num_attention_heads": 2, "num_hidden_layers": 2,
          "hidden_act": "gelu", "vision_use_head": False}    # 4×4 = 16 image tokens
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128,
         "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}


def release_config():
    """The release's config.json for the tiny model (tower sizes as preset overrides)."""
    return {
        "model_type": "multi_modality", "architectures": ["MultiModalityCausalLM"],
        "vision_config": {"cls": "HybridVisionTower", "model_type": "vision", "params": {
            "concat_type": "tuple", "freeze_high": True, "freeze_low": True,
            "high_res_cfg": {"model_name": "sam_b_downsample", "image_size": 64, "select_layer": -1,
                             "select_feature": "same", "pixel_mean": list(CLIP_MEAN),
                             "pixel_std": list(CLIP_STD), "output_dim": 32, "ckpt_path": "",
                             "width": 16, "layers": 2, "heads": 2, "patch_size": 8, "window_size": 3,
                             "global_attn_indexes": [1], "prompt_embed_dim": 8,
                             "downsample_channels": [16, 32]},
            "low_res_cfg": {"model_name": "siglip_large_patch16_384", "image_size": 32,
                            "select_layer": -1, "select_feature": "same", "pixel_mean": [0.5] * 3,
                            "pixel_std": [0.5] * 3, "output_dim": 32, "ckpt_path": "",
                            "width": 32, "layers": 2, "heads": 2, "patch_size": 8, "mlp_ratio": 2}}},
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner", "params": {
            "depth": 2, "input_dim": 32, "n_embed": 32,
            "projector_type": "low_high_hybrid_split_mlp_gelu"}},
        "language_config": {k: v for k, v in LLAMA.items() if k != "tie_word_embeddings"},
        "torch_dtype": "float32"}


_NECK = {"conv1": "0", "layer_norm1": "1", "conv2": "2", "layer_norm2": "3"}


def to_release(state):
    """transformers keys → release keys (the inverse of the conversion, written out independently)."""
    hi, lo = "vision_model.vision_tower_high.vision_tower.", "vision_model.vision_tower_low.vision_tower."
    out, qkv = {}, {}
    for key, t in state.items():
        parts = key.split(".")
        if key.startswith("model.high_res_vision_model.vision_encoder."):
            rest = parts[3:]
            if rest[0] == "layers":
                n, sub = rest[1], rest[2:]
                sub = (["norm" + sub[0][-1]] + sub[1:]) if sub[0].startswith("layer_norm") else sub
                out[hi + f"blocks.{n}." + ".".join(sub)] = t
            elif rest[0] == "neck":
                out[hi + f"neck.{_NECK[rest[1]]}.{rest[2]}"] = t
            elif rest[0] == "patch_embed":
                out[hi + "patch_embed.proj." + rest[-1]] = t
            else:
                out[hi + ".".join(rest)] = t
        elif key.startswith("model.high_res_vision_neck."):
            out[hi + f"neck_hd.{_NECK[parts[2]]}.{parts[3]}"] = t
        elif key.startswith("model.high_res_vision_proj."):
            out[hi + f"downsamples.{int(parts[2][-1]) - 1}.weight"] = t
        elif key == "model.high_res_vision_alpha":
            out[hi + "hd_alpha_downsamples"] = t
        elif key.startswith("model.vision_model."):
            rest = parts[2:]
            if rest[0] == "embeddings":
                if rest[1] == "position_embedding":
                    out[lo + "pos_embed"] = t[None]
                else:
                    out[lo + "patch_embed.proj." + rest[-1]] = t
            elif rest[0] == "post_layernorm":
                out[lo + "norm." + rest[-1]] = t
            else:
                n, sub = rest[2], rest[3:]
                if sub[0] == "self_attn" and sub[1] in ("q_proj", "k_proj", "v_proj"):
                    qkv.setdefault((n, sub[2]), {})[sub[1][0]] = t
                    continue
                tail = ".".join(sub)
                for ours, theirs in (("self_attn.out_proj.", "attn.proj."),
                                     ("layer_norm1.", "norm1."), ("layer_norm2.", "norm2.")):
                    tail = tail.replace(ours, theirs)
                out[lo + f"blocks.{n}." + tail] = t
        elif key.startswith("model.aligner."):
            name = {"vision_proj": "low_up_proj", "high_res_vision_proj": "high_up_proj",
                    "proj": "layers.1"}[parts[2]]
            out[f"aligner.{name}.{parts[3]}"] = t
        elif key.startswith("model.language_model."):
            out["language_model.model." + key[len("model.language_model."):]] = t
        elif key == "lm_head.weight":
            out["language_model.lm_head.weight"] = t
        else:
            raise AssertionError(key)
    for (n, kind), d in qkv.items():
        out[lo + f"blocks.{n}.attn.qkv.{kind}"] = torch.cat([d["q"], d["k"], d["v"]], 0)
    # Tensors the release stores but never uses (the importer must drop them).
    g = torch.Generator().manual_seed(1)
    for extra, shape in ((lo + "attn_pool.latent", (1, 1, 32)), (lo + "attn_pool.q.weight", (32, 32)),
                         ("vision_model.high_layer_norm.weight", (32,)),
                         ("vision_model.low_layer_norm.bias", (32,))):
        out[extra] = torch.randn(shape, generator=g)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch model, release state dict, root tmp dir)."""
    config = transformers.DeepseekVLHybridConfig(
        text_config=LLAMA, vision_config=SIGLIP, high_res_vision_config=SAM, image_token_id=IMG,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.DeepseekVLHybridForConditionalGeneration(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # the default init leaves SAM ~0 (range 1e-10), rel-pos and alpha 0
        for name, p in model.named_parameters():
            noise = 0.15 * torch.randn(p.shape, generator=g)
            is_norm = "norm" in name and name.endswith("weight") and p.ndim == 1
            p.copy_(1.0 + noise if is_norm else noise)
        model.model.high_res_vision_alpha.fill_(0.8)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return model, to_release(state), tmp_path_factory.mktemp("dsvl")


def write_release(folder, state, *, bin_shards=0, config=None):
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config or release_config(), f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"added_tokens_decoder": {str(IMG): {"content": "<image_placeholder>"}}}, f)
    if not bin_shards:
        save_file(state, os.path.join(folder, "model.safetensors"))
        return folder
    keys = sorted(state)
    weight_map = {}
    for i in range(bin_shards):
        name = f"pytorch_model-{i + 1:05d}-of-{bin_shards:05d}.bin"
        part = {k: state[k] for k in keys[i::bin_shards]}
        torch.save(part, os.path.join(folder, name))
        weight_map.update(dict.fromkeys(part, name))
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return folder


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    high = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
    low = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    tokens = np.concatenate([np.array([[1, 5, 6]] * 2), np.full((2, 16), IMG),
                             rng.integers(2, 99, size=(2, 5))], axis=1)
    return tokens, high, low


def torch_logits(model, tokens, high, low):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens),
                     pixel_values=torch.tensor(low).permute(0, 3, 1, 2),
                     high_res_pixel_values=torch.tensor(high).permute(0, 3, 1, 2)).logits.numpy()


# One compile per shape instead of op-by-op dispatch (module level: reused across tests).
forward = nnx.jit(lambda m, t, im: m(t, im))
generate = nnx.jit(lambda m, t, im, mask: m.generate(t, im, attention_mask=mask, max_new_tokens=4))


def check_parity(model, folder):
    vlm = hf.from_pretrained(folder)
    assert isinstance(vlm, HybridVLM) and vlm.config.tokens_per_image == 16
    tokens, high, low = inputs()
    ours = np.asarray(forward(vlm, tokens, {"high": high, "low": low}))
    ref = torch_logits(model, tokens, high, low)
    diff = float(np.abs(ours - ref).max())
    assert diff <= 1e-4, diff
    # The image really matters (a wrong tower would still pass if features were ignored).
    other = np.asarray(forward(vlm, tokens, {"high": high[::-1], "low": low[::-1]}))
    assert np.abs(other - ours).max() > 1e-2
    return vlm, diff


@pytest.fixture(scope="module")
def imported(tiny):
    """The safetensors release folder imported once with the documented command: (summary, folder)."""
    import contextlib
    import io

    from mathvlm.tools import convert

    _, state, root = tiny
    src = write_release(root / "release_st", state)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        convert.main(["import", "--format", "deepseek-vl", str(src), "--out", str(root / "hf_st")])
    return json.loads(printed.getvalue().strip().splitlines()[-1]), root / "hf_st"


@pytest.fixture(scope="module")
def loaded(imported):
    return hf.from_pretrained(imported[1])


def test_import_safetensors_parity(tiny, imported):
    summary, folder = imported
    json.dumps(summary)
    assert summary["format"] == "deepseek_vl_hybrid" and summary["image_token_id"] == IMG
    assert len(summary["dropped"]) == 4 and summary["tokens_per_image"] == 16
    assert {"config.json", "model.safetensors", "chat_template.jinja",
            "preprocessor_config.json"} <= set(summary["files"])
    _, diff = check_parity(tiny[0], folder)
    print(f"safetensors import: max |Δlogits| = {diff:.2e}")


def test_generate_matches_transformers(tiny, loaded):
    """Greedy generation through VLM's code path gives transformers' tokens."""
    tokens, high, low = inputs()
    mask = np.ones(tokens.shape, bool)
    ours = generate(loaded, tokens, {"high": high, "low": low}, mask)
    with torch.no_grad():
        ref = tiny[0].generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                               pixel_values=torch.tensor(low).permute(0, 3, 1, 2),
                               high_res_pixel_values=torch.tensor(high).permute(0, 3, 1, 2),
                               max_new_tokens=4, do_sample=False, pad_token_id=0)
    np.testing.assert_array_equal(np.asarray(ours.tokens), ref[:, tokens.shape[1]:].numpy())


def test_save_pretrained_roundtrip(tiny, loaded, tmp_path):
    """save_pretrained writes a folder transformers loads with the same logits."""
    hf.save_pretrained(loaded, tmp_path / "again")
    again = transformers.DeepseekVLHybridForConditionalGeneration.from_pretrained(
        tmp_path / "again").eval()
    tokens, high, low = inputs(1)
    ref = torch_logits(tiny[0], tokens, high, low)
    assert np.abs(torch_logits(again, tokens, high, low) - ref).max() <= 1e-5


def test_import_bin_shards_parity(tiny, tmp_path):
    model, state, root = tiny
    src = write_release(root / "release_bin", state, bin_shards=3)
    summary = import_deepseek_vl(str(src), str(tmp_path / "hf"), max_shard_size="20KB")
    assert summary["source"] == "bin" and summary["shards"] > 1
    _, diff = check_parity(model, tmp_path / "hf")
    print(f".bin import: max |Δlogits| = {diff:.2e}")


def test_bad_release_folders_raise(tiny, tmp_path):
    _, state, _ = tiny
    renamed = dict(state)
    renamed["aligner.high_proj.weight"] = renamed.pop("aligner.high_up_proj.weight")
    src = write_release(tmp_path / "renamed", renamed)
    with pytest.raises(ConversionError, match="aligner.high_proj.weight"):
        import_deepseek_vl(str(src), str(tmp_path / "o1"))
    missing = {k: v for k, v in state.items() if "neck_hd.2" not in k}
    src = write_release(tmp_path / "missing", missing)
    with pytest.raises(ConversionError, match="high_res_vision_neck.conv2.weight"):
        import_deepseek_vl(str(src), str(tmp_path / "o2"))
    wrong = dict(state)
    key = "vision_model.vision_tower_low.vision_tower.blocks.0.attn.qkv.weight"
    wrong[key] = wrong[key][:, :16].contiguous()
    src = write_release(tmp_path / "shape", wrong)
    with pytest.raises(ConversionError, match="shape"):
        import_deepseek_vl(str(src), str(tmp_path / "o3"))
    src = write_release(tmp_path / "type", state, config={**release_config(), "model_type": "llava"})
    with pytest.raises(ConversionError, match="multi_modality"):
        import_deepseek_vl(str(src), str(tmp_path / "o4"))


def test_single_array_images_match_preprocessed(imported, loaded):
    """One [0, 1] image array (the release's in-tower normalisation and resize) equals the
    two-branch dict from :func:`preprocess_image`."""
    folder, vlm = imported[1], loaded
    with open(folder / "preprocessor_config.json") as f:
        proc = json.load(f)
    from PIL import Image
    img = Image.open(os.path.join(FIXTURES, "math_v_923.jpg"))
    pre = preprocess_image(img, proc)
    raw = pre["high"] * np.asarray(CLIP_STD, np.float32) + np.asarray(CLIP_MEAN, np.float32)
    features = nnx.jit(lambda m, im: m.image_features(im))
    feats_dict = np.asarray(features(vlm, {"high": pre["high"][None], "low": pre["low"][None]}))
    feats_raw = np.asarray(features(vlm, raw[None]))
    assert np.abs(feats_dict - feats_raw).max() <= 1e-4


def _release_resize_ref(x, size):
    """The release's low branch: torchvision Resize(antialias=True) = F.interpolate(antialias)."""
    t = torch.tensor(x).permute(2, 0, 1)[None]
    y = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                                        antialias=True)
    return y[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("name", ["math_v_923.jpg", "math_v_1343.jpg"])
def test_preprocess_matches_release_and_transformers(name):
    from PIL import Image

    img = Image.open(os.path.join(FIXTURES, name)).convert("RGB")
    ours = preprocess_image(img)
    assert ours["high"].shape == (1024, 1024, 3) and ours["low"].shape == (384, 384, 3)
    # Release: the 1024 square in [0, 1], then torch's antialiased bilinear resize.
    raw = ours["high"] * np.asarray(CLIP_STD, np.float32) + np.asarray(CLIP_MEAN, np.float32)
    low_ref = (_release_resize_ref(raw, 384) - 0.5) / 0.5
    assert np.abs(ours["low"] - low_ref).max() <= 1e-4
    # transformers' processor (PIL backend; the torchvision one needs torchvision).
    proc = transformers.DeepseekVLHybridImageProcessorPil(
        image_mean=[0.5] * 3, image_std=[0.5] * 3, high_res_image_mean=list(CLIP_MEAN),
        high_res_image_std=list(CLIP_STD), resample=2)
    out = proc(img, return_tensors="np")
    theirs_high = out["high_res_pixel_values"][0].transpose(1, 2, 0)
    theirs_low = out["pixel_values"][0].transpose(1, 2, 0)
    short = min(img.size) / max(img.size) * 1024
    d_high = float(np.abs(ours["high"] - theirs_high).max())
    d_low = float(np.abs(ours["low"] - theirs_low).max())
    print(f"{name} {img.size}: |Δhigh| {d_high:.2e}, |Δlow| {d_low:.2e} (mean "
          f"{np.abs(ours['low'] - theirs_low).mean():.2e})")
    if int(short) != round(short):
        # transformers rounds the short side where the release truncates (math_v_1343: 390 vs 389
        # rows). Resized and padded transformers' way first, the rest agrees as below.
        w, h = img.size
        size = (round(w / max(w, h) * 1024), round(h / max(w, h) * 1024))
        square = Image.new("RGB", (1024, 1024), tuple(int(x * 255) for x in CLIP_MEAN))
        square.paste(img.resize(size, Image.BICUBIC), ((1024 - size[0]) // 2, (1024 - size[1]) // 2))
        ours = preprocess_image(square)
        d_high = float(np.abs(ours["high"] - theirs_high).max())
        d_low = float(np.abs(ours["low"] - theirs_low).max())
        print(f"  with transformers' rounding: |Δhigh| {d_high:.2e}, |Δlow| {d_low:.2e}")
    # Same PIL bicubic resize and padding: identical up to float rounding.
    assert d_high <= 1e-4
    # transformers resizes the low branch from the uint8 square and rounds it to 1/255 (× 2 after
    # the 0.5 std) where the release resizes the float tensor: at most one level either way.
    assert d_low <= 1.01 / 255 * 2


def _deepseek_prompt(system, turns):
    """deepseek_vl/utils/conversation.py, SeparatorStyle.DeepSeek (sep "\\n\\n", sep2 EOS)."""
    seps = ["\n\n", "<｜end▁of▁sentence｜>"]
    ret = system + seps[0] if system else ""
    for i, (role, message) in enumerate(turns):
        ret += role + ": " + message + seps[i % 2] if message else role + ":"
    return ret


def test_chat_template_is_the_release_sft_format():
    import jinja2

    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    system = "You are a helpful language and vision assistant. You are able to understand the " \
             "visual content that the user provides, and assist the user with a variety of tasks " \
             "using natural language."
    q, a = "<image_placeholder>What is x?", "x = 3."
    eos = "<｜end▁of▁sentence｜>"      # apply_chat_template passes the tokenizer's eos_token
    got = template.render(messages=[{"role": "user", "content": q},
                                    {"role": "assistant", "content": a}], eos_token=eos)
    assert got == _deepseek_prompt(system, [("User", q), ("Assistant", a)])
    assert got == f"{system}\n\nUser: {q}\n\nAssistant: {a}<｜end▁of▁sentence｜>"
    gen = template.render(messages=[{"role": "system", "content": "S"},
                                    {"role": "user", "content": [{"type": "image"},
                                                                 {"type": "text", "text": "Why?"}]}],
                          add_generation_prompt=True, eos_token=eos)
    assert gen == _deepseek_prompt("S", [("User", "<image_placeholder>Why?"), ("Assistant", "")])


def test_release_size_config_shapes():
    """The 7B release config (preset names only) converts to transformers' layout and the tower
    gives 576 tokens of width 4096 (shapes only: nothing is computed)."""
    import jax

    from mathvlm.hf.deepseek_vl import convert_config

    release = {"model_type": "multi_modality", "architectures": ["MultiModalityCausalLM"],
               "vision_config": {"cls": "HybridVisionTower", "params": {
                   "concat_type": "tuple",
                   "high_res_cfg": {"model_name": "sam_b_downsample", "image_size": 1024,
                                    "select_layer": -1, "select_feature": "same",
                                    "pixel_mean": list(CLIP_MEAN), "pixel_std": list(CLIP_STD)},
                   "low_res_cfg": {"model_name": "siglip_large_patch16_384", "image_size": 384,
                                   "select_layer": -1, "select_feature": "same",
                                   "pixel_mean": [0.5] * 3, "pixel_std": [0.5] * 3}}},
               "aligner_config": {"cls": "MlpProjector", "params": {
                   "depth": 2, "input_dim": 1024, "n_embed": 4096,
                   "projector_type": "low_high_hybrid_split_mlp_gelu"}},
               "language_config": {"max_position_embeddings": 16384, "model_type": "llama",
                                   "num_hidden_layers": 30, "vocab_size": 102400}}
    config, norm, notes = convert_config(release)
    sam, sig = config["high_res_vision_config"], config["vision_config"]
    assert (sam["hidden_size"], sam["num_hidden_layers"], sam["output_channels"],
            sam["global_attn_indexes"], sam["window_size"]) == (768, 12, 256, [2, 5, 8, 11], 14)
    assert (sig["hidden_size"], sig["num_hidden_layers"], sig["patch_size"]) == (1024, 24, 16)
    assert config["text_config"]["hidden_size"] == 4096 and not config["tie_word_embeddings"]
    assert norm["image_mean"] == [0.5] * 3 and any("LlamaConfig defaults" in n for n in notes)
    transformers.DeepseekVLHybridConfig(**{k: v for k, v in config.items() if k != "architectures"})
    # Two LLM layers are enough for the tower's shapes (and keep the abstract build quick).
    small = {**config, "text_config": {**config["text_config"], "num_hidden_layers": 2}}
    model = nnx.eval_shape(lambda: hf.build_from_config(small))
    graphdef, state = nnx.split(model)
    tower = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(model.vision_tower)))
    assert 3.9e8 < tower < 4.1e8, tower      # SAM-B (~90M + necks/downsamples) + SigLIP-L (~303M)
    images = {"high": jax.ShapeDtypeStruct((1, 1024, 1024, 3), np.float32),
              "low": jax.ShapeDtypeStruct((1, 384, 384, 3), np.float32)}
    out = jax.eval_shape(lambda st, im: nnx.merge(graphdef, st).image_features(im), state, images)
    assert out.shape == (1, 576, 4096)


def test_sharded_load_and_forward(tiny, imported):
    """Logical axes only in the model code: placed with fsdp_tp rules on a 2×2×2 mesh and run with
    the activation hints active, the logits stay those of transformers."""
    import jax

    from mathvlm import sharding

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    vlm = hf.from_pretrained(imported[1], mesh=mesh, rules="fsdp_tp")
    spec = vlm.vision_tower.sam.layers[0].attn.qkv.kernel[...].sharding.spec
    assert tuple(spec)[0] == "fsdp" and tuple(spec)[2] == "tensor"
    tokens, high, low = inputs()
    with jax.set_mesh(mesh), sharding.use_rules("fsdp_tp"):
        got = np.asarray(forward(vlm, tokens, {"high": high, "low": low}))
    assert np.abs(got - torch_logits(tiny[0], tokens, high, low)).max() <= 1e-4


def test_release_resolution_parity(tmp_path):
    """The release's geometry at narrow widths: 1024-px SAM (64² grid, windows of 14 padded to 70,
    neck resized 64 → 96 → two stride-2 convs) and 384-px SigLIP/16 → 576 image tokens."""
    sam = {**SAM, "image_size": 1024, "patch_size": 16, "window_size": 14, "hidden_size": 32}
    config = transformers.DeepseekVLHybridConfig(
        text_config=LLAMA, vision_config={**SIGLIP, "image_size": 384, "patch_size": 16},
        high_res_vision_config=sam, image_token_id=IMG, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.DeepseekVLHybridForConditionalGeneration(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.15 * torch.randn(p.shape, generator=g)
            p.copy_(1.0 + noise if "norm" in name and name.endswith("weight") and p.ndim == 1 else noise)
        model.model.high_res_vision_alpha.fill_(0.8)
    model.save_pretrained(tmp_path)
    vlm = hf.from_pretrained(tmp_path)
    assert vlm.config.tokens_per_image == 576
    rng = np.random.default_rng(0)
    high = rng.normal(size=(1, 1024, 1024, 3)).astype(np.float32)
    low = rng.normal(size=(1, 384, 384, 3)).astype(np.float32)
    tokens = np.concatenate([[[1, 5]], np.full((1, 576), IMG), [[7, 8, 9]]], axis=1)
    diff = np.abs(np.asarray(forward(vlm, tokens, {"high": high, "low": low}))
                  - torch_logits(model, tokens, high, low)).max()
    print(f"release resolution: max |Δlogits| = {diff:.2e}")
    assert diff <= 1e-4


def test_bin_without_torch_says_how_to_fix(tiny, tmp_path, monkeypatch):
    import sys

    src = write_release(tmp_path / "bin", tiny[1], bin_shards=1)
    monkeypatch.setitem(sys.modules, "torch", None)      # "import torch" raises ImportError
    with pytest.raises(ConversionError, match="pip install torch==2.13.0"):
        import_deepseek_vl(str(src), str(tmp_path / "out"))


def _release_tokenizer(folder):
    """A DeepSeek-style tokenizer (BOS/EOS ``<｜begin▁of▁sentence｜>``/``<｜end▁of▁sentence｜>``)
    whose ``<image_placeholder>`` is id ``IMG``, as the release's added token."""
    import tokenizers

    corpus = ["What is the area of the circle? The radius is 3, so the area is 9 pi.",
              "Hint: Please answer the question and provide the final answer at the end."] * 40
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, tokenizers.trainers.BpeTrainer(
        vocab_size=IMG, special_tokens=[bos, eos, "<unk>"]))
    filler = [f"<unused_{i}>" for i in range(IMG - tok.get_vocab_size())]
    tok.add_tokens(filler)
    tok.add_special_tokens(["<image_placeholder>"])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                                unk_token="<unk>", pad_token=eos)
    assert fast.convert_tokens_to_ids("<image_placeholder>") == IMG
    fast.save_pretrained(folder)


def test_imported_release_runs_the_papers_protocol(tiny, tmp_path, capsys):
    """Import with the documented command, then Math-PUMA's MathVista protocol for the DeepSeek model
    (``puma_mathvista.py:model=puma_deepseek``): the predictor feeds one padded [0, 1] image at the SAM
    resolution, the prompt is DeepSeek's template, and ``score`` re-scores the official-format file."""
    from mathvlm import evaluate
    from mathvlm.tools import convert
    from mathvlm.train import predict

    src = write_release(tmp_path / "release", tiny[1])
    _release_tokenizer(src)
    out = str(tmp_path / "imported")
    convert.main(["import", "--format", "deepseek-vl", str(src), "--out", out])
    capsys.readouterr()
    seen = []
    original = predict.Predictor.batches

    def spy(self, model, prompts, images=None, batch_size=None):
        for rows, batch in original(self, model, prompts, images, batch_size):
            seen.append((self.template, batch["images"].shape))
            yield rows, batch

    repo = os.path.join(os.path.dirname(__file__), "..", "..")
    data = os.path.join(repo, "tests", "eval", "fixtures", "protocols", "mathvista")
    work = tmp_path / "eval"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict.Predictor, "batches", spy)
        assert evaluate.main(["run", "--config", os.path.join(repo, "configs", "eval", "puma_mathvista.py")
                              + ":model=puma_deepseek", "--hf", out, "--data", data,
                              "--workdir", str(work), "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    assert seen and all(t == "deepseek" and shape[1:] == (64, 64, 3) for t, shape in seen)
    table = json.load(open(work / "mathvista.json"))["overall"]
    responses = json.load(open(work / "mathvista_responses.json"))
    assert len(responses) == table["total"] > 0
    assert all(r["query"].startswith("Hint: Please answer") for r in responses.values())
    assert evaluate.main(["score", "--benchmark", "mathvista", "--predictions",
                          str(work / "mathvista_responses.json")]) == 0
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (rescored["correct"], rescored["total"]) == (table["correct"], table["total"])
