"""``train.logits_chunk``: every token step kind (next_token, pair, preference, grpo) on
a tiny DecoderLM (untied, tied, LoRA on the LM head) and a tiny VLM gives the loss, the metrics and
the gradients of the full-logits path, with chunk sizes that divide the length and that do not; and
the compiled chunked step holds no [B, L, V] float32 array while the full one does."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mathvlm import registry
from mathvlm.losses import make_loss, token_logps
from mathvlm.models.decoder import DecoderConfig, DecoderLM
from mathvlm.models.lora import LoRADense, apply_lora
from mathvlm.models.vit import ViTConfig
from mathvlm.models.vlm import VLM, VLMConfig
from mathvlm.train import steps

B, V = 4, 61
IMG = V - 1             # the VLM's image placeholder id
TOKENS_PER_IMAGE = 16   # ViTConfig defaults: 32 px images, 8 px patches, class token dropped
CHUNKS = (4, 5)         # member lengths 12, 10 and 24: each chunk divides some and not others
RTOL = 1e-5


def decoder_config(vocab=V, **changes):
    return DecoderConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=16, **changes)


@functools.cache   # eager construction costs seconds; the steps here never update the model
def make_model(kind, seed=0):
    if kind == "vlm":
        return VLM(VLMConfig(vision=ViTConfig(num_layers=1), decoder=decoder_config(),
                             image_token_id=IMG), rngs=nnx.Rngs(seed))
    model = DecoderLM(decoder_config(tie_embeddings=kind == "tied"), rngs=nnx.Rngs(seed))
    if kind == "lora":
        apply_lora(model, rank=2, alpha=4.0, targets=("lm_head", "q_proj"), rngs=nnx.Rngs(seed + 1))
        keys = iter(jax.random.split(jax.random.key(seed + 2), 8))
        for _, layer in nnx.iter_modules(model):
            if isinstance(layer, LoRADense):   # B ≠ 0: the adapters change the logits
                layer.lora_b[...] = 0.3 * jax.random.normal(next(keys), layer.lora_b.shape)
        assert isinstance(model.lm_head, LoRADense)
    return model


def member(rng, prefix, length, starts, counts, pads, images=None):
    """One member of a batch: tokens, right padding, shifted targets, answer-span loss mask; with
    ``images`` ([B] bools), 16 placeholders after the first token of each row that has one."""
    tokens = rng.integers(1, V - 1, (B, length))
    attention = np.ones((B, length), np.int32)
    loss_mask = np.zeros((B, length), np.float32)
    for row in range(B):
        attention[row, length - pads[row]:] = 0
        tokens[row, length - pads[row]:] = 0
        loss_mask[row, starts[row]:starts[row] + counts[row]] = 1.0
    out = {}
    if images is not None:
        tokens[np.asarray(images), 1:1 + TOKENS_PER_IMAGE] = IMG
        loss_mask[:, :1 + TOKENS_PER_IMAGE] = 0.0
        out = {"images": rng.normal(size=(B, 32, 32, 3)).astype(np.float32),
               "image_mask": np.asarray(images)}
    targets = np.concatenate([tokens[:, 1:], np.zeros((B, 1), tokens.dtype)], axis=1)
    out.update(tokens=tokens.astype(np.int32), attention_mask=attention,
               targets=targets.astype(np.int32), loss_mask=loss_mask)
    return {prefix + k: jnp.asarray(v) for k, v in out.items()}


def text_member(rng, prefix="", length=12, shift=0):
    return member(rng, prefix, length, starts=[3 + shift, 5, 2, 6 - shift],
                  counts=[6, 4, 7 - shift, 3], pads=[0, 2, 1, 0])


def image_member(rng, prefix="", shift=0):
    return member(rng, prefix, 1 + TOKENS_PER_IMAGE + 7, starts=[17 + shift, 18, 17, 19],
                  counts=[5, 4, 5 - shift, 3], pads=[0, 1, 0, 2], images=[True, True, False, True])


class GradientCapture:
    """Stands in for the optimizer: keeps the gradients the step computed, updates nothing."""

    def update(self, model, grads):
        self.grads = grads


def run(kind, model, batch, terms, reference=None, chunks=(0,), **options):
    """``[(metrics, gradients)]`` of one step of ``kind`` per ``logits_chunk`` in ``chunks``, all in
    one jitted program (one compilation)."""
    step, loss_fn = registry.get("step", kind), make_loss(terms)
    graphdef, state = nnx.split(model)
    ref_graphdef, ref_state = nnx.split(reference) if reference is not None else (None, None)

    @jax.jit
    def pure(state, ref_state, batch):
        results = []
        for chunk in chunks:
            capture = GradientCapture()
            ref = None if ref_graphdef is None else nnx.merge(ref_graphdef, ref_state)
            metrics = step(nnx.merge(graphdef, state), capture, batch, loss_fn=loss_fn,
                           trainable=nnx.Param, reference=ref, logits_chunk=chunk, **options)
            results.append((metrics, capture.grads))
        return results

    return [(metrics, dict(jax.tree_util.tree_leaves_with_path(grads)))
            for metrics, grads in pure(state, ref_state, batch)]


def assert_same(chunked, full):
    (m_chunked, g_chunked), (m_full, g_full) = chunked, full
    assert sorted(m_chunked) == sorted(m_full)
    for key in m_full:
        np.testing.assert_allclose(m_chunked[key], m_full[key], rtol=RTOL, atol=1e-7, err_msg=key)
    assert g_chunked.keys() == g_full.keys()
    for path, expected in g_full.items():
        expected, actual = np.asarray(expected), np.asarray(g_chunked[path])
        # Gradients are sums over positions and chunks; entries that nearly cancel are held to the
        # leaf's scale.
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max(),
                                   err_msg=jax.tree_util.keystr(path))


def compare(kind, model, batch, terms, reference=None, **options):
    """The step with each of :data:`CHUNKS` equals it with ``logits_chunk=0``; returns the latter."""
    full, *chunked = run(kind, model, batch, terms, reference, chunks=(0,) + CHUNKS, **options)
    assert np.isfinite(full[0]["loss"]) and float(full[0]["grad_norm"]) > 0
    for result in chunked:
        assert_same(result, full)
    return full


@pytest.mark.parametrize("model_kind", ["untied", "tied", "lora", "vlm"])
def test_next_token(model_kind):
    rng = np.random.default_rng(0)
    batch = image_member(rng) if model_kind == "vlm" else text_member(rng)
    terms = [{"name": "next_token", "z_loss": 1e-3}]
    compare("next_token", make_model(model_kind), batch, terms)


PAIR_TERMS = [{"name": "puma_kl", "mode": "official", "temperature": 2.0},
              {"name": "next_token", "prefix": "weak_", "label": "weak_ce"},
              # The strong member is a fixed target: its own CE moves nothing, LM head included.
              {"name": "next_token", "prefix": "strong_", "label": "strong_ce", "weight": 0.5}]


@pytest.mark.parametrize("model_kind", ["untied", "tied", "vlm"])
def test_pair(model_kind):
    rng = np.random.default_rng(1)
    strong = text_member(rng, "strong_", length=12)
    weak = (image_member(rng, "weak_", shift=1) if model_kind == "vlm"
            else text_member(rng, "weak_", length=10, shift=1))
    metrics, _ = compare("pair", make_model(model_kind), {**strong, **weak}, PAIR_TERMS)
    assert float(metrics["puma_kl/mismatched_pairs"]) > 0 and float(metrics["puma_kl/kl"]) > 0


def test_pair_standard_mode_with_truncated_answers():
    rng = np.random.default_rng(2)
    batch = {**text_member(rng, "strong_", length=12), **text_member(rng, "weak_", length=10, shift=1)}
    terms = [{"name": "puma_kl", "mode": "standard", "normalize": True, "lam": 0.5,
              "max_answer_tokens": 5}]
    metrics, _ = compare("pair", make_model("untied"), batch, terms)
    assert float(metrics["puma_kl/truncated_pairs"]) > 0


@pytest.mark.parametrize("model_kind", ["untied", "tied"])
def test_preference(model_kind):
    rng = np.random.default_rng(3)
    batch = {**text_member(rng, "chosen_"), **text_member(rng, "rejected_", shift=1)}
    terms = [{"name": "dpo", "beta": 0.3, "label_smoothing": 0.1}]
    compare("preference", make_model(model_kind), batch, terms,
            reference=make_model(model_kind, seed=7))


def grpo_batch(model, seed, temperature):
    """A rollout batch whose ``old_logps`` are the model's own, perturbed (ratios ≠ 1, some clipped)."""
    rng = np.random.default_rng(seed)
    batch = text_member(rng)
    logits = nnx.jit(lambda m, b: steps.forward(m, b))(model, batch)
    old = token_logps(logits, batch["targets"], temperature)
    noise = 0.3 * rng.normal(size=old.shape).astype(np.float32)
    return {**batch, "old_logps": old + noise,
            "rewards": jnp.asarray(rng.normal(size=(B,)), jnp.float32)}


@pytest.mark.parametrize("model_kind,reference_model",
                         [("untied", "copy"), ("tied", "copy"), ("lora", "lora_disabled")])
def test_grpo_with_reference(model_kind, reference_model):
    temperature = 0.7
    model = make_model(model_kind)
    batch = grpo_batch(model, 4, temperature)
    reference = make_model(model_kind, seed=7) if reference_model == "copy" else None
    terms = [{"name": "grpo", "group_size": 2, "beta": 0.1}]
    metrics, _ = compare("grpo", model, batch, terms, reference, temperature=temperature,
                         reference_model=reference_model)
    assert float(metrics["grpo/kl"]) > 0 and float(metrics["grpo/clip_fraction"]) > 0


def test_logits_chunk_rejects_negative_and_models_without_unembed():
    rng = np.random.default_rng(5)
    batch = text_member(rng)
    terms = [{"name": "next_token"}]
    with pytest.raises(ValueError, match="logits_chunk"):
        run("next_token", make_model("untied"), batch, terms, chunks=(-1,))

    class LogitsOnly(nnx.Module):
        def __init__(self):
            self.inner = make_model("untied")

        def __call__(self, tokens, **kwargs):
            return self.inner(tokens, **kwargs)

    with pytest.raises(TypeError, match="hidden"):
        run("next_token", LogitsOnly(), batch, terms, chunks=(4,))


# --- memory: the compiled step ------------------------------------------------------------------

HLO_B, HLO_L, HLO_V, HLO_CHUNK = 2, 64, 512, 16


def hlo_batch(kind, rng):
    def one(prefix=""):
        tokens = rng.integers(1, HLO_V, (HLO_B, HLO_L)).astype(np.int32)
        mask = np.zeros((HLO_B, HLO_L), np.float32)
        mask[:, 20:50] = 1.0
        return {prefix + "tokens": tokens, prefix + "attention_mask": np.ones_like(tokens),
                prefix + "targets": np.roll(tokens, -1, axis=1), prefix + "loss_mask": mask}

    if kind == "pair":
        return {**one("strong_"), **one("weak_")}
    if kind == "preference":
        return {**one("chosen_"), **one("rejected_")}
    batch = one()
    if kind == "grpo":
        batch.update(old_logps=np.full((HLO_B, HLO_L), -6.0, np.float32),
                     rewards=np.asarray([1.0, 0.0], np.float32))
    return batch


HLO_CASES = {
    "next_token": ([{"name": "next_token", "z_loss": 1e-3}], {}),
    "pair": ([{"name": "puma_kl", "mode": "official"}], {}),
    "preference": ([{"name": "dpo"}], {}),
    "grpo": ([{"name": "grpo", "group_size": 2, "beta": 0.1}],
             {"reference_model": "copy", "temperature": 0.7}),
}


def compiled_step_text(kind, logits_chunk):
    """Optimized HLO of the jitted step, with a real optimizer (Adam) and, where the kind keeps one,
    a frozen reference model."""
    terms, options = HLO_CASES[kind]
    config = decoder_config(vocab=HLO_V, max_position=HLO_L)
    model = DecoderLM(config, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    reference = DecoderLM(config, rngs=nnx.Rngs(1)) if kind in ("preference", "grpo") else None
    step, loss_fn = registry.get("step", kind), make_loss(terms)
    graphdef, state = nnx.split((model, optimizer))
    ref_graphdef, ref_state = nnx.split(reference) if reference is not None else (None, None)

    def pure(state, ref_state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        ref = None if ref_graphdef is None else nnx.merge(ref_graphdef, ref_state)
        metrics = step(model, optimizer, batch, loss_fn=loss_fn, trainable=nnx.Param,
                       reference=ref, logits_chunk=logits_chunk, **options)
        return nnx.state((model, optimizer)), metrics

    batch = hlo_batch(kind, np.random.default_rng(0))
    return jax.jit(pure).lower(state, ref_state, batch).compile().as_text()


def largest_f32(text) -> int:
    """Element count of the largest float32 array anywhere in an HLO text."""
    sizes = [int(np.prod([int(d) for d in dims.split(",") if d])) for dims in
             re.findall(r"f32\[([\d,]*)\]", text)]
    return max(sizes)


@pytest.mark.parametrize("kind", sorted(HLO_CASES))
def test_compiled_chunked_step_holds_no_full_logits(kind):
    full_logits = f"f32[{HLO_B},{HLO_L},{HLO_V}]"
    full = compiled_step_text(kind, 0)
    assert full_logits in full
    chunked = compiled_step_text(kind, HLO_CHUNK)
    assert full_logits not in chunked
    # Nor the same logits under another shape ([B·L, V], transposed, a stack of every chunk's): no
    # float32 array is as large; the largest is one chunk's logits.
    assert largest_f32(chunked) == HLO_B * HLO_CHUNK * HLO_V < HLO_B * HLO_L * HLO_V
