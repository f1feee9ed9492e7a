"""Does the tiny VLM learn what only its picture says? Controls that locate where visual grounding stalls.

    python -m mathvlm.experiments.image_route --images engine --steps 400     # the real diagrams
    python -m mathvlm.experiments.image_route --images colour --steps 100     # one solid colour per letter
    python -m mathvlm.experiments.image_route --images tint:0.1 --steps 200   # diagram + faint tint per letter
    python -m mathvlm.experiments.image_route --images engine --probe flat    # image tower + linear head alone

Every run trains the demo's tiny VLM from scratch (``configs/mavis/instruct.py:size=tiny``: CLIP-flavour
32-wide tower, 64 image tokens, 4-layer decoder, everything trainable) on vision-dominant
``function_shape`` problems answered with the letter alone, and every ``--eval-every`` steps reports the
letter accuracy (teacher-forced argmax) on held-out batches with each row's own picture and with another
row's (``shuffled``): the gap is what the model reads from the picture. ``--images`` swaps what the picture
carries while the text stays the same:

* ``engine``  — the engine's diagram (the answer is the kind of curve drawn);
* ``colour``  — a solid image whose colour is the answer letter (a label every image token carries);
* ``tint:S``  — the diagram plus ``S`` added to one colour channel chosen by the letter (the label in a
  small shift of every token).

Interventions on the VLM run: ``--tower-pretrain N`` first trains its image tower for N steps as the
``--probe flat`` classifier (tower + linear head on the letter); ``--tower-from DIR`` starts it from a
CLIP-Math run's image tower instead; ``--freeze-tower`` trains everything else; ``--standardise`` scales
the image features per token position and channel before the projector, with the mean and spread of
each batch (``batch``, a diagnostic: a row's output depends on its batch) or with those measured once on
16 training batches and then kept (``fixed``: the VLM's ``feature_norm: calibrated``).

``--probe flat`` / ``--probe mean`` skip the decoder: the image tower plus a linear head on its flattened
(position-aware) or mean-pooled patch features, trained on the letter as a 4-way label. The last line is one
JSON object with the accuracy curves.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mathvlm import config as mc
from mathvlm.data import pipeline
from mathvlm.data.tokenization import load_tokenizer
from mathvlm.losses.next_token import reduce_over_tokens, token_statistics
from mathvlm.models.vlm import merge_moments
from mathvlm.train import steps as steps_lib

RECIPE = "configs/mavis/instruct.py:size=tiny,steps=10"
_KEYS = ("tokens", "targets", "loss_mask", "attention_mask", "images", "image_mask")
# One colour per letter (CLIP-normalised units): red, green, blue, black.
_COLOURS = np.asarray([[1.5, -1.5, -1.5], [-1.5, 1.5, -1.5], [-1.5, -1.5, 1.5], [-1.5, -1.5, -1.5]],
                      np.float32)


def data_config(family: str = "function_shape", batch_size: int = 16):
    config = mc.load(RECIPE)
    data = config.data
    data.families, data.answer, data.version = (family,), "letter", "vision_dominant"
    data.seq_len, data.length_buckets, data.batch_size = 400, (200, 300, 400), batch_size
    return config.model, data


def letters(batch, letter_ids: dict[int, int]) -> np.ndarray:
    """The answer letter (0-3) of every row: the supervised token that is one of the four letters."""
    out = []
    for targets, mask in zip(batch["targets"], batch["loss_mask"]):
        found = [letter_ids[int(t)] for t in targets[mask > 0] if int(t) in letter_ids]
        if len(found) != 1:
            raise ValueError(f"expected one answer letter among the supervised tokens, found {len(found)}")
        out.append(found[0])
    return np.asarray(out)


def swap_images(batch, mode: str, labels: np.ndarray) -> dict:
    batch = dict(batch)
    if mode == "engine":
        return batch
    images = np.array(batch["images"])
    if mode == "colour":
        images[:] = _COLOURS[labels][:, None, None, :]
    elif mode.startswith("tint:"):
        strength = float(mode.split(":", 1)[1])
        shift = np.zeros((len(labels), 3), np.float32)
        rows = labels < 3  # letters A-C shift one channel; D keeps the plain diagram
        shift[rows, labels[rows]] = strength
        images += shift[:, None, None, :]
    else:
        raise ValueError(f"--images {mode!r}: use engine, colour or tint:<strength>")
    batch["images"] = images
    return batch


def _letter_ids(tokenizer) -> dict[int, int]:
    ids = {}
    for i, letter in enumerate("ABCD"):
        encoded = tokenizer.encode(f"option {letter}.")
        ids[encoded[-2]] = i  # the letter's own token, before the full stop
    return ids


class _BatchStandardisedTower(nnx.Module):
    """The image tower with its features standardised per position and channel across each batch."""

    def __init__(self, tower):
        self.tower = tower

    def features(self, images, layer, strategy):
        feats = self.tower.features(images, layer, strategy)
        return (feats - feats.mean(axis=0, keepdims=True)) / (feats.std(axis=0, keepdims=True) + 1e-3)


def _vlm_runner(model_config, lr, steps, tower_pretrain=0, pretrain_batches=None, standardise="",
                freeze_tower=False, tower_from=""):
    from mathvlm.train.build import build_model

    fields = model_config.to_dict()
    if standardise == "fixed":
        fields["feature_norm"] = "calibrated"
    model = build_model(mc.ConfigDict(fields), seed=0)
    if tower_from:
        from mathvlm.train.warm_start import load_from_checkpoint

        load_from_checkpoint(model, tower_from, "vision_model:vision_tower")
    if tower_pretrain:
        train_probe, _ = _probe_runner(model_config, 1e-3, "flat", tower=model.vision_tower)
        for _ in range(tower_pretrain):
            batch, labels = next(pretrain_batches)
            train_probe(batch, labels)
    if standardise == "batch":
        model.vision_tower = _BatchStandardisedTower(model.vision_tower)
    elif standardise == "fixed":  # as train.calibrate_image_features does it: 16 batches, then fixed
        moments = [model.feature_moments(next(pretrain_batches)[0]["images"]) for _ in range(16)]
        model.calibrate_feature_norm(*functools.reduce(merge_moments, moments))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(20, steps // 10 + 1), steps, lr * 0.1)
    wrt = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("vision_tower"))) if freeze_tower else nnx.Param
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=0.01), wrt=wrt)

    def loss_fn(m, batch):
        nll, _, _ = token_statistics(steps_lib.forward(m, batch), batch["targets"])
        return reduce_over_tokens(nll, batch["loss_mask"])

    @nnx.jit
    def train(model, optimizer, batch):
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model, batch)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def correct(model, batch):
        # teacher-forced: a row is right when every supervised token (the letter among them) is argmax
        logits = steps_lib.forward(model, batch)
        ok = (jnp.argmax(logits, -1) == batch["targets"]) | (batch["loss_mask"] == 0)
        return jnp.all(ok, axis=-1)

    return (lambda batch, labels: train(model, optimizer, batch),
            lambda batch, labels: np.asarray(correct(model, batch)))


def _probe_runner(model_config, lr, pooling, tower=None):
    """Image tower (``tower``, shared and trained in place, or a new one) + linear head on the letter."""
    from mathvlm.models.vit import ViT, ViTConfig

    vision = ViTConfig(**dict(model_config.vision))
    tokens = vision.num_patches

    class Probe(nnx.Module):
        def __init__(self, rngs):
            self.tower = tower if tower is not None else ViT(vision, rngs=rngs)
            self.head = nnx.Linear(vision.hidden_size * (tokens if pooling == "flat" else 1), 4, rngs=rngs)

        def __call__(self, images):
            feats = self.tower.features(images, -2, "drop_cls")
            feats = feats.reshape(len(feats), -1) if pooling == "flat" else feats.mean(axis=1)
            return self.head(feats)

    model = Probe(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(lr), wrt=nnx.Param)

    @nnx.jit
    def train(model, optimizer, images, labels):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(images), labels).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def predict(model, images):
        return jnp.argmax(model(images), axis=-1)

    return (lambda batch, labels: train(model, optimizer, batch["images"], labels),
            lambda batch, labels: np.asarray(predict(model, batch["images"])) == labels)


def run(images: str = "engine", probe: str = "", steps: int = 400, lr: float = 2e-3, eval_every: int = 50,
        eval_batches: int = 4, family: str = "function_shape", seed: int = 0, tower_pretrain: int = 0,
        standardise: str = "", freeze_tower: bool = False, tower_from: str = "", log=print) -> dict:
    """Train and evaluate one setting; returns ``{"step": [...], "accuracy": [...], "shuffled": [...]}``."""
    if probe not in ("", "flat", "mean"):
        raise ValueError(f"--probe {probe!r}: use flat or mean")
    if standardise not in ("", "batch", "fixed"):
        raise ValueError(f"--standardise {standardise!r}: use batch or fixed")
    model_config, data = data_config(family)
    letter_ids = _letter_ids(load_tokenizer(data.tokenizer))

    def labelled(stream_seed):
        """(batch with the pictures ``images`` asks for, letters) from the pipeline at ``stream_seed``."""
        for batch in pipeline.make_iterator(data, seed=stream_seed):
            batch = {k: batch[k] for k in _KEYS}
            labels = letters(batch, letter_ids)
            yield swap_images(batch, images, labels), labels

    held = list(itertools.islice(labelled(seed + 1_000), eval_batches))
    if probe:
        train, correct = _probe_runner(model_config, lr, probe)
    else:
        train, correct = _vlm_runner(model_config, lr, steps, tower_pretrain, labelled(seed + 2_000),
                                     standardise, freeze_tower, tower_from)
    curves = {"step": [], "accuracy": [], "shuffled": []}
    batches = labelled(seed)
    start = time.time()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            right = np.concatenate([correct(b, y) for b, y in held])
            # another row's picture, same question and answer
            other = np.concatenate([correct({**b, "images": np.roll(b["images"], 1, axis=0)}, y)
                                    for b, y in held])
            for key, value in (("step", step), ("accuracy", float(right.mean())),
                               ("shuffled", float(other.mean()))):
                curves[key].append(value)
            log(f"step {step:5d}  accuracy {right.mean():.3f}  with another row's picture "
                f"{other.mean():.3f}  ({time.time() - start:.0f} s)")
        if step == steps:
            break
        train(*next(batches))
    return curves


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="engine", help="engine | colour | tint:<strength>")
    parser.add_argument("--probe", default="", help="flat | mean: the image tower + a linear head alone")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=None, help="default 2e-3 (VLM), 1e-3 (--probe)")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--family", default="function_shape")
    parser.add_argument("--tower-pretrain", type=int, default=0, help="steps of the flat probe first")
    parser.add_argument("--standardise", default="", help="batch | fixed: standardise the image features")
    parser.add_argument("--freeze-tower", action="store_true", help="train all but the image tower")
    parser.add_argument("--tower-from", default="", help="a CLIP-Math workdir: start from its image tower")
    args = parser.parse_args(argv)
    lr = args.lr or (1e-3 if args.probe else 2e-3)
    curves = run(args.images, args.probe, args.steps, lr, args.eval_every, family=args.family,
                 tower_pretrain=args.tower_pretrain, standardise=args.standardise,
                 freeze_tower=args.freeze_tower, tower_from=args.tower_from)
    print(json.dumps({"images": args.images, "probe": args.probe, "family": args.family, "lr": lr,
                      "tower_pretrain": args.tower_pretrain, "standardise": args.standardise,
                      "freeze_tower": args.freeze_tower, "tower_from": args.tower_from, **curves}))


if __name__ == "__main__":
    main(sys.argv[1:])
