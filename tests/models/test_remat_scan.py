"""Remat policies by name (decoder and image tower) and the scanned image tower.

Every policy computes the same loss and gradients as no remat; a scanned tower computes what the
unscanned one does (every hidden state, multi-layer features, pooled outputs, gradients) from the same
transformers folder; the policy named is the one the traced program checkpoints with."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mathvlm import hf
from mathvlm.hf import vision as hf_vision
from mathvlm.models.decoder import DECODER_PRESETS, DecoderConfig, DecoderLM
from mathvlm.models.lora import LoRADense, apply_lora, merge_lora
from mathvlm.models.remat import REMAT_POLICIES, canonical_remat, remat_policy
from mathvlm.models.vit import ViT, ViTConfig

POLICIES = [name for name in REMAT_POLICIES if name != "none"]
TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 10)))
MASK = jnp.asarray(np.r_[[1] * 10, [0] * 3 + [1] * 7].reshape(2, 10))
IMAGES = jnp.asarray(np.random.RandomState(1).randn(2, 32, 32, 3).astype(np.float32))
TOWERS = {
    "clip": {"flavour": "clip", "num_layers": 3},
    "siglip": {"flavour": "siglip", "num_layers": 3, "hidden_act": "gelu_pytorch_tanh",
               "layer_norm_eps": 1e-6, "use_head": True},
}
# float32 throughout; scan / remat only regroup the same float32 operations: every tensor agrees to
# TOL of its own largest entry, give or take ATOL (the key biases' gradients are zero but for
# float32 rounding, ~1e-9).
TOL, ATOL = 1e-5, 1e-7


# ------------------------------------------------------------------------------------------ helpers

def _flat(state) -> dict[tuple, np.ndarray]:
    """``{path: array}`` of a state, with stacked (scanned) layers split into per-layer entries
    ``(..., "layers", i, ...)`` so scanned and unscanned models compare entry by entry."""
    out = {}
    for path, var in jax.tree_util.tree_leaves_with_path(
            state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        key = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
        value = np.asarray(var.get_value() if isinstance(var, nnx.Variable) else var)
        at = key.index("layers") if "layers" in key else -1
        if at >= 0 and not isinstance(key[at + 1], int):
            for i, layer in enumerate(value):
                out[key[:at + 1] + (i,) + key[at + 1:]] = layer
        else:
            out[key] = value
    return out


def _assert_close(got, want, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    diff, scale = float(np.abs(got - want).max(initial=0)), float(np.abs(want).max(initial=0))
    assert diff <= TOL * scale + ATOL, f"{what}: max |diff| {diff:.3g} vs max |value| {scale:.3g}"


def _assert_trees_close(got, want):
    got, want = _flat(got), _flat(want)
    assert sorted(got, key=str) == sorted(want, key=str)
    for key in want:
        _assert_close(got[key], want[key], str(key))


def _checkpoint_policies(fn, *args) -> list:
    """The ``policy`` of every checkpoint (remat) region in ``fn``'s traced program."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("checkpoint", "remat", "remat2"):
                found.append(eqn.params.get("policy"))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        visit(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def _is_policy(policy, name) -> bool:
    """Whether ``policy`` is what the brief names ``name`` (written out here, not read from
    mathvlm.models.remat, so a wrong table entry fails)."""
    if name == "full":
        return policy is None
    if name == "offload":   # a closure made per call: recognise it by where it was made
        return policy is not None and "offload_dot_with_no_batch_dims" in policy.__qualname__
    return policy is {"dots_saveable": jax.checkpoint_policies.dots_saveable,
                      "dots_with_no_batch_dims":
                          jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


def _loss_and_grads(loss, model):
    return nnx.jit(nnx.value_and_grad(loss))(model)


def _assert_checkpointed_with(loss, model, name, regions):
    graph, state = nnx.split(model)
    policies = _checkpoint_policies(lambda s: loss(nnx.merge(graph, s)), state)
    if name == "none":
        assert policies == []
        return
    assert len(policies) == regions, policies
    assert all(_is_policy(p, name) for p in policies), (name, policies)


# ------------------------------------------------------------------------------------------ decoder

@pytest.fixture(scope="module")
def decoder_folder(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("remat_decoder"))
    config = DecoderConfig(**{**DECODER_PRESETS["tiny"], "num_layers": 3, "arch": "qwen2",
                              "qkv_bias": True})
    hf.save_pretrained(DecoderLM(config, rngs=nnx.Rngs(0)), folder)
    return folder


def _decoder_loss(model):
    logp = jax.nn.log_softmax(model(TOKENS, attention_mask=MASK))
    targets = jnp.roll(TOKENS, -1, axis=1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))


@pytest.fixture(scope="module")
def decoder_reference(decoder_folder):
    """Loss and gradients of the plain (unscanned, no remat) decoder."""
    return _loss_and_grads(_decoder_loss, hf.from_pretrained(decoder_folder))


# Every policy scanned and unscanned, and "none" scanned (unscanned "none" is the reference itself).
@pytest.mark.parametrize("scan,policy", [(scan, policy) for scan in (False, True) for policy in POLICIES]
                         + [(True, "none")])
def test_decoder_policy_gives_the_loss_and_gradients_of_none(decoder_folder, decoder_reference,
                                                             scan, policy):
    model = hf.from_pretrained(decoder_folder, scan_layers=scan, remat=policy)
    assert model.config.remat == policy and model.config.scan_layers == scan
    loss, grads = _loss_and_grads(_decoder_loss, model)
    want_loss, want_grads = decoder_reference
    _assert_close(loss, want_loss, "loss")
    _assert_trees_close(grads, want_grads)
    # The block is checkpointed with the named policy: once under scan, once per block unscanned.
    _assert_checkpointed_with(_decoder_loss, model, policy, 1 if scan else 3)


# --------------------------------------------------------------------------------------- image tower

@pytest.fixture(scope="module")
def tower_folders(tmp_path_factory):
    """A random tiny CLIP and SigLIP tower written as transformers folders (CLIPVisionModel /
    SiglipVisionModel layout), so every variant loads identical weights."""
    folders = {}
    for name, fields in TOWERS.items():
        folder = str(tmp_path_factory.mktemp(f"remat_{name}"))
        hf.save_pretrained(ViT(ViTConfig(**fields), rngs=nnx.Rngs(3)), folder)
        folders[name] = folder
    return folders


def _tower_loss(model):
    """Every output the VLM and the dual encoder read: multi-layer features (the embeddings too),
    the last hidden state and the pooled output."""
    feats = model.features(IMAGES, (-1, 1, 0), "keep_all")
    last, pooled = model(IMAGES)
    return jnp.mean(jnp.sin(feats)) + jnp.mean(jnp.cos(last)) + jnp.mean(jnp.tanh(pooled) ** 2)


def _features_loss(model):
    """Features of layers 1 and 2 of 3 only: the last layer gets no gradient."""
    return jnp.mean(jnp.sin(model.features(IMAGES, (-2, 1), "drop_cls")))


@pytest.fixture(scope="module")
def tower_reference(tower_folders):
    return {name: _loss_and_grads(_tower_loss, hf.from_pretrained(folder))
            for name, folder in tower_folders.items()}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("flavour", ["clip", "siglip"])
def test_tower_policy_gives_the_loss_and_gradients_of_none(tower_folders, tower_reference, flavour,
                                                           scan, policy):
    model = hf.from_pretrained(tower_folders[flavour], scan_layers=scan, remat=policy)
    assert model.config.remat == policy and model.config.scan_layers == scan
    loss, grads = _loss_and_grads(_tower_loss, model)
    want_loss, want_grads = tower_reference[flavour]
    _assert_close(loss, want_loss, "loss")
    _assert_trees_close(grads, want_grads)
    # features(-1, 1, 0) and __call__: scans over layers [0, 1) and [1, 3) and over [0, 3); the
    # unscanned tower checkpoints each layer call (1 + 2 + 3).
    _assert_checkpointed_with(_tower_loss, model, policy, 3 if scan else 6)


@pytest.mark.parametrize("flavour", ["clip", "siglip"])
def test_scanned_tower_equals_unscanned(tower_folders, flavour):
    plain = hf.from_pretrained(tower_folders[flavour])
    scanned = hf.from_pretrained(tower_folders[flavour], scan_layers=True)
    assert isinstance(scanned.layers, nnx.Module) and not isinstance(scanned.layers, nnx.List)
    kernel = scanned.layers.mlp.fc1.kernel
    assert kernel.shape == (3, 32, 64)
    assert kernel.get_metadata()["out_sharding"] == ("layers", "embed", "mlp")
    # One folder, the same parameter values in both layouts.
    for key, value in _flat(nnx.state(plain)).items():
        np.testing.assert_array_equal(_flat(nnx.state(scanned))[key], value, err_msg=str(key))

    forward = nnx.jit(lambda m: (m.hidden_states(IMAGES), m.hidden_states(IMAGES, upto=1),
                                 m.features(IMAGES), m.features(IMAGES, (-1, 1, 0)),
                                 m.features(IMAGES, 0, "drop_first"), m(IMAGES)))
    got, want = forward(scanned), forward(plain)
    assert len(got[0]) == 4 and len(got[1]) == 2
    assert got[3].shape[-1] == 3 * 32
    for i, (g, w) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)):
        _assert_close(g, w, f"output {i}")
    # The hidden states differ from layer to layer (else the comparison above says little).
    assert float(jnp.abs(want[0][-1] - want[0][-2]).max()) > 0.1

    # Gradients through every output, and through features that stop before the last layer.
    for loss in (_tower_loss, _features_loss):
        got_loss, got_grads = _loss_and_grads(loss, scanned)
        want_loss, want_grads = _loss_and_grads(loss, plain)
        _assert_close(got_loss, want_loss, "loss")
        _assert_trees_close(got_grads, want_grads)
    last_layer = [v for k, v in _flat(got_grads).items() if k[:2] == ("layers", 2)]
    assert last_layer and all(not np.any(v) for v in last_layer)


def test_scanned_tower_round_trips_through_its_folder(tower_folders, tmp_path):
    from safetensors.numpy import load_file

    folder = tower_folders["siglip"]
    scanned = hf.from_pretrained(folder, scan_layers=True, remat="offload")
    hf.save_pretrained(scanned, tmp_path)
    original, written = load_file(f"{folder}/model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert sorted(written) == sorted(original)
    for key in original:
        np.testing.assert_array_equal(written[key], original[key], err_msg=key)
    assert hf.format_for_model(scanned).build_options(scanned) == {
        "param_dtype": "float32", "dtype": None, "scan_layers": True, "remat": "offload",
        "attention_impl": "auto"}


def test_lora_on_scanned_tower_layers(tower_folders, tmp_path):
    """LoRA targeting tower layers wraps the stacked projections once (adapters with a leading
    layers axis); zero B changes nothing, merging is exact and the merged tower exports."""
    model = hf.from_pretrained(tower_folders["clip"], scan_layers=True, remat="full")
    forward = nnx.jit(lambda m: m.features(IMAGES, -2))
    before = forward(model)
    apply_lora(model, rank=2, alpha=4.0, targets=(r"layers/self_attn/(q|v)_proj",), rngs=nnx.Rngs(1))
    wrapped = [p for p, m in nnx.iter_modules(model) if isinstance(m, LoRADense)]
    assert sorted(wrapped) == [("layers", "self_attn", "q_proj"), ("layers", "self_attn", "v_proj")]
    assert model.layers.self_attn.q_proj.lora_a.shape == (3, 32, 2)
    np.testing.assert_array_equal(np.asarray(forward(model)), np.asarray(before))
    b = model.layers.self_attn.q_proj.lora_b
    b[...] = 0.1 * jax.random.normal(jax.random.key(0), b.shape)
    adapted = forward(model)
    assert float(jnp.abs(adapted - before).max()) > 1e-3
    merge_lora(model)
    _assert_close(forward(model), adapted, "merged")
    hf.save_pretrained(model, tmp_path)
    reloaded = hf.from_pretrained(tmp_path)
    _assert_close(forward(reloaded), adapted, "exported")


# ------------------------------------------------------------------------------------------ names

@pytest.mark.parametrize("config", [DecoderConfig, ViTConfig])
def test_unknown_policy_names_the_policies(config):
    with pytest.raises(ValueError) as err:
        config(remat="dots")
    for name in REMAT_POLICIES:
        assert name in str(err.value)


def test_bools_are_policy_names_and_configs_stay_hashable():
    assert canonical_remat(True) == "full" and canonical_remat(False) == "none"
    for config in (DecoderConfig, ViTConfig):
        assert config(remat=True) == config(remat="full") and config(remat=True).remat == "full"
        assert config(remat=False).remat == config().remat == "none"
        assert hash(config(remat=True)) == hash(config(remat="full"))
    with pytest.raises(ValueError, match="one of none, full"):
        remat_policy("everything")


def test_recorded_build_options_rebuild_the_layout(decoder_folder):
    """Build options (what convert.save_orbax records) survive JSON, and older records' true/false
    still read as policy names."""
    model = hf.from_pretrained(decoder_folder, scan_layers=True, remat="dots_with_no_batch_dims")
    options = json.loads(json.dumps(hf.format_for_model(model).build_options(model)))
    assert options["remat"] == "dots_with_no_batch_dims"
    hf_config = hf.read_config(decoder_folder)
    rebuilt = nnx.eval_shape(lambda: hf.build_from_config(hf_config, **options))
    assert rebuilt.config == model.config
    old = nnx.eval_shape(lambda: hf.build_from_config(hf_config, **{**options, "remat": True}))
    assert old.config.remat == "full"


def test_vision_options_are_layout_only():
    options = set(hf_vision.VISION_BUILD_OPTIONS)
    assert {"scan_layers", "remat", "dtype", "param_dtype"} <= options
    assert not options & set(hf_vision.VISION_ARCHITECTURE)
    with pytest.raises(ValueError, match="scan_layers"):
        hf_vision.vision_options({"hidden_size": 64})
    assert hf_vision.vision_options(None) == {}


def test_tower_options_for_a_language_model_are_refused(decoder_folder):
    with pytest.raises(ValueError, match="no image tower"):
        hf.from_pretrained(decoder_folder, vision={"scan_layers": True})
