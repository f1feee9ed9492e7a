"""Math-LLaVA data selection: score a pool of images with trained clarity and
complexity classifiers, drop unclear images, and pick N samples in a ratio over complexity levels 0–3
(2:3:4:1 by default), taking all of a level that has fewer than its share and spreading each level's
picks evenly over the pool's sources. Writes a LLaVA-JSON dataset the ``conversations`` source reads.

  python -m mathvlm.tools.select --classifier RUN [--classifier CLARITY_RUN] --pool engine:N|llava_json:PATH
      --num N --out DIR [--ratio 2:3:4:1] [--take-all-level 3] [--min-clarity 1] [--image-root DIR]
      [--heldout N] [--seed S]

``--classifier`` names training workdirs of ``configs/math_llava/complexity_classifier.py`` (its
``data.label`` says whether a run rates complexity or clarity). ``--heldout N`` first reports each
classifier's accuracy on N held-out engine images against the majority class. Output: ``DIR/train.json``
(train on it with ``data.source=conversations, format=llava_json, path=DIR/train.json,
image_root=DIR``), ``DIR/images/``, ``DIR/scores.jsonl`` (every pool item's predictions) and
``DIR/selection.json`` (requested and realised counts). The last printed line is that JSON summary.

Lives outside :mod:`mathvlm.data` because it loads models, which the data package never imports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections import Counter, defaultdict

import numpy as np

LEVELS = 4


# ------------------------------------------------------------------------------------ selection rule

def apportion(total: int, weights) -> list[int]:
    """Integers proportional to ``weights`` summing to ``total`` (largest remainder; ties to the lower
    index), so a ratio that divides ``total`` is met exactly."""
    weights = [float(w) for w in weights]
    if total < 0 or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"cannot share {total} by weights {weights}")
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(x + 1e-9) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def level_targets(num: int, ratio, available, take_all_level: int | None = None) -> list[int]:
    """How many samples to take per level: ``num`` shared by ``ratio``; a level with fewer samples
    than its share gives all it has and the rest is shared again among the other levels (by ratio);
    ``take_all_level`` is taken whole whatever its share. Sums to ``num`` unless the pool is smaller."""
    ratio, available = [float(r) for r in ratio], [int(a) for a in available]
    targets = [0] * len(ratio)
    fixed = set()
    if take_all_level is not None:
        targets[take_all_level] = min(available[take_all_level], num)
        fixed.add(take_all_level)
    while True:
        open_levels = [lv for lv in range(len(ratio)) if lv not in fixed and ratio[lv] > 0]
        left = num - sum(targets[lv] for lv in fixed)
        if not open_levels or left <= 0:
            break
        shares = apportion(left, [ratio[lv] for lv in open_levels])
        short = [lv for lv, share in zip(open_levels, shares) if available[lv] < share]
        if not short:
            for lv, share in zip(open_levels, shares):
                targets[lv] = share
            break
        for lv in short:  # take all of it; its shortfall is shared again
            targets[lv] = available[lv]
            fixed.add(lv)
    return targets


def spread(groups: dict[str, list[int]], count: int, rng: np.random.Generator) -> list[int]:
    """``count`` items drawn as evenly as possible over the groups (sources): every source gives an
    equal share, a source with fewer gives all it has and the others fill in (water-filling); which
    sources give one more when the share does not divide, and which items a source gives, is random."""
    pools = {name: [int(i) for i in rng.permutation(items)] for name, items in sorted(groups.items())}
    quota = dict.fromkeys(pools, 0)
    remaining = min(count, sum(len(p) for p in pools.values()))
    open_ = [name for name in pools if pools[name]]
    while remaining > 0:
        share, extra = divmod(remaining, len(open_))
        small = [name for name in open_ if len(pools[name]) <= share]
        if small:
            for name in small:
                remaining -= len(pools[name]) - quota[name]
                quota[name] = len(pools[name])
                open_.remove(name)
            continue
        lucky = {str(n) for n in rng.choice(open_, size=extra, replace=False)} if extra else set()
        for name in open_:
            quota[name] = share + (name in lucky)
        remaining = 0
    return sorted(i for name in pools for i in pools[name][: quota[name]])


def select(levels, sources, num: int, ratio=(2, 3, 4, 1), *, take_all_level: int | None = None,
           keep=None, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Indices of the chosen samples and a report (available / target / selected per level)."""
    levels, sources = np.asarray(levels), np.asarray(sources)
    keep = np.ones(len(levels), bool) if keep is None else np.asarray(keep, bool)
    if len(ratio) != LEVELS:
        raise ValueError(f"--ratio needs {LEVELS} weights (levels 0-3), got {ratio}")
    available = [int(np.sum(keep & (levels == lv))) for lv in range(LEVELS)]
    targets = level_targets(num, ratio, available, take_all_level)
    rng = np.random.default_rng(seed)
    chosen = []
    for lv in range(LEVELS):
        groups = defaultdict(list)
        for i in np.flatnonzero(keep & (levels == lv)):
            groups[str(sources[i])].append(int(i))
        chosen += spread(groups, targets[lv], rng)
    chosen = np.asarray(sorted(chosen), np.int64)
    selected = [int(np.sum(levels[chosen] == lv)) for lv in range(LEVELS)]
    total = sum(selected)
    exact = total > 0 and all(abs(s * sum(ratio) - total * r) < 1e-6 for s, r in zip(selected, ratio))
    report = {"requested_num": num, "ratio": [float(r) for r in ratio], "available": available,
              "target": targets, "selected": selected, "num_selected": total, "ratio_exact": bool(exact),
              "by_source": dict(sorted(Counter(str(s) for s in sources[chosen]).items()))}
    return chosen, report


# ------------------------------------------------------------------------------------ classifiers

class Classifier:
    """A trained ``vit_classifier`` run: ``probabilities(images)`` → [n, classes]."""

    def __init__(self, run_dir: str, batch_size: int = 64):
        import jax
        from flax import nnx
        from ml_collections import ConfigDict

        from mathvlm.evaluate import load_model

        path = os.path.join(run_dir, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--classifier {run_dir}: no config.json there; give the workdir of a "
                                    "run of configs/math_llava/complexity_classifier.py")
        with open(path) as f:
            config = ConfigDict(json.load(f))
        if config.model.name != "vit_classifier" or config.data.get("source") != "engine_images":
            raise ValueError(f"--classifier {run_dir}: model {config.model.name!r} / source "
                             f"{config.data.get('source')!r} is not an image classifier run "
                             "(configs/math_llava/complexity_classifier.py)")
        # Scoring is inference on a small model: replicate it over whatever devices this process has.
        config.mesh = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
        self.run_dir, self.config = run_dir, config
        self.label = config.data.get("label", "complexity")
        self.image_size = int(config.data.image_size)
        self.preprocess_kind = config.data.get("image_preprocess", "clip")
        model, self.origin = load_model(config, checkpoint=run_dir)
        self.graphdef, self.state = nnx.split(model)
        ways = jax.device_count()
        self.batch_size = max(ways, -(-batch_size // ways) * ways)  # a multiple of the devices
        self._logits = jax.jit(lambda state, x: nnx.merge(self.graphdef, state)(x))

    def pixels(self, image) -> np.ndarray:
        from mathvlm.data import images as image_ops

        return image_ops.preprocess(image, self.preprocess_kind, self.image_size)

    def probabilities(self, images, *, preprocessed: bool = False) -> np.ndarray:
        """Softmax over classes for a sequence of images (uint8 arrays, paths or PIL images; or, with
        ``preprocessed``, model-ready float arrays)."""
        import jax

        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = np.stack([im if preprocessed else self.pixels(im)
                              for im in images[start:start + self.batch_size]])
            padded = np.zeros((self.batch_size,) + chunk.shape[1:], np.float32)
            padded[: len(chunk)] = chunk  # one compiled shape for every batch
            logits = np.asarray(jax.device_get(self._logits(self.state, padded)))[: len(chunk)]
            out.append(np.exp(logits - logits.max(-1, keepdims=True)))
        probs = np.concatenate(out) if out else np.zeros((0, 2), np.float32)
        return probs / probs.sum(-1, keepdims=True)


def heldout_accuracy(classifier: Classifier, num: int) -> dict:
    """Accuracy on ``num`` held-out engine images (never trained on) with the run's own labels, the
    majority-class accuracy of the same set, and the confusion matrix (rows = true label)."""
    from ml_collections import ConfigDict

    from mathvlm.data.engine_labels import EngineImageSource

    data = {k: v for k, v in classifier.config.data.to_dict().items() if k not in ("path", "image_root")}
    source = EngineImageSource(ConfigDict({**data, "split": "heldout", "num_examples": num}),
                               seed=classifier.config.seed)
    rows = [source[i] for i in range(num)]
    labels = np.asarray([int(r["label"]) for r in rows])
    probs = classifier.probabilities([r["images"] for r in rows], preprocessed=True)
    predicted = probs.argmax(-1)
    classes = probs.shape[-1]
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return {"label": classifier.label, "num": num, "accuracy": float(np.mean(predicted == labels)),
            "majority": float(np.bincount(labels, minlength=classes).max() / num),
            "confusion": confusion.tolist()}


# ------------------------------------------------------------------------------------------ pools

def engine_pool(num: int, seed: int, render_size: int, multiple_choice: float) -> list[dict]:
    """Engine problems as pool items: ``{"id", "source" (family), "image" (uint8), "row" (LLaVA
    conversation), "engine_complexity"}``. The image of index i is the ``mixed``-version diagram the
    ``engine_images`` source shows for i (same seed and canvas)."""
    from mathvlm.data import engine_prompts
    from mathvlm.engine import core
    from mathvlm.data.engine_labels import IMAGE_VERSIONS

    items = []
    for index in range(num):
        version = IMAGE_VERSIONS[core.rng_for(seed, index, "version").integers(len(IMAGE_VERSIONS))]
        record = core.make_record(seed, index, kind="instruct", version=version, image_size=render_size)
        mc = bool(np.random.default_rng([seed, index, 37]).random() < multiple_choice)
        turns = engine_prompts.engine_conversation(record, mc)
        image = engine_prompts.engine_image(record, mc)
        row = {"id": record["id"], "conversations": [
            {"from": "human" if t["role"] == "user" else "gpt", "value": t["content"]} for t in turns]}
        items.append({"id": record["id"], "source": record["family"], "image": image, "row": row,
                      "engine_complexity": int(record["complexity"])})
    return items


def llava_pool(path: str, image_root: str | None) -> list[dict]:
    """Rows of a LLaVA-JSON file with an image; the source is the row's ``source`` field or the first
    folder of its image path (MathV360K keeps each source dataset in its own folder)."""
    from mathvlm.data import readers

    skips = readers.SkipCounter()
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    items = []
    for where, row in readers.read_rows(path, skips):
        if not isinstance(row, dict) or "conversations" not in row:
            skips.skip("malformed_row", where, "no conversations")
            continue
        if not row.get("image"):
            skips.skip("no_image", where, "text-only rows have no image to rate")
            continue
        name = str(row["image"])
        parts = name.replace("\\", "/").split("/")
        items.append({"id": str(row.get("id", where)), "row": dict(row), "relative": name,
                      "source": str(row.get("source") or (parts[0] if len(parts) > 1 else "default")),
                      "image": name if os.path.isabs(name) else os.path.join(root, name)})
    if skips.total:
        print(f"pool {path}: skipped {dict(skips.counts)}", file=sys.stderr)
    if not items:
        raise ValueError(f"--pool llava_json:{path}: no rows with an image")
    return items


def parse_pool(spec: str, seed: int, render_size: int, multiple_choice: float, image_root) -> list[dict]:
    kind, _, value = spec.partition(":")
    if kind == "engine" and value.isdigit() and int(value) > 0:
        return engine_pool(int(value), seed, render_size, multiple_choice)
    if kind == "llava_json" and value:
        return llava_pool(value, image_root)
    raise ValueError(f"--pool {spec!r}: use engine:N (N engine problems) or llava_json:PATH")


# ------------------------------------------------------------------------------------------ output

def write_dataset(items: list[dict], chosen, out: str) -> str:
    """``out/train.json`` (LLaVA rows, image paths relative to ``out``) and the images under
    ``out/images/``; returns the JSON path."""
    from PIL import Image

    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rows = []
    for i in chosen:
        item = items[int(i)]
        if "relative" in item:   # keep the pool's folder layout (file names repeat across sources)
            relative = os.path.join("images", item["relative"].lstrip("/"))
            os.makedirs(os.path.dirname(os.path.join(out, relative)), exist_ok=True)
            shutil.copyfile(item["image"], os.path.join(out, relative))
        else:
            relative = os.path.join("images", item["id"].replace("/", "_") + ".png")
            Image.fromarray(item["image"]).save(os.path.join(out, relative))
        rows.append({**item["row"], "image": relative, "source": item["source"],
                     **{k: item[k] for k in ("complexity", "clarity") if k in item}})
    path = os.path.join(out, "train.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1, ensure_ascii=False)
    return path


def parse_ratio(text: str) -> tuple[float, ...]:
    try:
        ratio = tuple(float(x) for x in text.split(":"))
    except ValueError:
        ratio = ()
    if len(ratio) != LEVELS or min(ratio) < 0 or sum(ratio) <= 0:
        raise ValueError(f"--ratio {text!r}: give four non-negative weights for levels 0-3, e.g. 2:3:4:1")
    return ratio


def run(args) -> dict:
    classifiers = [Classifier(d, batch_size=args.batch_size) for d in args.classifier]
    by_label = {}
    for c in classifiers:
        if c.label in by_label:
            raise ValueError(f"--classifier {c.run_dir} and {by_label[c.label].run_dir} both rate {c.label}; "
                             "give one complexity and at most one clarity classifier")
        by_label[c.label] = c
    summary: dict = {"classifiers": {c.label: c.run_dir for c in classifiers}}
    if args.heldout:
        for c in classifiers:
            result = heldout_accuracy(c, args.heldout)
            summary[f"heldout_{c.label}"] = result
            print(f"{c.label} classifier {c.run_dir}: held-out accuracy {result['accuracy']:.3f} on "
                  f"{result['num']} engine images (majority class {result['majority']:.3f}); "
                  f"confusion (rows = true) {result['confusion']}")
    if not args.pool:
        return summary
    if "complexity" not in by_label:
        raise ValueError("selection needs a complexity classifier among --classifier")
    if args.min_clarity and "clarity" not in by_label:
        raise ValueError("--min-clarity needs a clarity classifier among --classifier "
                         "(a run of complexity_classifier.py:label=clarity)")
    if not args.out or not args.num:
        raise ValueError("selecting needs --num N and --out DIR")
    ratio = parse_ratio(args.ratio)
    render = by_label["complexity"].config.data.get("render_size", 224)
    items = parse_pool(args.pool, args.seed, render, args.multiple_choice, args.image_root)
    images = [item["image"] for item in items]
    for label, c in by_label.items():
        probs = c.probabilities(images)
        for item, p in zip(items, probs):
            item[label], item[f"{label}_probs"] = int(p.argmax()), [round(float(x), 4) for x in p]
    keep = [item.get("clarity", 1) >= args.min_clarity for item in items]
    chosen, report = select([item["complexity"] for item in items], [item["source"] for item in items],
                            args.num, ratio, take_all_level=args.take_all_level, keep=keep, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scores.jsonl"), "w") as f:
        for item in items:
            f.write(json.dumps({k: v for k, v in item.items() if k not in ("image", "row")}) + "\n")
    path = write_dataset(items, chosen, args.out)
    summary.update(pool=args.pool, pool_size=len(items), kept_by_clarity=int(sum(keep)), **report,
                   dataset=path)
    with open(os.path.join(args.out, "selection.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"pool {args.pool}: {len(items)} images, {sum(keep)} with clarity ≥ {args.min_clarity}")
    print("| level | available | target | selected |\n|---:|---:|---:|---:|")
    for lv in range(LEVELS):
        print(f"| {lv} | {report['available'][lv]} | {report['target'][lv]} | {report['selected'][lv]} |")
    total = max(1, report["num_selected"])
    print("realised ratio 0:1:2:3 = " + ":".join(str(s) for s in report["selected"]) + " ("
          + ", ".join(f"{s / total:.1%}" for s in report["selected"]) + f"); requested {args.ratio}: "
          + ("exact" if report["ratio_exact"] else "NOT exact (a level had fewer images than its share)"))
    print(f"per source: {report['by_source']}")
    print(f"wrote {path} ({report['num_selected']} rows; train with data.source=conversations, "
          f"format=llava_json, path={path}, image_root={args.out})")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathvlm.tools.select", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", action="append", required=True,
                        help="workdir of a classifier run (repeat: one complexity, one clarity)")
    parser.add_argument("--pool", help="engine:N or llava_json:PATH")
    parser.add_argument("--num", type=int, default=0, help="how many samples to select")
    parser.add_argument("--ratio", default="2:3:4:1", help="weights of complexity levels 0:1:2:3")
    parser.add_argument("--take-all-level", type=int, choices=range(LEVELS), default=None,
                        help="take every image of this level (Math-LLaVA: 3), share the rest by ratio")
    parser.add_argument("--min-clarity", type=int, default=0, choices=(0, 1),
                        help="1: drop images the clarity classifier rates unclear")
    parser.add_argument("--out", help="output folder (train.json, images/, scores.jsonl, selection.json)")
    parser.add_argument("--image-root", help="llava_json pool: image folder (default: the JSON's folder)")
    parser.add_argument("--seed", type=int, default=0, help="engine pool seed and sampling seed")
    parser.add_argument("--multiple-choice", type=float, default=0.0,
                        help="engine pool: fraction of problems asked as multiple choice")
    parser.add_argument("--heldout", type=int, default=0, help="report accuracy on N held-out engine images")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
    try:
        summary = run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "by_source"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
