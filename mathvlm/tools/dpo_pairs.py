"""MAVIS stage-4 data: DPO preference pairs from the instruction-tuned model's own mistakes.

    python -m mathvlm.tools.dpo_pairs --config configs/mavis/instruct.py:size=tiny --checkpoint runs/instruct \
        --num 512 --out runs/dpo_pairs

For engine problems of the training split (the same versions and multiple-choice share as the config's
training rows), the stage-3 model answers with its chain of thought; each answer is graded against the
engine's exact answer. A wrong answer becomes a pair: rejected = the model's CoT, chosen = the engine's
CoT (MAVIS found 88K wrong answers among 582K problems). Writes ``OUT/pairs.jsonl``
(DPO preference rows: ``id, image, prompt, chosen, rejected``, read by ``data.format=preference_rows``),
``OUT/images/*.png`` and ``OUT/stats.json``; prints the counts and, as its last line, the stats as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def engine_records(data_config, seed: int, start: int, count: int):
    """``count`` instruct records from ``start`` on, each in the version and MC form the config's
    ``engine_vlm`` training rows give that index."""
    from mathvlm.engine import core
    from mathvlm.data.engine_rows import instruct_form, parse_versions

    versions = parse_versions(data_config.get("version", "mixed"))
    families = tuple(data_config.get("families", None) or core.FAMILIES)
    share = float(data_config.get("multiple_choice", 0.0))
    for index in range(start, start + count):
        version, mc = instruct_form(seed, index, versions, share)
        yield core.make_record(seed, index, kind="instruct", version=version,
                               image_size=data_config.get("render_size", 224), families=families), mc


def build_pairs(config, model, out_dir: str, *, num: int, start: int = 0, batch_size: int = 16) -> dict:
    from PIL import Image
    from tqdm import tqdm

    from mathvlm.data import engine_prompts
    from mathvlm.train.predict import Predictor

    predictor = Predictor.from_config(config)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    stats = {"problems": 0, "correct": 0, "pairs": 0}
    batch = []
    with open(os.path.join(out_dir, "pairs.jsonl"), "w") as out, tqdm(total=num, desc="dpo pairs") as bar:
        def flush():
            images = [engine_prompts.engine_image(r, mc) for r, mc in batch]
            prompts = [engine_prompts.engine_prompt(r, mc) for r, mc in batch]
            responses = predictor(model, prompts, images)
            for (record, mc), prompt, image, response in zip(batch, prompts, images, responses,
                                                             strict=True):
                stats["problems"] += 1
                if engine_prompts.is_correct(record, response, mc):
                    stats["correct"] += 1
                    continue
                row = {"id": record["id"], "prompt": prompt, "chosen": engine_prompts.engine_target(record, mc),
                       "rejected": response, "version": record["version"], "multiple_choice": mc}
                if image is not None:
                    name = f"images/{record['id'].replace('/', '_')}.png"
                    Image.fromarray(image).save(os.path.join(out_dir, name))
                    row["image"] = os.path.abspath(os.path.join(out_dir, name))
                out.write(json.dumps(row) + "\n")
                stats["pairs"] += 1
            bar.update(len(batch))
            batch.clear()

        for item in engine_records(config.data, config.seed, start, num):
            batch.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    stats["accuracy"] = stats["correct"] / max(stats["problems"], 1)
    with open(os.path.join(out_dir, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    return stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the stage-3 run's config (its data and template)")
    parser.add_argument("--checkpoint", required=True, help="the stage-3 run's workdir or checkpoint folder")
    parser.add_argument("--out", required=True, help="output folder (pairs.jsonl, images/, stats.json)")
    parser.add_argument("--num", type=int, default=512, help="engine problems to try")
    parser.add_argument("--start", type=int, default=0, help="first engine index (disjoint chunks per job)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    from mathvlm import config as mc
    from mathvlm.evaluate import load_model

    try:
        config = mc.load(args.config)
    except mc.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, origin = load_model(config, checkpoint=args.checkpoint)
    print(f"model from {origin}", flush=True)
    stats = build_pairs(config, model, args.out, num=args.num, start=args.start, batch_size=args.batch_size)
    print(f"{stats['pairs']} pairs from {stats['problems']} problems "
          f"({100 * stats['accuracy']:.1f}% answered right) → {args.out}/pairs.jsonl")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
