"""Math-LLaVA's question augmentation: new, more complex, rephrased and underspecified
questions, written as a LLaVA-JSON dataset the ``conversations`` source reads.

    python -m mathvlm.tools.augment (--input DATASET.json [--image-root DIR] | --engine N [--seed S])
        --kinds rephrase,underspecify[,new,complex] --out DIR [--client-config FILE.json]
        [--method auto|rules|client] [--version text_dominant] [--answer cot|short] [--num-new 5]
        [--images reference|copy] [--no-originals]

Two ways to make a question:

* **rules** (no network, deterministic per ``(seed, index)``), for the kinds *rephrase* and *underspecify*.
  Rephrasing rewrites the question sentence with one of several paraphrase templates per question type
  (:data:`PARAPHRASES`; picked from the seed, answer unchanged) and, for engine problems, also the lead of
  the given conditions. Underspecifying needs to know what the image shows, which only the data engine does
  (:func:`mathvlm.engine.wording.version_layers`): the question keeps the engine answer, its text drops
  the description and every given condition, and its image is the ``vision_dominant`` diagram with all of
  them drawn — the text alone no longer determines the answer.
* **client**: the prompts of :mod:`mathvlm.data.llm_client` sent to an OpenAI-compatible chat endpoint with
  the image (GPT-4V in Math-LLaVA). Needed for *new* and *complex*; off unless ``--client-config`` is given.
  ``--method auto`` uses the rules for engine problems and the client (when configured, else the rules) for
  a LLaVA-JSON input.

Output: ``DIR/train.json`` (originals unless ``--no-originals``, then new rows with ``augment`` = kind and
``source_id``), ``DIR/images/`` (engine diagrams; ``--images copy`` copies an input's images there, else
their absolute paths are written) and ``DIR/augment_summary.json``. Unusable replies are skipped and counted
by reason (printed per kind), never turned into a guessed record.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import re
import shutil
import sys

import numpy as np

from mathvlm.data import llm_client
from mathvlm.data.readers import SkipCounter, read_rows

KINDS = ("new", "complex", "rephrase", "underspecify")
RULE_KINDS = ("rephrase", "underspecify")
ENGINE_VERSIONS = ("text_dominant", "text_lite", "vision_intensive", "vision_dominant")  # text and image
_STREAM = 7919  # rule draws: np.random.default_rng([seed, index, _STREAM, kind]) (engine streams are 0-4)

# ---------------------------------------------------------------------------------------- rule rephrasing

_P = [  # (question sentence pattern, paraphrase templates); the first pattern that matches is used
    (r"What is the value of the derivative (?P<f>\w+)'\((?P<x>[^)]*)\)\?",
     ["Find {f}'({x}).", "Compute the derivative of {f} at x = {x}.",
      "What is the slope of the tangent to the graph of {f} at x = {x}?", "Evaluate {f}'(x) at x = {x}."]),
    (r"What is the value of the integral of (?P<f>\w+)\(x\) from x = (?P<a>\S+) to x = (?P<b>[^?\n]+)\?",
     ["Compute the definite integral of {f}(x) from x = {a} to x = {b}.",
      "Evaluate the integral of {f}(x) dx with lower limit {a} and upper limit {b}.",
      "Find the integral of {f}(x) taken from x = {a} to x = {b}."]),
    (r"What is the value of (?P<f>\w+)\((?P<x>[^)]*)\)\?",
     ["Find {f}({x}).", "Evaluate {f} at x = {x}.", "Compute {f}({x}).", "What does {f}({x}) equal?"]),
    (r"What are the zeros of (?P<f>\w+)\(x\)\?",
     ["Find all zeros of {f}(x).", "For which values of x is {f}(x) = 0?",
      "Which x-values make {f}(x) equal to zero?"]),
    (r"What is the axis of symmetry of the graph of (?P<f>\w+)\?",
     ["Find the axis of symmetry of the graph of {f}.", "About which vertical line is the graph of {f} symmetric?",
      "Determine the line of symmetry of the graph of {f}."]),
    (r"On which interval is (?P<f>\w+) increasing\?",
     ["Over which interval does {f} increase?", "Find the interval on which {f} is increasing.",
      "On what interval is {f} an increasing function?"]),
    (r"What is the maximum value of (?P<f>\w+\(x\))\?",
     ["Find the maximum value of {f}.", "What is the largest value that {f} attains?",
      "Determine the maximum of {f}."]),
    (r"What is the minimum value of (?P<f>\w+\(x\))\?",
     ["Find the minimum value of {f}.", "What is the smallest value that {f} attains?",
      "Determine the minimum of {f}."]),
    (r"What is the smallest positive period of (?P<f>\w+)\?",
     ["Find the smallest positive period of {f}.", "What is the fundamental period of {f}?",
      "Determine the least positive period of {f}."]),
    (r"Which expression matches the graph of (?P<f>\w+)\?",
     ["Which formula describes the graph of {f}?", "Identify the expression of {f} from its graph.",
      "Which expression has the graph shown for {f}?"]),
    (r"What is the distance between (?P<a>\w+) and (?P<b>\w+)\?",
     ["How far apart are {a} and {b}?", "Find the distance from {a} to {b}.",
      "Compute the length of the segment joining {a} and {b}."]),
    (r"What is the slope of line (?P<l>\w+)\?",
     ["Find the slope of line {l}.", "What is the gradient of line {l}?", "Determine the slope of the line {l}."]),
    (r"What are the coordinates of the midpoint of (?P<s>\w+)\?",
     ["Find the coordinates of the midpoint of {s}.", "Which point is the midpoint of {s}? Give its coordinates.",
      "Determine the midpoint of {s} as a coordinate pair."]),
    (r"Where do line (?P<a>\w+) and line (?P<b>\w+) intersect\?",
     ["Where does line {a} meet line {b}?", "Find where line {a} and line {b} cross.",
      "Determine the intersection of line {a} and line {b}."]),
    (r"Which figure's centre lies highest \(largest y-coordinate\)\?",
     ["Which figure has the highest centre, that is, the largest y-coordinate?",
      "Whose centre has the greatest y-coordinate?", "Of the figures, which has its centre at the largest y?"]),
    (r"What is the length of (?P<s>[^?\n]+)\?",
     ["How long is {s}?", "Find the length of {s}.", "Calculate the length of {s}."]),
    (r"What is the area of (?P<s>[^?\n]+)\?",
     ["Find the area of {s}.", "Compute the area of {s}.", "How large is the area of {s}?"]),
    (r"What is the perimeter of (?P<s>[^?\n]+)\?",
     ["Find the perimeter of {s}.", "Compute the perimeter of {s}.", "How long is the boundary of {s} in total?"]),
    (r"What is (?P<p>[^?\n]+)\?", ["Find {p}.", "Determine {p}.", "Calculate {p}."]),
]
_START = r"(?:^|(?<=\n)|(?<=\. )|(?<=: )|(?<=\? ))"
PARAPHRASES = [(re.compile(_START + pattern), templates) for pattern, templates in _P]
_GIVEN_LEADS = ["Given ", "Suppose ", "It is known that ", "We know that "]


def rephrase_question(text: str, rng: np.random.Generator) -> str | None:
    """``text`` with its question sentence paraphrased by a template of the first matching pattern, or None
    when no pattern matches. Everything else in ``text`` (facts, choices, hints) is kept."""
    for pattern, templates in PARAPHRASES:
        match = pattern.search(text)
        if match:
            new = templates[rng.integers(len(templates))].format(**match.groupdict())
            return text[: match.start()] + new + text[match.end():]
    return None


def rule_rng(seed: int, index: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), _STREAM, KINDS.index(kind)])


# ---------------------------------------------------------------------------------------------- items
# An item is one original question: {"id", "question" (no image mark), "answer" (the target turn),
# "short_answer" (shown to the LLM), "image" (path, uint8 array or None), "source", "index", "engine"}.

def _keep_image(image: np.ndarray, image_dir: str | None, name: str):
    """The array itself, or (with ``image_dir``) the path of its PNG there, so large runs hold no pixels."""
    if image_dir is None:
        return image
    from PIL import Image

    path = os.path.join(image_dir, re.sub(r"[^\w.-]", "_", name) + ".png")
    Image.fromarray(image).save(path)
    return path


def engine_items(num: int, seed: int, version: str = "text_dominant", image_size: int = 336,
                 answer: str = "cot", families=None, image_dir: str | None = None) -> list[dict]:
    """Engine problems as items; images are arrays, or PNG files in ``image_dir`` when given."""
    from mathvlm.engine import core, render, wording
    from mathvlm.engine.common import FAMILIES

    if version not in ENGINE_VERSIONS + ("mixed",):
        raise ValueError(f"--version {version!r}: one of {ENGINE_VERSIONS} or mixed (versions with text and image)")
    items = []
    for index in range(num):
        problem = core.make_problem(seed, index, tuple(families or FAMILIES))
        style = render.random_style(core.rng_for(seed, index, "style"), core.image_size_for(seed, index, image_size))
        v = version if version != "mixed" else ENGINE_VERSIONS[core.rng_for(seed, index, "version").integers(4)]
        short = wording.answer_string(problem["answer"])
        items.append({"id": problem["id"], "question": wording.version_text(problem, v), "short_answer": short,
                      "answer": wording.cot_text(problem) if answer == "cot" else f"The answer is {short}.",
                      "image": _keep_image(core.render(problem, v, style)[0], image_dir, problem["id"]),
                      "source": problem["family"], "index": index,
                      "engine": {"problem": problem, "style": style, "version": v, "image_dir": image_dir}})
    return items


def llava_items(path: str, image_root: str | None, skips: SkipCounter) -> list[dict]:
    """The first user/assistant exchange of every row of a LLaVA-JSON file (MathV360K)."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    items = []
    for index, (where, row) in enumerate(read_rows(path, skips)):
        turns = row.get("conversations") if isinstance(row, dict) else None
        try:
            human = next(t["value"] for t in turns if t["from"] in ("human", "user"))
            gpt = next(t["value"] for t in turns if t["from"] in ("gpt", "assistant"))
        except (TypeError, KeyError, StopIteration):
            skips.skip("malformed_row", where, "no human and gpt turn in 'conversations'")
            continue
        name = row.get("image")
        image = None if not name else name if os.path.isabs(name) else os.path.join(root, name)
        parts = str(name or "").replace("\\", "/").split("/")
        items.append({"id": str(row.get("id", where)), "question": human.replace("<image>", "").strip(),
                      "answer": gpt, "short_answer": gpt, "image": image, "relative": name, "index": index,
                      "source": str(row.get("source") or (parts[0] if len(parts) > 1 else "default")),
                      "engine": None})
    return items


# ------------------------------------------------------------------------------------------ augmenting

def rule_augment(item: dict, kind: str, seed: int) -> tuple[dict | None, str]:
    """(new question {"question", "answer", ["image"], ["dropped"]}, "") or (None, skip reason)."""
    rng = rule_rng(seed, item["index"], kind)
    engine = item["engine"]
    if kind == "rephrase" and engine is None:
        question = rephrase_question(item["question"], rng)
        return ({"question": question, "answer": item["answer"]}, "") if question else (None, "no_template")
    from mathvlm.engine import core, wording

    problem, version = engine["problem"], engine["version"]
    if kind == "rephrase":
        question = rephrase_question(problem["question"], rng)
        if question is None:
            return None, "no_template"
        new = wording.version_text({**problem, "question": question}, version)
        lead = _GIVEN_LEADS[rng.integers(len(_GIVEN_LEADS))]
        start = new.find("Given ")
        if start >= 0 and (start == 0 or new[start - 2:start] == ". "):
            new = new[:start] + lead + new[start + len("Given "):]
        return {"question": new, "answer": item["answer"]}, ""
    # the vision_dominant image draws the figure, its marks (the description) and every given condition
    layers, _ = wording.version_layers(problem, "vision_dominant")
    drawn = [g for i, (g, _) in enumerate(problem["givens"]) if f"given:{i}" in layers]
    if not drawn or item["question"].strip() == problem["question"]:
        return None, "nothing_to_drop"
    dropped = list(problem["description"]) + drawn
    return {"question": problem["question"], "answer": item["answer"], "dropped": dropped,
            "image": _keep_image(core.render(problem, "vision_dominant", engine["style"])[0], engine["image_dir"],
                                 f"{item['id']}_underspecify")}, ""


def demos_for(item: dict, by_source: dict, rng: np.random.Generator, k: int = 5) -> list[str]:
    """Up to ``k`` other questions of the item's source as few-shot demos for *new* (a plain sample; Math-LLaVA
    takes one question from each of 5 TF-IDF k-means clusters per source)."""
    pool = [q for q in by_source.get(item["source"], []) if q != item["question"]]
    picks = rng.choice(len(pool), size=min(k, len(pool)), replace=False) if pool else []
    return [pool[int(i)] for i in picks]


def client_augment(client, item: dict, kind: str, demos=(), num: int = 5) -> list[dict]:
    """New questions from the chat endpoint; raises LLMError / MalformedReply (counted by the caller)."""
    prompt = llm_client.build_prompt(kind, item["question"], item["short_answer"], num=num, demos=demos,
                                     task=item["source"].replace("_", " "))
    images = [item["image"]] if item["image"] is not None else []
    reply = client.complete([llm_client.user_message(prompt, images)])
    out = llm_client.parse_reply(kind, reply, item["question"], item["short_answer"], num)
    if kind in ("rephrase", "underspecify"):
        out = [{"question": o["question"], "answer": item["answer"]} for o in out]  # the original target turn
    return out


def plan(kinds, method: str, has_client: bool, engine: bool) -> dict:
    """kind → "rules" | "client"; raises a ValueError saying how to configure what is missing."""
    how = {}
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"--kinds: unknown kind {kind!r}; kinds: {','.join(KINDS)}")
        use = "client" if kind not in RULE_KINDS or method == "client" or (
            method == "auto" and not engine and has_client) else "rules"
        if use == "client" and not has_client:
            raise ValueError(
                f"kind {kind!r} needs a chat-completions client (GPT-4V in Math-LLaVA), and none is configured: "
                'write a JSON file such as {"base_url": "https://api.openai.com/v1", "model": "gpt-4o", '
                '"api_key_env": "OPENAI_API_KEY"} (keys: mathvlm/data/llm_client.py), export the key, and pass '
                "--client-config FILE.json" + ("" if kind not in RULE_KINDS else "; or use --method rules"))
        if use == "rules" and kind == "underspecify" and not engine:
            raise ValueError("rule-based underspecify needs the engine, which knows what the image shows (--engine N); "
                             "for a LLaVA-JSON input give a client (--client-config FILE.json)")
        how[kind] = use
    return how


def augment(items: list[dict], how: dict, *, seed: int = 0, client=None, num_new: int = 5,
            max_request_failures: int = 20) -> tuple[list[tuple[dict, str, dict]], dict]:
    """([(item, kind, new question), ...] in item order, {kind: {"made", "skipped": {reason: n}}})."""
    counts = {kind: SkipCounter() for kind in how}
    made = collections.Counter()
    results: dict[tuple[int, str], list[dict]] = {}
    by_source = collections.defaultdict(list)
    for item in items:
        by_source[item["source"]].append(item["question"])
    jobs = []
    for n, item in enumerate(items):
        for kind, use in how.items():
            if use == "rules":
                new, reason = rule_augment(item, kind, seed)
                if new is None:
                    counts[kind].skip(reason, item["id"])
                results[n, kind] = [new] if new else []
            elif item["image"] is None:
                counts[kind].skip("no_image", item["id"], "the prompts ask about the image")
            else:
                demos = demos_for(item, by_source, rule_rng(seed, item["index"], kind)) if kind == "new" else ()
                jobs.append((n, kind, demos))
    if jobs and client is None:
        raise ValueError(f"{len(jobs)} requests to make but no client (kinds {sorted({k for _, k, _ in jobs})})")
    failures, last_error = 0, None
    chunk = 4 * max(1, client.config.workers) if client else 1
    with concurrent.futures.ThreadPoolExecutor(max(1, client.config.workers) if client else 1) as pool:
        for start in range(0, len(jobs), chunk):
            batch = jobs[start:start + chunk]
            futures = [pool.submit(client_augment, client, items[n], kind, demos, num_new) for n, kind, demos in batch]
            for (n, kind, _), future in zip(batch, futures):
                try:
                    results[n, kind] = future.result()
                except llm_client.MalformedReply as e:
                    counts[kind].skip(f"malformed_reply:{e.reason}", items[n]["id"], str(e))
                except llm_client.LLMError as e:
                    failures, last_error = failures + 1, e
                    counts[kind].skip("request_failed", items[n]["id"], str(e))
            if failures > max_request_failures:
                raise llm_client.LLMError(f"{failures} requests failed, more than --max-request-failures="
                                          f"{max_request_failures}; last: {last_error}")
    out = []
    for n, item in enumerate(items):
        for kind in how:
            for new in results.get((n, kind), []):
                out.append((item, kind, new))
                made[kind] += 1
    summary = {kind: {"made": made[kind], "skipped": dict(counts[kind].counts), "method": how[kind]} for kind in how}
    return out, summary


# ---------------------------------------------------------------------------------------------- output

def _image_entry(out_dir: str, image, name: str, item: dict, mode: str) -> str | None:
    """The row's ``image`` field: engine images as PNG under ``out_dir``; input images referenced or copied."""
    if image is None:
        return None
    if not isinstance(image, str):
        image = _keep_image(image, os.path.join(out_dir, "images"), name)
    if os.path.abspath(image).startswith(os.path.abspath(out_dir) + os.sep):
        return os.path.relpath(image, out_dir)  # an engine diagram written there
    if mode == "reference":
        return os.path.abspath(image)
    relative = os.path.join("images", (item.get("relative") or os.path.basename(image)).lstrip("/"))
    target = os.path.join(out_dir, relative)
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(image, target)
    return relative


def _row(row_id, question, answer, image, **extra) -> dict:
    human = ("<image>\n" if image else "") + question
    row = {"id": row_id, "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]}
    return {**row, **({"image": image} if image else {}), **extra}


def write(out_dir: str, items, augmented, *, originals: bool = True, images: str = "reference") -> str:
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    rows, number = [], collections.Counter()
    for item in items if originals else []:
        image = _image_entry(out_dir, item["image"], item["id"], item, images)
        rows.append(_row(item["id"], item["question"], item["answer"], image, source=item["source"]))
    for item, kind, new in augmented:
        number[item["id"], kind] += 1
        row_id = f"{item['id']}#{kind}{number[item['id'], kind]}"
        image = _image_entry(out_dir, new.get("image", item["image"]),
                             row_id if "image" in new else item["id"], item, images)
        extra = {"dropped_facts": new["dropped"]} if "dropped" in new else {}
        rows.append(_row(row_id, new["question"], new["answer"], image, source=item["source"], augment=kind,
                         source_id=item["id"], **extra))
    path = os.path.join(out_dir, "train.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1, ensure_ascii=False)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathvlm.tools.augment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="LLaVA-JSON dataset (JSON list or JSONL) to augment")
    source.add_argument("--engine", type=int, help="augment N engine problems (seed --seed)")
    parser.add_argument("--kinds", default="rephrase,underspecify", help=f"comma-separated, of {','.join(KINDS)}")
    parser.add_argument("--out", required=True, help="output folder (train.json, images/, augment_summary.json)")
    parser.add_argument("--client-config", help="JSON file of the chat-completions client (off without it)")
    parser.add_argument("--method", choices=("auto", "rules", "client"), default="auto",
                        help="how rephrase/underspecify are made (auto: rules for the engine, client for --input)")
    parser.add_argument("--seed", type=int, default=0, help="engine seed and seed of the rule choices")
    parser.add_argument("--image-root", help="--input: image folder (default: the JSON's folder)")
    parser.add_argument("--images", choices=("reference", "copy"), default="reference",
                        help="--input: write absolute image paths, or copy the images into DIR/images")
    parser.add_argument("--version", default="text_dominant", help=f"engine originals: {ENGINE_VERSIONS} or mixed")
    parser.add_argument("--image-size", type=int, default=336, help="engine diagram size (0 = varied)")
    parser.add_argument("--answer", choices=("cot", "short"), default="cot",
                        help="engine target turn: chain of thought, or 'The answer is X.'")
    parser.add_argument("--num-new", type=int, default=5, help="new: questions asked per image (Math-LLaVA: 5)")
    parser.add_argument("--no-originals", action="store_true", help="write only the new rows")
    parser.add_argument("--max-request-failures", type=int, default=20)
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    try:
        config = llm_client.load_config(args.client_config) if args.client_config else None
        how = plan(kinds, args.method, config is not None, args.engine is not None)
        client = llm_client.ChatClient(config) if config and "client" in how.values() else None
        skips = SkipCounter()
        os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
        items = (engine_items(args.engine, args.seed, args.version, args.image_size, args.answer,
                              image_dir=os.path.join(args.out, "images"))
                 if args.engine is not None else llava_items(args.input, args.image_root, skips))
        augmented, summary = augment(items, how, seed=args.seed, client=client, num_new=args.num_new,
                                     max_request_failures=args.max_request_failures)
    except (FileNotFoundError, ValueError, llm_client.LLMError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    path = write(args.out, items, augmented, originals=not args.no_originals, images=args.images)
    total = {"input": args.input or f"engine:{args.engine}", "originals": len(items),
             "input_skipped": dict(skips.counts), "kinds": summary, "rows": (0 if args.no_originals else len(items))
             + len(augmented), "dataset": path}
    if client is not None:
        total["client"] = {"model": client.config.model, "requests": client.requests, "cache_hits": client.hits}
    with open(os.path.join(args.out, "augment_summary.json"), "w") as f:
        json.dump(total, f, indent=2)
    skipped = f" ({dict(skips.counts)} rows skipped)" if skips.total else ""
    print(f"{len(items)} originals from {total['input']}{skipped}")
    print("| kind | method | made | skipped |\n|---|---|---:|---|")
    for kind, s in summary.items():
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(s["skipped"].items())) or "0"
        print(f"| {kind} | {s['method']} | {s['made']} | {reasons} |")
    if client is not None:
        print(f"client {client.config.model}: {client.requests} requests, {client.hits} cache hits")
    print(f"wrote {path} ({total['rows']} rows; train with data.source=conversations, format=llava_json, "
          f"path={path}, image_root={args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
