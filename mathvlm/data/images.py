"""Image preprocessing in numpy/PIL (runs inside grain workers), matching the papers' processors.

* LLaVA-1.5 / Math-LLaVA (``image_aspect_ratio pad``): expand to a square filled with the CLIP mean
  colour, resize the shortest edge (bicubic), centre-crop, rescale 1/255, CLIP mean/std.
* Math-PUMA Qwen2 / SigLIP: plain bicubic resize to ``size × size``, rescale, mean = std = 0.5.
* Math-PUMA DeepSeek-VL (``deepseek``): bicubic resize of the longer side to ``size`` (the shorter one
  truncated, at least 14), centred on a square filled with the CLIP mean colour, rescaled to [0, 1] and
  not normalised: the hybrid tower normalises each branch and makes its low-resolution copy itself.

Outputs are float32 ``[H, W, 3]`` (channels last, as the NNX image towers take them).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def load_image(source) -> Image.Image:
    """An RGB PIL image from a path, encoded bytes, a uint8 array or a PIL image.

    Raises ``ValueError`` naming the source when it cannot be decoded (callers skip and count it).
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = Image.fromarray(source)
    else:
        name = source if isinstance(source, str) else "<bytes>"
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
            image.load()
        except FileNotFoundError:
            raise
        except Exception as e:  # PIL raises several types for corrupt data
            raise ValueError(f"cannot decode image {name}: {e}") from None
    return image.convert("RGB")


def expand_to_square(image: Image.Image, fill: tuple[float, ...] = CLIP_MEAN,
                     background: tuple[int, ...] | None = None) -> Image.Image:
    """LLaVA's ``expand2square``: pad the short side symmetrically with ``fill`` (0–1 RGB, truncated to
    0–255 as the releases do) or the 0–255 ``background``."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    background = tuple(background) if background else tuple(int(c * 255) for c in fill)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def _normalize(image: Image.Image, mean, std) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    return (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _resize_shortest_edge(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return image.resize(new_size, Image.Resampling.BICUBIC)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    top = (height - size) // 2
    left = (width - size) // 2
    return image.crop((left, top, left + size, top + size))


def clip_preprocess(source, size: int = 336, pad_to_square: bool = True) -> np.ndarray:
    """CLIP / LLaVA-1.5 preprocessing → float32 ``[size, size, 3]``."""
    image = load_image(source)
    if pad_to_square:
        image = expand_to_square(image, CLIP_MEAN)
    image = _center_crop(_resize_shortest_edge(image, size), size)
    return _normalize(image, CLIP_MEAN, CLIP_STD)


def siglip_preprocess(source, size: int = 384) -> np.ndarray:
    """SigLIP / Math-PUMA preprocessing → float32 ``[size, size, 3]``."""
    image = load_image(source).resize((size, size), Image.Resampling.BICUBIC)
    return _normalize(image, SIGLIP_MEAN, SIGLIP_STD)


def deepseek_preprocess(source, size: int = 1024, min_size: int = 14,
                        background: tuple[int, ...] | None = None) -> np.ndarray:
    """DeepSeek-VL's image processor up to its normalisation → float32 ``[size, size, 3]`` in [0, 1]."""
    image = load_image(source)
    width, height = image.size
    longest = max(width, height)
    new_size = (max(int(width / longest * size), min_size), max(int(height / longest * size), min_size))
    image = expand_to_square(image.resize(new_size, Image.Resampling.BICUBIC), CLIP_MEAN, background)
    return (np.asarray(image).astype(np.float64) * (1 / 255)).astype(np.float32)


PREPROCESSORS = {"clip": clip_preprocess, "siglip": siglip_preprocess, "deepseek": deepseek_preprocess}


def preprocess(source, kind: str, size: int) -> np.ndarray:
    """Dispatch by ``kind`` (``"clip"`` pads to square, ``"clip_nopad"`` does not, ``"siglip"``)."""
    if kind == "clip_nopad":
        return clip_preprocess(source, size, pad_to_square=False)
    if kind not in PREPROCESSORS:
        raise ValueError(f"unknown image preprocessing {kind!r}; use one of "
                         f"{sorted(PREPROCESSORS) + ['clip_nopad']}")
    return PREPROCESSORS[kind](source, size)
