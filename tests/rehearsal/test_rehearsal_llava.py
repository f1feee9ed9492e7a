"""The real-size path, rehearsed end to end for Math-LLaVA: its own recipes (``size=13b`` after the
classifier), from a folder in llava-hf/llava-1.5-13b-hf's layout (miniature widths, same code branches)
to an exported, evaluated model, through the commands docs/scale.md documents (``mathvlm.main``,
``mathvlm.tools.select``, ``mathvlm.tools.convert``, ``mathvlm.evaluate``: their command lines, called in-process
to save interpreter start-ups), on 8 fake devices with the recipe's own default mesh (FSDP over all of
them).

Only the budget changes (``steps=2``, batch 8, 16 generated tokens): what a pod run would change for a
smoke test."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter

import numpy as np
import pytest

from tests.rehearsal import miniature
from tests.rehearsal.commands import (
    BUDGET,
    assert_exported_logits_equal,
    convert,
    train,
)

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.long

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "eval", "fixtures")
POOL_SIZE, SELECT_NUM, RATIO = 32, 20, (2, 3, 4, 1)
IMAGE_SIZE = 336            # the data's pictures: MathV360K-like, at CLIP ViT-L/14-336's resolution


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f]


def printed(capsys) -> str:
    """What the commands printed since the last call, shown again (``pytest -s``: the stage logs)."""
    text = capsys.readouterr().out
    with capsys.disabled():
        print(text, end="")
    return text


def llava_pool(folder) -> str:
    """A MathV360K-style pool: ``train.json`` of LLaVA rows (``<image>\\n`` question → chain of thought)
    whose images are engine diagrams saved as PNG under one folder per source (by engine family, as
    MathV360K keeps each source dataset in its own folder)."""
    from PIL import Image

    from mathvlm.data import engine_prompts
    from mathvlm.engine import core

    rows = []
    for index in range(POOL_SIZE):
        record = core.make_record(1, index, kind="instruct", version="vision_dominant", image_size=IMAGE_SIZE)
        relative = f"{record['family']}/images/{index}.png"
        os.makedirs(os.path.join(folder, os.path.dirname(relative)), exist_ok=True)
        Image.fromarray(record["image"]).save(os.path.join(folder, relative))
        rows.append({"id": f"pool-{index}", "image": relative, "conversations": [
            {"from": "human", "value": engine_prompts.IMAGE_MARK + engine_prompts.engine_prompt(record)},
            {"from": "gpt", "value": engine_prompts.engine_target(record)}]})
    path = os.path.join(folder, "train.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    return path


def benchmark_folder(name: str, out) -> str:
    """The eval fixture folder ``name`` (MathVista testmini / MATH-V in their released formats) with a
    real picture at every ``image`` path it names (the fixtures hold the JSON only): engine diagrams."""
    from PIL import Image

    from mathvlm import registry
    from mathvlm.engine import core

    out = str(out)
    shutil.copytree(os.path.join(FIXTURES, name), out)
    if name == "mathvista":
        problems = list(read_json(os.path.join(out, "testmini.json")).values())
    else:
        problems = read_jsonl(os.path.join(out, "test.jsonl"))
    assert 0 < len(problems) <= 8
    for index, problem in enumerate(problems):
        record = core.make_record(2, index, kind="instruct", version="vision_dominant", image_size=IMAGE_SIZE)
        path = os.path.join(out, problem["image"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(record["image"]).convert("RGB").save(path)   # .jpg as the benchmarks ship them
    options = {"file": "test.jsonl"} if name == "math_v" else {}
    _, images = registry.get("evaluator", name)(None, data_dir=out, **options).inputs(range(len(problems)))
    assert all(image is not None and image.ndim == 3 for image in images)   # pictures, not text-only
    return out


def test_math_llava_from_llava_15_to_an_exported_evaluated_model(tmp_path, capsys):
    """Math-LLaVA: complexity classifier → ``mathvlm.tools.select`` (2:3:4:1 over predicted complexity
    levels) on a LLaVA-JSON pool with images → one full fine-tune of LLaVA-1.5 (projector + LLM, CLIP
    frozen) on the selected JSON → export → transformers' LlavaForConditionalGeneration gives
    mathvlm's logits → ``evaluate run`` of the exported folder (``--hf``) on MathVista and MATH-V
    folders with Math-LLaVA's protocol (temperature 0.2), whose per-item response files ``evaluate
    score`` re-scores to the same accuracy, and which the run's own checkpoint (``--checkpoint``)
    answers word for word.

    Two departures from the real run, both for this CPU: the classifier is ``size=tiny`` (the real
    ``size=vit-l`` is a ViT-L at 224 px), and generation stops after 16 new tokens (the paper's
    protocol uses 512). Everything after the classifier runs at ``size=13b`` on the miniature folder;
    the data's 336-px pictures meet the miniature 56-px tower through the image size and token count
    the recipe reads from the folder (``recipes.folder_geometry``)."""
    from mathvlm import config as mc
    from mathvlm import evaluate
    from mathvlm.tools import select
    from mathvlm import main as entry

    times = {}
    clock = time.perf_counter()

    def lap(stage):
        nonlocal clock
        now = time.perf_counter()
        times[stage] = round(now - clock, 1)
        clock = now

    llava = miniature.make_llava_15(tmp_path / "llava-v1.5-13b-hf")
    pool = llava_pool(str(tmp_path / "MathV360K-pool"))
    lap("folders")
    runs = tmp_path / "runs"

    # 1. The complexity classifier: `python -m mathvlm.main --config ...complexity_classifier.py:size=tiny`
    #    (its own mesh: replicated, data-parallel over the 8 devices; not an FSDP recipe).
    config = mc.preflight(["main", "--config=configs/math_llava/complexity_classifier.py:size=tiny,steps=2",
                           *BUDGET])
    assert config.data.label == "complexity" and config.model.num_classes == 4
    classifier = entry.run(config, str(runs / "complexity"))
    assert np.isfinite(classifier["loss"]), classifier
    lap("classifier")

    # 2. `python -m mathvlm.tools.select --classifier RUN --pool llava_json:PATH --num N --ratio 2:3:4:1 --out DIR`
    printed(capsys)
    selected = tmp_path / "selected"
    assert select.main(["--classifier", str(runs / "complexity"), "--pool", f"llava_json:{pool}",
                        "--num", str(SELECT_NUM), "--ratio", ":".join(map(str, RATIO)),
                        "--out", str(selected)]) == 0
    text = printed(capsys)
    summary = last_json(text)
    assert "realised ratio 0:1:2:3" in text, text
    scores = read_jsonl(selected / "scores.jsonl")
    assert len(scores) == POOL_SIZE == summary["pool_size"]
    assert summary["available"] == np.bincount([s["complexity"] for s in scores], minlength=4).tolist()
    # 2:3:4:1 of the levels the classifier predicts, a short level given whole and the rest shared
    # again (two training steps rate nearly every image alike: then one level gives all 20).
    assert summary["target"] == select.level_targets(SELECT_NUM, RATIO, summary["available"])
    assert summary["selected"] == summary["target"] and summary["num_selected"] == SELECT_NUM
    rows = read_json(selected / "train.json")
    assert len(rows) == SELECT_NUM and len({r["id"] for r in rows}) == SELECT_NUM
    assert np.bincount([r["complexity"] for r in rows], minlength=4).tolist() == summary["selected"]
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in rows)
    assert all(os.path.exists(selected / r["image"]) for r in rows)
    assert {r["source"] for r in rows} <= {r["image"].split("/")[0] for r in read_json(pool)}
    assert read_json(selected / "selection.json")["by_source"] == dict(
        Counter(r["source"] for r in rows))
    lap("select")

    # 3. The fine-tune at size=13b on the selected JSON: full FT (projector + decoder), FSDP over 8.
    data = f"data={selected / 'train.json'},image_root={selected}"
    run = runs / "math_llava_13b"
    finetune = train(f"configs/math_llava/finetune.py:size=13b,hf={llava},{data},steps=2", run)
    printed(capsys)
    assert finetune["data/skipped_missing_image"] == 0 == finetune["data/skipped_too_long"], finetune
    saved = mc.load_run_config(str(run))
    assert saved.data.source == "conversations" and saved.data.format == "llava_json"
    assert saved.train.trainable == "projector,decoder"
    # The miniature folder's geometry, not the paper's 336 px / 576 tokens.
    assert (saved.data.image_size, saved.data.num_image_tokens) == (
        miniature.CLIP_VISION["image_size"], miniature.CLIP_IMAGE_TOKENS)
    lap("finetune")

    # 4. `python -m mathvlm.tools.convert export RUN --out DIR` (no LoRA: the full weights).
    exported = str(tmp_path / "math-llava-13b-hf")
    convert("export", str(run), "--out", exported)
    assert_exported_logits_equal(run, exported)
    lap("export")

    # 5. `python -m mathvlm.evaluate run` on MathVista testmini and MATH-V with Math-LLaVA's protocol.
    mathvista = benchmark_folder("mathvista", tmp_path / "bench" / "mathvista")
    math_v = benchmark_folder("math_v", tmp_path / "bench" / "math_v")
    evaluators = [{"name": "mathvista", "data_dir": mathvista},
                  {"name": "math_v", "data_dir": math_v, "file": "test.jsonl"}]
    printed(capsys)
    protocol = ["--evaluators", json.dumps(evaluators), "--temperature", "0.2", "--max-new-tokens", "16"]
    out = tmp_path / "eval"          # the exported folder, as a released model is evaluated
    assert evaluate.main(["run", "--config", f"configs/math_llava/finetune.py:size=13b,hf={exported},{data}",
                          "--hf", exported, "--workdir", str(out), *protocol]) == 0
    metrics = last_json(printed(capsys))
    assert metrics == read_json(out / "eval_metrics.json")
    lap("evaluate --hf")
    # ... and the run itself (its checkpoint restored onto the recipe's model): the same weights, the
    # same sampled responses.
    out_run = tmp_path / "eval_run"
    assert evaluate.main(["run", "--config", f"configs/math_llava/finetune.py:size=13b,hf={llava},{data}",
                          "--checkpoint", str(run), "--workdir", str(out_run), *protocol]) == 0
    from_run = last_json(printed(capsys))
    assert from_run["step"] == 2
    lap("evaluate --checkpoint")

    results = read_json(out / "mathvista_responses.json")     # calculate_score.py's results JSON
    assert sorted(results) == sorted(read_json(os.path.join(mathvista, "testmini.json")))
    assert all({"response", "extraction", "prediction", "true_false", "query"} <= set(r)
               for r in results.values())
    answers = read_jsonl(out / "math_v_responses.jsonl")   # MATH-V outputs
    assert len(answers) == 4 and all({"id", "response", "model_answer", "answer"} <= set(r) for r in answers)
    for name, predictions, folder in (("mathvista", "mathvista_responses.json", None),
                                      ("math_v", "math_v_responses.jsonl", math_v)):
        argv = ["score", "--benchmark", name, "--predictions", str(out / predictions)]
        assert evaluate.main(argv + (["--data", folder] if folder else [])) == 0
        scored = last_json(printed(capsys))
        assert scored["accuracy"] == pytest.approx(metrics[f"{name}/accuracy"]), (name, scored, metrics)
        assert scored["total"] == len(results if name == "mathvista" else answers)
    lap("score")
    for predictions in ("mathvista_responses.json", "math_v_responses.jsonl"):
        assert (out / predictions).read_text() == (out_run / predictions).read_text(), predictions
    print(f"\nMath-LLaVA rehearsal: classifier loss {classifier['loss']:.4f}, fine-tune loss "
          f"{finetune['loss']:.4f}, selected {summary['selected']} of available {summary['available']}, "
          f"mathvista {metrics['mathvista/accuracy']:.3f}, math_v {metrics['math_v/accuracy']:.3f}; "
          f"seconds {times}")
