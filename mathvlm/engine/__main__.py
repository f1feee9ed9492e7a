"""CLI: ``python -m mathvlm.engine {build,gallery}``.

    build   --kind {caption,instruct,pairs} --num N --seed S --out DIR [--heldout M] [--image-size P]
            byte-reproducible; prints each split's sha256 and writes <data_dir>/SHA256SUMS
    gallery --out FILE.png [--seed S]            grid of every family × version

Diagrams/s per core (render only, and full records): ``python -m mathvlm.bench engine``.
"""

from __future__ import annotations

import argparse
import textwrap

from PIL import Image, ImageDraw

from mathvlm.engine import core, wording
from mathvlm.engine.common import FAMILIES
from mathvlm.engine.render import font


def _build(args):
    from tqdm import tqdm

    from mathvlm.engine import builders
    total = args.num + (args.heldout if args.heldout is not None else max(1, args.num // 10))
    with tqdm(total=total, desc=f"engine {args.kind}", unit="ex") as bar:
        builder = builders.build(args.kind, args.num, args.seed, args.out, num_heldout=args.heldout,
                                 image_size=args.image_size, progress=bar)
    print(f"wrote {builder.data_dir}")
    for line in builders.digest_lines(builder.digest):
        print(line)
    print(f"wrote {builder.data_dir}/{builders.SHA256SUMS} (check: cd there && sha256sum -c {builders.SHA256SUMS})")


def _gallery(args):
    versions = [v for v in wording.VERSIONS]
    tile, head = 300, 22
    grid = Image.new("RGB", (tile * len(versions), (tile + head) * len(FAMILIES) + head), "white")
    draw = ImageDraw.Draw(grid)
    small = font("DejaVuSans.ttf", 12)
    for col, version in enumerate(versions):
        draw.text((col * tile + 6, 4), version, font=font("DejaVuSans-Bold.ttf", 14), fill="black")
    for row, family in enumerate(FAMILIES):
        want = 1 if family == "function" else 3  # enough givens to show the versions differ
        index = next(i for i in range(1000) if len(core.make_problem(args.seed, i, (family,))["givens"]) >= want)
        y = head + row * (tile + head)
        for col, version in enumerate(versions):
            rec = core.make_record(args.seed, index, version=version, image_size=tile, families=(family,))
            if rec["has_image"]:
                # vision-only in its multiple-choice form: the drawn question also shows the options
                grid.paste(Image.fromarray(rec["image_mc"]), (col * tile, y))
            else:
                wrapped = textwrap.fill(rec["question"], 44)
                draw.multiline_text((col * tile + 6, y + 6), wrapped, font=small, fill="black")
            caption = textwrap.shorten(rec["question"], 48, placeholder="…")
            draw.text((col * tile + 4, y + tile + 3), caption, font=small, fill=(60, 60, 60))
        draw.text((4, y - head + 4 if row else y - 2), "", font=small)
    for col in range(1, len(versions)):
        draw.line([(col * tile, 0), (col * tile, grid.height)], fill=(180, 180, 180))
    grid.save(args.out)
    print(f"wrote {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mathvlm.engine")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write a TFDS ArrayRecord dataset")
    b.add_argument("--kind", choices=core.KINDS, required=True)
    b.add_argument("--num", type=int, required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True)
    b.add_argument("--heldout", type=int, default=None, help="held-out examples (default num // 10)")
    b.add_argument("--image-size", type=int, default=336, help="0 = varied per example")
    g = sub.add_parser("gallery", help="PNG grid of every family × version")
    g.add_argument("--out", required=True)
    g.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    {"build": _build, "gallery": _gallery}[args.command](args)


if __name__ == "__main__":
    main()
