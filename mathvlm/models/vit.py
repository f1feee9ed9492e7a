"""Vision transformer image towers: CLIP (class token, pre-LN, quick_gelu) and SigLIP (no class token,
gelu-tanh, post-LN, optional attention-pool head). Images are NHWC float arrays (already normalised).

``ViT(config, rngs=...)``:

* ``vit.hidden_states(images, upto=None)`` → list like HF ``hidden_states`` (index 0 = embeddings).
* ``vit.states_at(images, indices)`` → ``{i: hidden_states[i]}`` for the indices asked only.
* ``vit.features(images, layer=-2, strategy="drop_cls")`` → ``[batch, tokens, embed]`` for a VLM.
* ``vit(images)`` → ``(last_hidden_state, pooled)`` as HF ``CLIPVisionModel`` / ``SiglipVisionModel``.

Options (:class:`ViTConfig`):

* ``scan_layers`` — the encoder layers are ONE :class:`EncoderLayer` whose parameters have a leading
  ``"layers"`` axis (built with ``nnx.vmap``) and run under ``jax.lax.scan``; the results are those of
  the unscanned tower. ``hidden_states(images, upto)`` scans over the first ``upto`` layers and
  returns their stacked outputs as the same HF-style list; ``features`` and ``__call__`` (through
  ``states_at``) scan from one selected index to the next and keep no other layer's output.
* ``remat`` — rematerialisation policy name of each layer (:mod:`mathvlm.models.remat`: ``none``,
  ``full``, ``dots_saveable``, ``dots_with_no_batch_dims``, ``offload``; True/False = full/none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mathvlm import registry
from mathvlm.models.attention import dot_product_attention, grouped_attention, resolve
from mathvlm.models.layers import Dense
from mathvlm.models.remat import canonical_remat, checkpoint, nnx_checkpoint
from mathvlm.sharding import constrain

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    flavour: str = "clip"          # clip | siglip
    image_size: int = 32
    patch_size: int = 8
    num_channels: int = 3
    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    use_head: bool = False         # SigLIP attention-pool head
    param_dtype: str = "float32"
    dtype: str | None = None
    scan_layers: bool = False      # one stacked EncoderLayer run by jax.lax.scan
    # Rematerialisation policy name (mathvlm.models.remat.REMAT_POLICIES); True/False → "full"/"none".
    remat: str = "none"
    # Encoder self-attention (mathvlm.models.attention): auto | xla | cudnn | splash.
    attention_impl: str = "auto"

    def __post_init__(self):
        # Canonical names keep the config hashable, comparable and JSON-serialisable.
        object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype).name)
        if self.dtype is not None:
            object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
        object.__setattr__(self, "remat", canonical_remat(self.remat))
        resolve(self.attention_impl)  # an unknown name fails here, not at trace time

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def has_class_token(self) -> bool:
        return self.flavour == "clip"

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype or self.param_dtype)


VIT_PRESETS = {
    "tiny": {},
    "siglip-tiny": {"flavour": "siglip", "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
                    "use_head": True},
    "clip-vit-l-14-224": {"image_size": 224, "patch_size": 14, "hidden_size": 1024,
                          "intermediate_size": 4096, "num_layers": 24, "num_heads": 16},
    "clip-vit-l-14-336": {"image_size": 336, "patch_size": 14, "hidden_size": 1024,
                          "intermediate_size": 4096, "num_layers": 24, "num_heads": 16},
    "siglip-so400m-14-384": {"flavour": "siglip", "image_size": 384, "patch_size": 14,
                             "hidden_size": 1152, "intermediate_size": 4304, "num_layers": 27,
                             "num_heads": 16, "hidden_act": "gelu_pytorch_tanh",
                             "layer_norm_eps": 1e-6, "use_head": True},
    "siglip-l-16-384": {"flavour": "siglip", "image_size": 384, "patch_size": 16,
                        "hidden_size": 1024, "intermediate_size": 4096, "num_layers": 24,
                        "num_heads": 16, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
                        "use_head": True},
}


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias, statistics in float32."""

    def __init__(self, features: int, *, eps: float, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((features,), param_dtype), out_sharding=("norm",))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype), out_sharding=("norm",))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class MLP(nnx.Module):
    def __init__(self, hidden: int, inner: int, act: str, *, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs, "use_bias": True}
        self.fc1 = Dense(hidden, inner, axes=("embed", "mlp"), **kw)
        self.fc2 = Dense(inner, hidden, axes=("mlp", "embed"), **kw)
        self.act = act

    def __call__(self, x):
        h = constrain(ACTIVATIONS[self.act](self.fc1(x)), ("batch", "length", "act_mlp"))
        return self.fc2(h)


class SelfAttention(nnx.Module):
    """Multi-head attention with biases (CLIP/SigLIP ``q,k,v,out_proj``); ``mask [b, q, k]`` optional.
    Unmasked self-attention runs ``attention_impl`` (:mod:`mathvlm.models.attention`); a mask or
    separate keys (``kv``) take the einsum."""

    def __init__(self, hidden: int, heads: int, *, dtype=None, param_dtype=jnp.float32,
                 attention_impl: str = "xla", rngs: nnx.Rngs):
        head_dim = hidden // heads
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs, "use_bias": True}
        qkv_axes = ("embed", "heads", "head_dim")
        self.q_proj = Dense(hidden, (heads, head_dim), axes=qkv_axes, **kw)
        self.k_proj = Dense(hidden, (heads, head_dim), axes=qkv_axes, **kw)
        self.v_proj = Dense(hidden, (heads, head_dim), axes=qkv_axes, **kw)
        self.out_proj = Dense((heads, head_dim), hidden, axes=("heads", "head_dim", "embed"), **kw)
        self.attention_impl = attention_impl

    def __call__(self, x, mask=None, kv=None):
        impl = resolve(self.attention_impl)
        if mask is None and kv is None and impl != "xla":
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
            return self.out_proj(dot_product_attention(q, k, v, impl=impl, causal=False))
        kv = x if kv is None else kv
        q, k, v = self.q_proj(x), self.k_proj(kv), self.v_proj(kv)
        if mask is None:
            mask = jnp.ones((x.shape[0], x.shape[1], kv.shape[1]), bool)
        return self.out_proj(grouped_attention(q, k, v, mask))


class EncoderLayer(nnx.Module):
    """Pre-norm block shared by CLIP and SigLIP towers (and the CLIP text tower)."""

    def __init__(self, hidden, inner, heads, act, eps, *, dtype=None, param_dtype=jnp.float32,
                 attention_impl: str = "xla", rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.layer_norm1 = LayerNorm(hidden, eps=eps, param_dtype=param_dtype)
        self.self_attn = SelfAttention(hidden, heads, attention_impl=attention_impl, **kw)
        self.layer_norm2 = LayerNorm(hidden, eps=eps, param_dtype=param_dtype)
        self.mlp = MLP(hidden, inner, act, **kw)

    def __call__(self, h, mask=None):
        h = h + self.self_attn(self.layer_norm1(h), mask)
        h = h + self.mlp(self.layer_norm2(h))
        return constrain(h, ("batch", "length", "act_embed"))


class AttentionPoolHead(nnx.Module):
    """SigLIP MAP head: a learned probe attends over the tokens, then ``probe + mlp(ln(probe))``.

    q/k/v live in one fused ``in_proj`` kernel ``(embed, 3, heads, head_dim)`` because the HF file
    stores them as one ``torch.nn.MultiheadAttention`` tensor."""

    def __init__(self, c: ViTConfig, *, rngs: nnx.Rngs):
        E, H = c.hidden_size, c.num_heads
        kw = {"dtype": c.dtype, "param_dtype": c.param_dtype, "rngs": rngs, "use_bias": True}
        self.probe = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, 1, E), c.param_dtype),
                               out_sharding=(None, None, "embed"))
        self.in_proj = Dense(E, (3, H, E // H), axes=("embed", None, "heads", "head_dim"), **kw)
        self.out_proj = Dense((H, E // H), E, axes=("heads", "head_dim", "embed"), **kw)
        self.layernorm = LayerNorm(E, eps=c.layer_norm_eps, param_dtype=c.param_dtype)
        self.mlp = MLP(E, c.intermediate_size, c.hidden_act, dtype=c.dtype, param_dtype=c.param_dtype,
                       rngs=rngs)

    def __call__(self, h):
        b, n, E = h.shape
        probe = jnp.broadcast_to(self.probe[...].astype(h.dtype), (b, 1, E))
        q = self.in_proj(probe)[:, :, 0]
        kv = self.in_proj(h)
        mask = jnp.ones((b, 1, n), bool)
        x = self.out_proj(grouped_attention(q, kv[:, :, 1], kv[:, :, 2], mask))
        x = x + self.mlp(self.layernorm(x))
        return x[:, 0]


class ViT(nnx.Module):
    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        p, E = c.patch_size, c.hidden_size
        pd = jnp.dtype(c.param_dtype)
        self.patch_kernel = nnx.Param(
            nnx.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3)(
                rngs.params(), (p, p, c.num_channels, E), pd),
            out_sharding=("conv", "conv", "conv", "embed"))
        # SigLIP's patch conv has a bias; CLIP's does not.
        self.patch_bias = (nnx.Param(jnp.zeros((E,), pd), out_sharding=("embed",))
                           if c.flavour == "siglip" else None)
        num_pos = c.num_patches + int(c.has_class_token)
        self.position_embedding = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (num_pos, E), pd),
            out_sharding=("positions", "embed"))
        if c.has_class_token:
            self.class_embedding = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (E,), pd),
                                             out_sharding=("embed",))
            self.pre_layrnorm = LayerNorm(E, eps=c.layer_norm_eps, param_dtype=pd)
        if c.scan_layers:
            self.layers = _stacked_layers(c, rngs)
        else:
            self.layers = nnx.List([_encoder_layer(c, rngs) for _ in range(c.num_layers)])
        self.post_layernorm = LayerNorm(E, eps=c.layer_norm_eps, param_dtype=pd)
        self.head = AttentionPoolHead(c, rngs=rngs) if c.use_head else None

    def embed(self, images):
        """``images [b, H, W, C]`` → tokens ``[b, (1 +) patches, embed]`` (CLIP: after pre-LN)."""
        c = self.config
        b, H, W, C = images.shape
        p = c.patch_size
        # A stride-p convolution ignores the last H % p rows and W % p columns (SigLIP-so400m: 384 px,
        # patch 14 → a 27×27 grid over the first 378 px); crop them the same way.
        H, W = H // p * p, W // p * p
        x = images[:, :H, :W].astype(c.compute_dtype).reshape(b, H // p, p, W // p, p, C)
        x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (H // p) * (W // p), p, p, C)
        # A stride-p conv with a p×p kernel is a matmul over each patch's (kh, kw, c) pixels.
        h = jnp.einsum("bnijc,ijce->bne", x, self.patch_kernel[...].astype(x.dtype),
                       preferred_element_type=jnp.float32).astype(x.dtype)
        if self.patch_bias is not None:
            h = h + self.patch_bias[...].astype(h.dtype)
        if c.has_class_token:
            cls = jnp.broadcast_to(self.class_embedding[...].astype(h.dtype), (b, 1, h.shape[-1]))
            h = jnp.concatenate([cls, h], axis=1)
        h = h + self.position_embedding[...].astype(h.dtype)[None]
        if c.has_class_token:
            h = self.pre_layrnorm(h)
        return constrain(h, ("batch", "length", "act_embed"))

    def hidden_states(self, images, upto: int | None = None) -> list:
        """HF-style hidden states: ``[embeddings, after layer 1, ..., after layer upto]``."""
        c = self.config
        upto = c.num_layers if upto is None else upto
        if not 0 <= upto <= c.num_layers:
            raise ValueError(f"upto={upto} out of range for {c.num_layers} layers")
        hs = [self.embed(images)]
        if upto == 0:
            return hs
        if c.scan_layers:
            _, outs = _scan_layers(self.layers, hs[0], 0, upto, num_layers=c.num_layers,
                                   remat=c.remat, stacked=True)
            return hs + [outs[i] for i in range(upto)]
        run = nnx_checkpoint(_run_layer, c.remat)
        for layer in list(self.layers)[:upto]:
            hs.append(run(layer, hs[-1]))
        return hs

    def states_at(self, images, indices: Sequence[int]) -> dict[int, jax.Array]:
        """``{i: hidden_states(images)[i]}`` for HF indices ``0 ≤ i ≤ num_layers``, running the layers
        only up to the largest. Scanned layers run as one scan per stretch between the indices, so
        no other layer's output is stacked or kept."""
        c = self.config
        wanted = sorted(set(int(i) for i in indices))
        if not wanted or wanted[0] < 0 or wanted[-1] > c.num_layers:
            raise ValueError(f"hidden-state indices {list(indices)} out of range for {c.num_layers} "
                             "layers (0 = embeddings)")
        h = self.embed(images)
        out, at = {}, 0
        run = nnx_checkpoint(_run_layer, c.remat)
        for stop in wanted:
            if stop > at and c.scan_layers:
                h = _scan_layers(self.layers, h, at, stop, num_layers=c.num_layers, remat=c.remat)
            elif stop > at:
                for layer in list(self.layers)[at:stop]:
                    h = run(layer, h)
            out[stop], at = h, stop
        return out

    def features(self, images, layer: int | Sequence[int] = -2, strategy: str = "drop_cls"):
        """Patch features of hidden state ``layer`` (HF index; -2 = output of the second-to-last
        layer), with ``strategy`` "drop_cls" (LLaVA 'default'/'patch': drop the CLS token; a no-op
        for SigLIP), "drop_first" (drop token 0 whatever it is: Math-PUMA's SigLIP → 728 tokens) or
        "keep_all". Only the layers needed are run.

        ``layer`` may be a sequence ``(l₁, ..., lₙ)``: the selected states are concatenated on the
        channel axis, ``[b, tokens, n·embed]`` in the order given (HF LLaVA's list-valued
        ``vision_feature_layer``)."""
        if strategy not in ("drop_cls", "drop_first", "keep_all"):
            raise ValueError(f"unknown feature strategy {strategy!r}: drop_cls | drop_first | keep_all")
        layers = (layer,) if isinstance(layer, int) else tuple(layer)
        if not layers:
            raise ValueError("feature layer list is empty")
        n = self.config.num_layers
        indices = [i if i >= 0 else n + 1 + i for i in layers]
        for given, index in zip(layers, indices):
            if not 0 <= index <= n:
                raise ValueError(f"feature layer {given} out of range for {n} layers")
        hs = self.states_at(images, indices)
        h = jnp.concatenate([hs[i] for i in indices], axis=-1) if len(indices) > 1 else hs[indices[0]]
        if strategy == "keep_all" or (strategy == "drop_cls" and not self.config.has_class_token):
            return h
        return h[:, 1:]

    def num_feature_tokens(self, strategy: str = "drop_cls") -> int:
        tokens = self.config.num_patches + int(self.config.has_class_token)
        if strategy == "drop_first" or (strategy == "drop_cls" and self.config.has_class_token):
            tokens -= 1
        return tokens

    def __call__(self, images):
        """``(last_hidden_state, pooled)`` matching HF: CLIP returns the encoder output without the
        post-LN and pools post-LN(CLS); SigLIP applies the post-LN and pools with its head (None
        without one)."""
        h = self.states_at(images, (self.config.num_layers,))[self.config.num_layers]
        if self.config.has_class_token:
            return h, self.post_layernorm(h[:, 0])
        h = self.post_layernorm(h)
        return h, (self.head(h) if self.head is not None else None)


def _encoder_layer(c: ViTConfig, rngs: nnx.Rngs) -> EncoderLayer:
    return EncoderLayer(c.hidden_size, c.intermediate_size, c.num_heads, c.hidden_act,
                        c.layer_norm_eps, dtype=c.dtype, param_dtype=jnp.dtype(c.param_dtype),
                        attention_impl=c.attention_impl, rngs=rngs)


def _run_layer(layer: EncoderLayer, h):
    return layer(h)


def _stacked_layers(c: ViTConfig, rngs: nnx.Rngs) -> EncoderLayer:
    """One EncoderLayer whose every parameter has a leading ``layers`` axis of size ``num_layers``
    (as :func:`mathvlm.models.decoder._stacked_blocks`)."""

    @nnx.split_rngs(splits=c.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return _encoder_layer(c, rngs)

    return make(rngs)


def _scan_layers(layers: EncoderLayer, h, start: int, stop: int, *, num_layers: int, remat: str,
                 stacked: bool = False):
    """Run stacked layers ``start … stop - 1`` on ``h`` with ``jax.lax.scan``: the last output, or with
    ``stacked`` ``(last, every layer's output [stop - start, batch, tokens, embed])``. Only those
    layers' parameters enter the loop (a slice of the stack unless it is all of it); the others get
    zero gradients, as in the unscanned tower."""
    graphdef, state = nnx.split(layers)
    if (start, stop) != (0, num_layers):
        state = jax.tree.map(lambda x: x[start:stop], state)

    def body(h, layer_state):
        h = nnx.merge(graphdef, layer_state)(h)
        return h, (h if stacked else None)

    # Inside the loop, common-subexpression elimination cannot undo the recomputation.
    body = checkpoint(body, remat, prevent_cse=False)
    last, outs = jax.lax.scan(body, h, state)
    return (last, outs) if stacked else last


@registry.register("model", "vit")
def vit(preset: str | None = "tiny", *, rngs: nnx.Rngs, **fields) -> ViT:
    values = dict(VIT_PRESETS[preset]) if preset else {}
    values.update(fields)
    return ViT(ViTConfig(**values), rngs=rngs)
