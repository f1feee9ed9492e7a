"""The fit table: every real recipe compiled ahead of time for v5e, v5p and v6e slices on this CPU host,
before and after the pod-efficiency options, with the largest per-chip batch that fits.

    .venv-tpu/bin/python launch/aot_compile.py --table [--rows puma2,llava13b] [--generations v5p]
        [--search 8] [--results runs/fit/results.jsonl] [--out docs/fit_table.md]

Each cell is one ``launch/aot_compile.py`` run in its own process (a 7B/13B compile holds several GiB
of host memory and takes minutes). Results are appended to ``--results`` as JSON lines and a cell
already there is not compiled again, so an interrupted table resumes where it stopped; the markdown
table is rendered from that file.

* **before** — the step as it was: einsum attention materialising ``[batch, heads, L, L]`` scores, full
  ``[batch, L, vocab]`` float32 logits, every decoder block rematerialised, the image tower neither
  scanned nor rematerialised (``--attention xla --logits-chunk 0 --remat full --vision-remat none``).
* **after** — the recipe's defaults (fused attention for the platform, chunked logits, remat policies).
* **largest per-chip batch** — the after-step at 1, 2, 4, ... sequences per chip (up to ``--search``),
  each a full compile, until one does not fit.

Peaks are XLA's per-chip figures (arguments + temporaries when larger, as ``aot_compile`` reports them).
The estimated step time is the TPU compiler's own cost model (``optimal_seconds``, left out when it is
not positive); like its FLOP count it visits a scanned layer's body once, so the implied MFU (its
FLOPs over its time, against the chip's peak) describes the ops XLA counts, not a measured step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    title: str
    config: str
    model: tuple[str, ...]         # --vlm / --preset / --projector arguments
    big: bool = False              # needs the larger slice of each generation
    seq: int = 2048


ROWS = (
    Row("mavis2", "MAVIS-7B stage 2 (align: projector + LoRA)", "configs/mavis/align.py:size=7b",
        ("--vlm", "clip-vit-l-14-336:mistral-7b")),
    Row("mavis3", "MAVIS-7B stage 3 (instruct)", "configs/mavis/instruct.py:size=7b",
        ("--vlm", "clip-vit-l-14-336:mistral-7b")),
    Row("mavis4", "MAVIS-7B stage 4 (DPO, frozen reference)", "configs/mavis/dpo.py:size=7b",
        ("--vlm", "clip-vit-l-14-336:mistral-7b")),
    Row("llava13b", "Math-LLaVA-13B (full fine-tune)", "configs/math_llava/finetune.py:size=13b",
        ("--vlm", "clip-vit-l-14-336:vicuna-13b"), big=True),
    Row("puma1", "Math-PUMA-7B stage 1 (text SFT, full)", "configs/math_puma/text_sft.py:size=7b",
        ("--preset", "qwen2-7b")),
    Row("puma2", "Math-PUMA-7B stage 2 (KL pair step)", "configs/math_puma/kl_align.py:size=7b",
        ("--vlm", "siglip-so400m-14-384:qwen2-7b", "--projector", "gated")),
    Row("puma3", "Math-PUMA-7B stage 3 (multimodal SFT, full)", "configs/math_puma/instruct.py:size=7b",
        ("--vlm", "siglip-so400m-14-384:qwen2-7b", "--projector", "gated")),
    Row("grpo7b", "GRPO-7B (LoRA; rollout + update)", "configs/rl/grpo.py:size=7b",
        ("--vlm", "clip-vit-l-14-336:vicuna-7b"), seq=0),
)
# (normal, big) slice per generation: 16 chips, 64 for a 13B full fine-tune on 16-GiB v5e chips.
TOPOLOGIES = {"v5e": ("v5litepod-16", "v5litepod-64"), "v5p": ("v5p-32", "v5p-32"),
              "v6e": ("v6e-16", "v6e-32")}
CHIPS = {"v5litepod-16": 16, "v5litepod-64": 64, "v5p-32": 16, "v6e-16": 16, "v6e-32": 32}
BEFORE = ("--attention", "xla", "--logits-chunk", "0", "--remat", "full", "--vision-remat", "none")


def cell_key(row: Row, topology: str, variant: str, per_chip: int) -> str:
    return f"{row.key}|{topology}|{variant}|{per_chip}"


def run_cell(row: Row, topology: str, variant: str, per_chip: int) -> dict:
    """One aot_compile run; its last stdout line is the JSON result (exit 3: does not fit)."""
    args = [sys.executable, os.path.join(HERE, "aot_compile.py"), "--config", row.config, *row.model,
            "--topology", topology, "--batch", str(per_chip * CHIPS[topology])]
    if row.seq:
        args += ["--seq", str(row.seq)]
    if variant == "before":
        args += list(BEFORE)
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode not in (0, 3) or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[:600]}
    return json.loads(lines[-1])


def peak(result: dict) -> float | None:
    """The per-chip figure the table shows: the larger of XLA's peak and arguments + temporaries
    (their sum is what must fit); the rollout's, plus its resident state, when larger."""
    if "error" in result or not result.get("fits", False) and "argument_gib" not in result:
        return None
    value = max(result.get("peak_gib", 0.0), result.get("argument_gib", 0.0) + result.get("temp_gib", 0.0))
    if "rollout_peak_gib" in result:
        rollout = result["rollout_resident_gib"] + max(
            result["rollout_peak_gib"], result["rollout_argument_gib"] + result["rollout_temp_gib"])
        value = max(value, rollout)
    return value


def describe(result: dict | None) -> str:
    if result is None:
        return "not compiled"
    if "error" in result:
        return "error (see results file)"
    value = peak(result)
    if not result.get("fits", False):
        needed = result.get("needed_gib") or result.get("rollout_needed_gib")
        return f"does not fit ({needed:.1f} GiB needed)" if needed else "does not fit"
    return f"{value:.1f}"


def render(results: dict, rows, generations) -> str:
    lines = ["| recipe | slice | per-chip batch × seq | peak GiB/chip before | after | HBM GiB | largest "
             "per-chip batch (after) | TFLOPs/chip/step (6·N·D) | XLA est. step s | implied MFU |",
             "|" + "---|" * 10]
    for row in rows:
        for gen in generations:
            topology = TOPOLOGIES[gen][row.big]
            before = results.get(cell_key(row, topology, "before", 1))
            after = results.get(cell_key(row, topology, "after", 1))
            prefix = f"{row.key}|{topology}|after|"
            tried = {int(k[len(prefix):]): r.get("fits", False) for k, r in results.items()
                     if k.startswith(prefix)}
            fitting = [b for b, fits in tried.items() if fits]
            # "≥ b" when the largest batch tried fits (the search stopped at --search, not at HBM).
            largest = ("none" if not fitting else f"≥ {max(fitting)}" if max(fitting) == max(tried)
                       else str(max(fitting)))
            ref = after if after and after.get("fits") else None
            any_result = ref or after or before or {}
            step_s, mfu = (ref or {}).get("optimal_seconds"), (ref or {}).get("implied_mfu")
            cols = [row.title, topology, f"1 × {any_result.get('seq', row.seq)}", describe(before),
                    describe(after), str(any_result.get("hbm_gib", "")),
                    largest,
                    f"{ref['tflops_6nd_per_device_step']:.1f}" if ref else "",
                    f"{step_s:.3g}" if step_s else "", f"{mfu:.0%}" if mfu is not None else ""]
            lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def load(path: str) -> dict:
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}:{number}: not a JSON line ({e}); delete the line to "
                                     "re-run that cell") from e
                results[record["cell"]] = record["result"]
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--table", action="store_true", help="(the flag aot_compile.py hands over)")
    parser.add_argument("--rows", default=",".join(r.key for r in ROWS),
                        help=f"comma-separated row keys: {', '.join(r.key for r in ROWS)}")
    parser.add_argument("--generations", default="v5e,v5p,v6e")
    parser.add_argument("--search", type=int, default=8,
                        help="largest per-chip batch to try (powers of two; 1 = no search)")
    parser.add_argument("--results", default="runs/fit/results.jsonl")
    parser.add_argument("--out", default="", help="also write the markdown table here")
    parser.add_argument("--render-only", action="store_true", help="render the results file, compile nothing")
    args = parser.parse_args(argv)
    keys = {r.key: r for r in ROWS}
    unknown = [k for k in args.rows.split(",") if k not in keys]
    gens = args.generations.split(",")
    if unknown or any(g not in TOPOLOGIES for g in gens):
        parser.error(f"rows from {sorted(keys)}, generations from {sorted(TOPOLOGIES)}")
    rows = [keys[k] for k in args.rows.split(",")]
    results = load(args.results)
    if not args.render_only:
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        for row in rows:
            for gen in gens:
                topology = TOPOLOGIES[gen][row.big]
                plan = [("before", 1)] + [("after", 2 ** i) for i in range(args.search.bit_length())
                                          if 2 ** i <= args.search]
                for variant, per_chip in plan:
                    key = cell_key(row, topology, variant, per_chip)
                    if key not in results:
                        print(f"compiling {key}", file=sys.stderr, flush=True)
                        results[key] = run_cell(row, topology, variant, per_chip)
                        with open(args.results, "a") as f:
                            f.write(json.dumps({"cell": key, "result": results[key]}) + "\n")
                    if variant == "after" and not results[key].get("fits"):
                        break   # a larger batch will not fit either
    table = render(results, rows, gens)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
