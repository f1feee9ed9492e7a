"""DeepSeek-VL's hybrid image tower (Math-PUMA's DeepSeek-Math-VL-7B): a high-resolution SAM-B ViT
(windowed + global attention with decomposed relative positions, a conv neck and two stride-2 convs)
next to a low-resolution SigLIP tower, joined by the ``low_high_hybrid_split_mlp_gelu`` projector,
spliced into a :class:`~mathvlm.models.decoder.DecoderLM` like :class:`~mathvlm.models.vlm.VLM`.

``images`` passed to :class:`HybridVLM` (``[b, H, W, 3]`` or ``[b, k, H, W, 3]``, NHWC) are either

* a dict ``{"high": ..., "low": ...}``: both resolutions already normalised per branch (what
  :func:`mathvlm.hf.deepseek_vl.preprocess_image` and transformers' ``DeepseekVLHybridImageProcessor``
  give: ``high_res_pixel_values`` / ``pixel_values``), or
* one array: the padded high-resolution image rescaled to [0, 1] and not normalised; the model then
  normalises it and derives the low-resolution branch with an antialiased bilinear resize, exactly as
  the release's ``HybridVisionTower.forward`` does (``torchvision Resize(antialias=True)``).

    vlm = HybridVLM(HybridVLMConfig(), rngs=nnx.Rngs(0))
    logits = vlm(tokens, {"high": hi, "low": lo}, attention_mask=mask)   # [b, l, vocab] f32
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mathvlm.models.decoder import DecoderConfig, DecoderLM
from mathvlm.models.layers import Dense
from mathvlm.models.vit import LayerNorm, ViT, ViTConfig
from mathvlm.models.vlm import VLM
from mathvlm.sharding import constrain

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """SAM ViT image encoder (transformers ``SamVisionConfig`` names where they exist)."""
    image_size: int = 64
    patch_size: int = 8
    num_channels: int = 3
    hidden_size: int = 16
    mlp_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    window_size: int = 3
    global_attn_indexes: tuple[int, ...] = (1,)
    output_channels: int = 8        # neck width; the downsample convs give 2× and 4× this
    layer_norm_eps: float = 1e-6
    param_dtype: str = "float32"
    dtype: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "global_attn_indexes", tuple(int(i) for i in self.global_attn_indexes))
        if not self.global_attn_indexes:
            raise ValueError("SAM needs at least one global-attention layer (its output feeds neck_hd)")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class HybridVLMConfig:
    sam: SamConfig = dataclasses.field(default_factory=SamConfig)
    vision: ViTConfig = dataclasses.field(default_factory=lambda: ViTConfig(
        flavour="siglip", hidden_act="gelu", layer_norm_eps=1e-6))      # the low-resolution SigLIP
    decoder: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    image_token_id: int = 255
    # Per-branch normalisation, used when images come as one [0, 1] array (see the module docstring).
    high_mean: tuple[float, ...] = CLIP_MEAN
    high_std: tuple[float, ...] = CLIP_STD
    low_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    low_std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self):
        for name in ("high_mean", "high_std", "low_mean", "low_std"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        if self.vision.flavour != "siglip":
            raise ValueError("the hybrid tower's low-resolution branch is a SigLIP tower")

    @property
    def tokens_per_image(self) -> int:
        return self.vision.num_patches

    @property
    def image_size(self) -> int:
        """The side of the one [0, 1] image the model takes (the high-resolution branch's)."""
        return self.sam.image_size


# ------------------------------------------------------------------------------ resampling

def resize_weights(in_size: int, out_size: int, *, antialias: bool) -> np.ndarray:
    """``[out, in]`` matrix of PyTorch's bilinear resize (``align_corners=False``) along one axis.

    ``antialias=False``: ``F.interpolate(mode="bilinear")`` (SAM's neck resize). ``antialias=True``:
    its ``antialias=True`` path (a triangle filter widened by the scale, as PIL), which torchvision's
    ``Resize(antialias=True)`` uses for the release's low-resolution branch."""
    scale = in_size / out_size
    w = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        if antialias:
            support = scale if scale >= 1.0 else 1.0
            inv = 1.0 / scale if scale >= 1.0 else 1.0
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), in_size)
            taps = np.arange(lo, hi)
            weights = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) * inv))
            w[i, lo:hi] = weights / weights.sum()
        else:
            src = max(scale * (i + 0.5) - 0.5, 0.0)
            i0 = int(src)
            i1 = min(i0 + 1, in_size - 1)
            frac = src - i0
            w[i, i0] += 1.0 - frac
            w[i, i1] += frac
    return w.astype(np.float32)


def resize_2d(x, size: int, *, antialias: bool):
    """``x [b, H, W, C]`` → ``[b, size, size, C]`` with :func:`resize_weights` (float32 sums)."""
    wh = jnp.asarray(resize_weights(x.shape[1], size, antialias=antialias))
    ww = jnp.asarray(resize_weights(x.shape[2], size, antialias=antialias))
    y = jnp.einsum("oh,bhwc->bowc", wh, x.astype(jnp.float32), precision="highest")
    return jnp.einsum("pw,bowc->bopc", ww, y, precision="highest").astype(x.dtype)


# ------------------------------------------------------------------------------ SAM encoder

class Conv(nnx.Module):
    """Bias-free square conv, NHWC, kernel ``(k, k, in, out)``."""

    def __init__(self, d_in, d_out, k, *, stride=1, padding=0, dtype=None, param_dtype="float32",
                 rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3)
        self.kernel = nnx.Param(init(rngs.params(), (k, k, d_in, d_out), jnp.dtype(param_dtype)),
                                out_sharding=("conv", "conv", "conv", "embed"))
        self.stride, self.padding, self.dtype = stride, padding, dtype

    def __call__(self, x):
        dtype = self.dtype or self.kernel.dtype
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), self.kernel[...].astype(dtype), (self.stride, self.stride),
            ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.float32, precision="highest")
        return y.astype(dtype)


class Neck(nnx.Module):
    """1×1 conv → LayerNorm over channels → 3×3 conv → LayerNorm (SAM's neck and DeepSeek's neck_hd)."""

    def __init__(self, c: SamConfig, *, rngs: nnx.Rngs):
        kw = {"dtype": c.dtype, "param_dtype": c.param_dtype, "rngs": rngs}
        out = c.output_channels
        self.conv1 = Conv(c.hidden_size, out, 1, **kw)
        self.layer_norm1 = LayerNorm(out, eps=1e-6, param_dtype=c.param_dtype)
        self.conv2 = Conv(out, out, 3, padding=1, **kw)
        self.layer_norm2 = LayerNorm(out, eps=1e-6, param_dtype=c.param_dtype)

    def __call__(self, x):
        return self.layer_norm2(self.conv2(self.layer_norm1(self.conv1(x))))


class SamAttention(nnx.Module):
    """Attention with decomposed relative positions over a ``size × size`` grid (a window, or the
    whole grid for global layers); the fused ``qkv`` kernel is ``(embed, 3, heads, head_dim)``."""

    def __init__(self, c: SamConfig, size: int, *, rngs: nnx.Rngs):
        E, H = c.hidden_size, c.num_heads
        D = E // H
        kw = {"dtype": c.dtype, "param_dtype": c.param_dtype, "rngs": rngs, "use_bias": True}
        self.qkv = Dense(E, (3, H, D), axes=("embed", None, "heads", "head_dim"), **kw)
        self.proj = Dense((H, D), E, axes=("heads", "head_dim", "embed"), **kw)
        pd = jnp.dtype(c.param_dtype)
        self.rel_pos_h = nnx.Param(jnp.zeros((2 * size - 1, D), pd), out_sharding=("positions", "head_dim"))
        self.rel_pos_w = nnx.Param(jnp.zeros((2 * size - 1, D), pd), out_sharding=("positions", "head_dim"))
        self.size = size

    def __call__(self, x):
        b, h, w, _ = x.shape
        if h != self.size or w != self.size:
            raise ValueError(f"SAM attention built for a {self.size}² grid got {h}×{w}")
        qkv = self.qkv(x)                                      # [b, h, w, 3, H, D]
        q, k, v = (qkv[:, :, :, i].astype(jnp.float32) for i in range(3))
        scale = q.shape[-1] ** -0.5
        logits = jnp.einsum("bxyhd,bijhd->bhxyij", q * scale, k, precision="highest")
        # Relative positions: row/column offset i − j + size − 1 indexes the tables (unscaled q).
        idx = np.arange(h)[:, None] - np.arange(h)[None, :] + h - 1
        rh = self.rel_pos_h[...].astype(jnp.float32)[idx]     # [h, h, D]
        rw = self.rel_pos_w[...].astype(jnp.float32)[idx]
        logits = (logits + jnp.einsum("bxyhd,xid->bhxyi", q, rh, precision="highest")[..., None]
                  + jnp.einsum("bxyhd,yjd->bhxyj", q, rw, precision="highest")[..., None, :])
        probs = jax.nn.softmax(logits.reshape(b, -1, h, w, h * w), axis=-1).reshape(logits.shape)
        out = jnp.einsum("bhxyij,bijhd->bxyhd", probs, v, precision="highest").astype(x.dtype)
        return self.proj(out)


class SamBlock(nnx.Module):
    def __init__(self, c: SamConfig, window: int, *, rngs: nnx.Rngs):
        kw = {"dtype": c.dtype, "param_dtype": c.param_dtype, "rngs": rngs, "use_bias": True}
        self.window = window                         # 0: global attention
        self.layer_norm1 = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, param_dtype=c.param_dtype)
        self.attn = SamAttention(c, window or c.grid, rngs=rngs)
        self.layer_norm2 = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, param_dtype=c.param_dtype)
        self.lin1 = Dense(c.hidden_size, c.mlp_dim, axes=("embed", "mlp"), **kw)
        self.lin2 = Dense(c.mlp_dim, c.hidden_size, axes=("mlp", "embed"), **kw)

    def __call__(self, x):
        b, H, W, C = x.shape
        h = self.layer_norm1(x)
        s = self.window
        if s:
            # Zero-pad the normed map to whole windows (the padded tokens are attended to, as in SAM).
            ph, pw = -H % s, -W % s
            h = jnp.pad(h, ((0, 0), (0, ph), (0, pw), (0, 0)))
            nh, nw = (H + ph) // s, (W + pw) // s
            h = h.reshape(b, nh, s, nw, s, C).transpose(0, 1, 3, 2, 4, 5).reshape(-1, s, s, C)
            h = self.attn(h)
            h = h.reshape(b, nh, nw, s, s, C).transpose(0, 1, 3, 2, 4, 5).reshape(b, nh * s, nw * s, C)
            h = h[:, :H, :W]
        else:
            h = self.attn(h)
        x = x + h
        m = constrain(jax.nn.gelu(self.lin1(self.layer_norm2(x)), approximate=False),
                      ("batch", None, None, "act_mlp"))
        return x + self.lin2(m)


class SamEncoder(nnx.Module):
    """Patch conv + absolute positions → blocks → neck. Returns ``(neck(out), first global layer's
    output)`` both ``[b, grid, grid, ·]``."""

    def __init__(self, c: SamConfig, *, rngs: nnx.Rngs):
        self.config = c
        p, E, pd = c.patch_size, c.hidden_size, jnp.dtype(c.param_dtype)
        self.patch_kernel = nnx.Param(
            nnx.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3)(
                rngs.params(), (p, p, c.num_channels, E), pd),
            out_sharding=("conv", "conv", "conv", "embed"))
        self.patch_bias = nnx.Param(jnp.zeros((E,), pd), out_sharding=("embed",))
        self.pos_embed = nnx.Param(jnp.zeros((c.grid, c.grid, E), pd),
                                   out_sharding=("positions", None, "embed"))
        self.layers = nnx.List([SamBlock(c, 0 if i in c.global_attn_indexes else c.window_size,
                                         rngs=rngs) for i in range(c.num_layers)])
        self.neck = Neck(c, rngs=rngs)

    def __call__(self, images):
        c = self.config
        b, H, W, C = images.shape
        p, dtype = c.patch_size, jnp.dtype(c.dtype or c.param_dtype)
        x = images.astype(dtype).reshape(b, H // p, p, W // p, p, C)
        h = jnp.einsum("bxiyjc,ijce->bxye", x, self.patch_kernel[...].astype(dtype),
                       preferred_element_type=jnp.float32, precision="highest").astype(dtype)
        h = h + self.patch_bias[...].astype(dtype) + self.pos_embed[...].astype(dtype)
        first_global = None
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i == c.global_attn_indexes[0]:
                first_global = h
        return self.neck(h), first_global


class SamDownsample(nnx.Module):
    """Bilinear resize to 4× the low-resolution grid, then two stride-2 3×3 convs (C → 2C → 4C)."""

    def __init__(self, c: SamConfig, out_grid: int, *, rngs: nnx.Rngs):
        kw = {"dtype": c.dtype, "param_dtype": c.param_dtype, "rngs": rngs, "stride": 2, "padding": 1}
        C = c.output_channels
        self.out_grid = out_grid
        self.conv1 = Conv(C, 2 * C, 3, **kw)
        self.conv2 = Conv(2 * C, 4 * C, 3, **kw)

    def __call__(self, x):
        # The release resizes in float32 whatever the compute dtype.
        x = resize_2d(x.astype(jnp.float32), 4 * self.out_grid, antialias=False).astype(x.dtype)
        return self.conv2(self.conv1(x))


class HybridVisionTower(nnx.Module):
    def __init__(self, sam: SamConfig, vision: ViTConfig, *, rngs: nnx.Rngs):
        self.sam = SamEncoder(sam, rngs=rngs)
        self.neck_hd = Neck(sam, rngs=rngs)
        grid = vision.image_size // vision.patch_size
        self.downsample = SamDownsample(sam, grid, rngs=rngs)
        # Weight of the first global layer's path; the release initialises it to 0.
        self.alpha = nnx.Param(jnp.zeros((1,), jnp.dtype(sam.param_dtype)), out_sharding=("norm",))
        self.siglip = ViT(vision, rngs=rngs)

    def __call__(self, high, low):
        """``high [n, S_h, S_h, 3]``, ``low [n, S_l, S_l, 3]`` (normalised) → ``(high [n, t, 4C],
        low [n, t, E])``."""
        neck, first_global = self.sam(high)
        x = self.downsample(neck)
        g = self.downsample(self.neck_hd(first_global))
        x = x + g * self.alpha[...].astype(g.dtype)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        # The release's SigLIP runs every layer and its final norm (select_layer −1, no head).
        lo = self.siglip(low)[0]
        return x, lo


class HybridProjector(nnx.Module):
    """``proj(gelu(concat(high_up_proj(high), low_up_proj(low))))`` (low_high_hybrid_split_mlp_gelu)."""

    def __init__(self, d_high, d_low, d_out, *, dtype=None, param_dtype="float32", rngs: nnx.Rngs):
        kw = {"use_bias": True, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.high_up_proj = Dense(d_high, d_out // 2, axes=("embed", "mlp"), **kw)
        self.low_up_proj = Dense(d_low, d_out // 2, axes=("embed", "mlp"), **kw)
        self.proj = Dense(d_out, d_out, axes=("mlp", "embed"), **kw)

    def __call__(self, high, low):
        h = jnp.concatenate([self.high_up_proj(high), self.low_up_proj(low)], axis=-1)
        h = constrain(jax.nn.gelu(h, approximate=False), ("batch", "length", "act_mlp"))
        return self.proj(h)


class HybridVLM(nnx.Module):
    """:class:`~mathvlm.models.vlm.VLM`'s interface over the hybrid tower; ``images`` as in the module
    docstring. Text-only rows (``image_mask`` False) keep the decoder's own embeddings."""

    def __init__(self, config: HybridVLMConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        self.vision_tower = HybridVisionTower(c.sam, c.vision, rngs=rngs)
        self.projector = HybridProjector(4 * c.sam.output_channels, c.vision.hidden_size,
                                         c.decoder.hidden_size, dtype=c.decoder.dtype,
                                         param_dtype=c.decoder.param_dtype, rngs=rngs)
        self.decoder = DecoderLM(c.decoder, rngs=rngs)

    def split_images(self, images):
        """``(high, low)`` normalised, each ``[n, S, S, 3]``, plus the leading ``(b, k)`` shape."""
        c = self.config
        if isinstance(images, dict):
            high, low = jnp.asarray(images["high"]), jnp.asarray(images["low"])
        else:
            high = jnp.asarray(images)
            low = None
        if high.ndim == 4:
            high = high[:, None]
            low = None if low is None else low[:, None]
        lead = high.shape[:2]
        high = high.reshape((-1,) + high.shape[2:])
        if low is None:
            # One [0, 1] image: the release normalises each branch inside the tower.
            x = high.astype(jnp.float32)
            low = resize_2d(x, c.vision.image_size, antialias=True)
            low = (low - jnp.asarray(c.low_mean)) / jnp.asarray(c.low_std)
            high = (x - jnp.asarray(c.high_mean)) / jnp.asarray(c.high_std)
        else:
            low = low.reshape((-1,) + low.shape[2:])
        want = (c.sam.image_size, c.vision.image_size)
        if (high.shape[1], low.shape[1]) != want:
            raise ValueError(f"hybrid tower wants {want[0]}-px and {want[1]}-px images; got "
                             f"{high.shape[1]} and {low.shape[1]}")
        return high, low, lead

    def image_features(self, images):
        """Projected features ``[b, k·tokens_per_image, d]``."""
        high, low, (b, _) = self.split_images(images)
        hi, lo = self.vision_tower(high, low)
        feats = self.projector(hi, lo)
        return feats.reshape(b, -1, feats.shape[-1])

    # The token merge, masks, forward and generation are VLM's own code (shared, not copied): they
    # only use ``config.image_token_id``, ``config.decoder``, ``self.decoder`` and ``image_features``.
    # Not a VLM subclass, so code that handles VLM's single-tower layout does not take this one.
    embed = VLM.embed
    masks = VLM.masks
    __call__ = VLM.__call__
    hidden = VLM.hidden
    unembed = VLM.unembed
    generate = VLM.generate
