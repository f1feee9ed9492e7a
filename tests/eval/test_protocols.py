"""Every protocol config of ``configs/eval/`` run as its docstring documents it (``python -m
mathvlm.evaluate run --config configs/eval/<protocol>.py --hf DIR --data DIR --workdir OUT``, in-process)
on miniature VLM folders written by ``convert build-vlm`` (CLIP + Vicuna: Vicuna v1; SigLIP + Qwen2 +
gated aligner: ChatML; the same with ``mathvlm_template: deepseek``) and benchmark folders in the
official layouts (tests/eval/fixtures/protocols). Checked per protocol: the official output file and
its fields, the prompts and template the model saw, the decoding that reached the generator, the
pictures, and that ``evaluate score`` re-scores the written file to the run's correct count.

Two hooks: the jitted generator records its settings and decodes at most ``CAP`` tokens (the
protocols' 512-2048 would take minutes on CPU), and one item per run gets a known right answer in
place of the miniature's random text, so the correct counts compared are not all zero."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from mathvlm import evaluate
from mathvlm.data import templates
from mathvlm.eval.evaluators import PUMA_MATHVISTA_HINT, MathVisionEvaluator
from mathvlm.eval import we_math
from mathvlm.train import predict
from tests.rehearsal import miniature

pytestmark = pytest.mark.long

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO, "tests", "eval", "fixtures", "protocols")
CAP = 4
PUMA = {"temperature": 0.1, "top_p": 0.8, "top_k": 0, "max_new_tokens": 768}
MATH_LLAVA = {"temperature": 0.2, "top_p": 1.0, "top_k": 0, "max_new_tokens": 512}
MAVIS = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 1024}
DEEPSEEK = {"temperature": 0.3, "top_p": 0.8, "top_k": 40, "max_new_tokens": 2048}


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f) if path.endswith(".json") else [json.loads(line) for line in f if line.strip()]


def clip_vision(out) -> str:
    """A CLIP ViT-L/14-336-style vision tower folder (the miniature's fields, no text tower to train a
    tokenizer for)."""
    import torch
    import transformers as tf

    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    tf.CLIPVisionModel(tf.CLIPVisionConfig(**miniature._clip_vision_config())).save_pretrained(out)
    miniature._clip_image_processor(miniature.CLIP_VISION["image_size"]).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from mathvlm.tools import convert

    root = tmp_path_factory.mktemp("folders")
    vicuna = miniature.make_vicuna(root / "vicuna")
    convert.main(["build-vlm", "--vision", clip_vision(root / "clip"), "--llm", vicuna, "--projector",
                  "mlp2x_gelu", "--out", str(root / "llava")])
    siglip = miniature.make_siglip_so400m(root / "siglip", vision_only=True)
    qwen2 = miniature.make_qwen2(root / "qwen2")
    convert.main(["build-vlm", "--vision", siglip, "--llm", qwen2, "--projector", "gated",
                  "--image-token", "<|image|>", "--out", str(root / "puma")])
    # The DeepSeek release's folders carry mathvlm_template "deepseek": the same weights, that template.
    shutil.copytree(root / "puma", root / "deepseek")
    config = read(str(root / "deepseek" / "config.json"))
    with open(root / "deepseek" / "config.json", "w") as f:
        json.dump({**config, "mathvlm_template": "deepseek"}, f)
    # No template in the folder (a transformers-written LLaVA folder): the protocols must say what to do.
    shutil.copytree(root / "llava", root / "untagged")
    config = read(str(root / "llava" / "config.json"))
    assert config["mathvlm_template"] == "vicuna_v1"
    with open(root / "untagged" / "config.json", "w") as f:
        json.dump({k: v for k, v in config.items() if k != "mathvlm_template"}, f)
    return {name: str(root / name) for name in ("llava", "puma", "deepseek", "untagged")}


@pytest.fixture
def spy(monkeypatch):
    """Records what reached the generator and the predictor; ``spy.canned`` maps a prompt substring to
    the response that replaces the model's."""
    record = {"generate": [], "calls": [], "canned": {}}
    generate = predict._vlm_generate

    def spied_generate(graphdef, state, tokens, images, image_mask, mask, rng, temperature, top_p, *,
                       max_new_tokens, top_k, stop_tokens, pad_id):
        record["generate"].append({"temperature": float(temperature), "top_p": float(top_p), "top_k": top_k,
                                   "max_new_tokens": max_new_tokens, "tokens": np.asarray(tokens),
                                   "mask": np.asarray(mask), "image_mask": np.asarray(image_mask)})
        return generate(graphdef, state, tokens, images, image_mask, mask, rng, temperature, top_p,
                        max_new_tokens=min(max_new_tokens, CAP), top_k=top_k, stop_tokens=stop_tokens,
                        pad_id=pad_id)

    call = predict.Predictor.__call__

    def spied_call(self, model, prompts, images=None, *, indices=None, **options):
        out = call(self, model, prompts, images, indices=indices, **options)
        record["calls"].append({"predictor": self, "prompts": list(prompts), "options": options,
                                "images": [image is not None for image in images]})
        return [next((r for key, r in record["canned"].items() if key in p), o) for p, o in zip(prompts, out)]

    monkeypatch.setattr(predict, "_vlm_generate", spied_generate)
    monkeypatch.setattr(predict.Predictor, "__call__", spied_call)
    return record


def run(protocol, folder, benchmark, workdir, capsys) -> dict:
    """The documented command; returns its metrics (the last printed line)."""
    capsys.readouterr()
    assert evaluate.main(["run", "--config", f"configs/eval/{protocol}", "--hf", folder,
                          "--data", os.path.join(DATA, benchmark), "--workdir", str(workdir)]) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    assert "| ALL |" in out or "| S1 |" in out or "| GeoQA |" in out or "| MATH-V |" in out
    return json.loads(out.strip().splitlines()[-1])


def rescore(benchmark, predictions, capsys, data=True) -> dict:
    capsys.readouterr()
    argv = ["score", "--benchmark", benchmark, "--predictions", str(predictions)]
    assert evaluate.main(argv + (["--data", os.path.join(DATA, benchmark)] if data else [])) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def assert_rescored(benchmark, workdir, name, responses, metrics, capsys, data=True):
    """``evaluate score`` on the written file gives the run's correct count (and it is not zero)."""
    table = read(str(workdir / f"{name}.json"))["overall"]
    scored = rescore(benchmark, workdir / responses, capsys, data)
    assert (scored["correct"], scored["total"]) == (table["correct"], table["total"]), (scored, table)
    assert scored["correct"] >= 1 and scored["accuracy"] == pytest.approx(metrics[f"{name}/accuracy"])


def assert_decoding(spy, expected):
    assert spy["generate"], "nothing reached the generator"
    for call in spy["generate"]:
        got = {k: call[k] for k in expected}
        assert got == pytest.approx(expected), got


def seen_text(spy, index=0) -> str:
    """The first row the generator received, decoded (left padding dropped)."""
    call = spy["generate"][index]
    tokenizer = spy["calls"][0]["predictor"].tokenizer
    ids = call["tokens"][0][call["mask"][0] == 1]
    text = tokenizer.hf.decode([int(i) for i in ids], skip_special_tokens=False)
    return re.sub(r"(<\|image\|>|<image>)+", r"\1", text)   # one mark per picture, not one per image token


def test_math_llava_mathvista(folders, spy, tmp_path, capsys):
    queries = read(os.path.join(DATA, "mathvista", "query.json"))
    spy["canned"] = {"What number is shown?": "The number shown is 9335."}
    metrics = run("math_llava_mathvista.py", folders["llava"], "mathvista", tmp_path, capsys)
    prompts = [p for call in spy["calls"] for p in call["prompts"]]
    assert prompts == [queries["65"], queries["157"]]                  # the official query ...
    assert "Choices:\n(A) Yes\n(B) No" in prompts[0]                    # ... with the choices
    assert all(all(call["images"]) for call in spy["calls"])
    predictor = spy["calls"][0]["predictor"]
    assert (predictor.template, predictor.image_preprocess) == ("vicuna_v1", "clip")
    assert (predictor.image_size, predictor.num_image_tokens) == (miniature.CLIP_VISION["image_size"],
                                                                  miniature.CLIP_IMAGE_TOKENS)
    text = seen_text(spy)
    assert text.startswith("<s> " + templates.VICUNA_SYSTEM) or templates.VICUNA_SYSTEM in text
    assert "USER: <image>" in text and text.rstrip().endswith("ASSISTANT:") and "Choices:" in text
    assert_decoding(spy, MATH_LLAVA)
    results = read(str(tmp_path / "mathvista_responses.json"))
    assert sorted(results) == ["157", "65"]
    for pid, record in results.items():
        assert {"pid", "query", "response", "extraction", "prediction", "true_false", "answer"} <= set(record)
        assert record["query"] == queries[pid]
    assert results["157"]["true_false"] is True
    assert_rescored("mathvista", tmp_path, "mathvista", "mathvista_responses.json", metrics, capsys)
    table = (tmp_path / "table.md").read_text()
    assert "| ALL | FQA | GPS | MWP | TQA | VQA | ALG |" in table


def test_puma_mathvista_hides_the_choices(folders, spy, tmp_path, capsys):
    problems = read(os.path.join(DATA, "mathvista", "testmini.json"))
    spy["canned"] = {"is f(3) > 0?": "f(3) is positive. The answer is Yes."}
    metrics = run("puma_mathvista.py", folders["puma"], "mathvista", tmp_path, capsys)
    prompts = [p for call in spy["calls"] for p in call["prompts"]]
    assert prompts == [PUMA_MATHVISTA_HINT.format(question=problems[p]["question"]) for p in ("65", "157")]
    assert prompts[0] == ("Hint: Please answer the question and provide the final answer at the end.\n"
                          "Question: is f(3) > 0?")
    assert not any("Choices" in p or "(A)" in p for p in prompts)
    assert spy["calls"][0]["predictor"].template == "chatml"
    text = seen_text(spy)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|image|>")
    assert text.endswith("<|im_start|>assistant\n") and "Hint: Please answer" in text
    assert_decoding(spy, PUMA)
    results = read(str(tmp_path / "mathvista_responses.json"))
    assert results["65"]["query"] == prompts[0] and results["65"]["true_false"] is True
    assert_rescored("mathvista", tmp_path, "mathvista", "mathvista_responses.json", metrics, capsys)


def test_puma_mathverse_visual_and_text_only(folders, spy, tmp_path, capsys):
    visual = read(os.path.join(DATA, "mathverse", "testmini.json"))
    text_only = read(os.path.join(DATA, "mathverse", "testmini_text_only.json"))
    spy["canned"] = {visual[0]["query_cot"]: f"Reasoning... Answer: {visual[0]['answer']}"}
    metrics = run("puma_mathverse.py", folders["puma"], "mathverse", tmp_path, capsys)
    assert [c["prompts"] for c in spy["calls"]] == [[r["query_cot"] for r in visual],
                                                    [r["query_cot"] for r in text_only]]
    assert [c["images"] for c in spy["calls"]] == [[True, True], [False, False]]   # Text Only: no image
    assert [bool(g["image_mask"][0]) for g in spy["generate"]] == [True, False]
    assert_decoding(spy, PUMA)
    assert {"mathverse/version/Vision Only", "mathverse/version/Text Dominant",
            "mathverse_text_only/version/Text Only"} <= set(metrics)
    for name in ("mathverse", "mathverse_text_only"):
        records = read(str(tmp_path / f"{name}_responses.json"))
        assert all({"sample_index", "problem_version", "query_cot", "model_answer", "answer"} <= set(r)
                   for r in records)
        assert_rescored("mathverse", tmp_path, name, f"{name}_responses.json", metrics, capsys, data=False)
    assert "| ALL | TD | TL | VI | VD | VO | TO |" in (tmp_path / "table.md").read_text()


def test_mavis_mathverse_and_geoqa(folders, spy, tmp_path, capsys):
    visual = read(os.path.join(DATA, "mathverse", "testmini.json"))
    spy["canned"] = {visual[1]["query_cot"]: f"So, the answer is: {visual[1]['answer']}"}
    metrics = run("mavis_mathverse.py", folders["llava"], "mathverse", tmp_path / "mathverse", capsys)
    assert [c["prompts"] for c in spy["calls"]] == [[r["query_cot"] for r in visual]]
    assert_decoding(spy, MAVIS)
    assert "mathverse_text_only/accuracy" not in metrics      # MAVIS reports the visual versions only
    assert_rescored("mathverse", tmp_path / "mathverse", "mathverse", "mathverse_responses.json", metrics,
                    capsys, data=False)

    spy["calls"].clear(), spy["generate"].clear()
    questions = read(os.path.join(DATA, "geoqa", "test_questions.jsonl"))
    answers = {r["question_id"]: r["text"] for r in read(os.path.join(DATA, "geoqa", "test_answers.jsonl"))}
    spy["canned"] = {"angle C = 60.0": f"Answer:{answers[204]}"}
    metrics = run("mavis_geoqa.py", folders["llava"], "geoqa", tmp_path / "geoqa", capsys)
    prompts = [p for c in spy["calls"] for p in c["prompts"]]
    assert prompts == [q["text"] for q in questions] and all("Choices:\nA:" in p for p in prompts)
    assert all(all(c["images"]) for c in spy["calls"])
    # (LLaMA's decode puts a space after an added token; the ids have none)
    assert re.search(r"USER: <image> ?\n\nFirst perform reasoning", seen_text(spy))
    assert_decoding(spy, MAVIS)
    written = read(str(tmp_path / "geoqa" / "geoqa_responses.jsonl"))
    assert [set(r) for r in written] == [{"question_id", "prompt", "text"}] * 3
    assert_rescored("geoqa", tmp_path / "geoqa", "geoqa", "geoqa_responses.jsonl", metrics, capsys)


def test_math_v_with_each_models_decoding(folders, spy, tmp_path, capsys):
    problems = read(os.path.join(DATA, "math_v", "test.jsonl"))
    spy["canned"] = {"Two squares": "The overlap gives 45 cm^2, so \\boxed{B}"}
    metrics = run("math_v.py:model=math_llava", folders["llava"], "math_v", tmp_path / "llava", capsys)
    prompts = [p for c in spy["calls"] for p in c["prompts"]]
    assert prompts == [MathVisionEvaluator.official_prompt(p) for p in problems]
    assert prompts[0].startswith('Please solve the problem step by step and put your answer in one "\\boxed{}".')
    assert "\n(A) $36 \\mathrm{~cm}^{2}$\n(B)" in prompts[0] and "(A)" not in prompts[1]  # free form
    assert_decoding(spy, MATH_LLAVA)
    written = read(str(tmp_path / "llava" / "math_v_responses.jsonl"))
    assert all({"id", "response", "model_answer", "answer", "options"} <= set(r) for r in written)
    assert_rescored("math_v", tmp_path / "llava", "math_v", "math_v_responses.jsonl", metrics, capsys)

    # Math-PUMA's DeepSeek variant: its decoding (top-k 40, seed 3407) and the folder's deepseek template.
    spy["calls"].clear(), spy["generate"].clear()
    metrics = run("math_v.py:model=puma_deepseek", folders["deepseek"], "math_v", tmp_path / "ds", capsys)
    assert_decoding(spy, DEEPSEEK)
    assert spy["calls"][0]["options"]["seed"] == 3407 and spy["calls"][0]["predictor"].template == "deepseek"
    text = seen_text(spy)
    assert text.startswith(templates.DEEPSEEK_SYSTEM + "\n\nUser: <|image|>\nPlease solve the problem")
    assert text.endswith("\n\nAssistant:")
    assert_rescored("math_v", tmp_path / "ds", "math_v", "math_v_responses.jsonl", metrics, capsys)


def test_we_math_official_prompt_and_four_dimensional_metrics(folders, spy, tmp_path, capsys):
    records = read(os.path.join(DATA, "we_math", "testmini.json"))
    first = next(r for r in records if r["key"] == "2steps_1")
    spy["canned"] = {first["question"]: f"<Thought process>: <<...>> <Answer>: <<{first['answer']}>>"}
    metrics = run("we_math.py:model=puma", folders["puma"], "we_math", tmp_path, capsys)
    prompts = [p for c in spy["calls"] for p in c["prompts"]]
    assert prompts == [we_math.official_prompt(r) for r in records]
    assert prompts[0].startswith("Now, we require you to solve a multiple-choice math question.")
    assert f"Knowledge concept: {first['knowledge concept description']}" in prompts[0]
    assert "<Answer>: <<your option>>" in prompts[0]
    assert_decoding(spy, PUMA)
    assert {"we_math/S1", "we_math/S2", "we_math/IK", "we_math/score_strict"} <= set(metrics)
    written = read(str(tmp_path / "we_math_responses.json"))
    assert all({"ID", "key", "question number", "answer", "response"} <= set(r) for r in written)
    assert_rescored("we_math", tmp_path, "we_math", "we_math_responses.json", metrics, capsys)
    assert "| S1 | S2 | S3 | IK | IG | CM | RM |" in (tmp_path / "table.md").read_text()


def test_missing_picture_template_or_data_are_clear_errors(folders, tmp_path, capsys):
    """Stopped before any model loads, each naming what is missing and what to do."""
    partial = tmp_path / "mathvista"
    shutil.copytree(os.path.join(DATA, "mathvista"), partial)
    os.remove(partial / "images" / "157.jpg")
    base = ["run", "--config", "configs/eval/math_llava_mathvista.py", "--workdir", str(tmp_path / "out")]
    capsys.readouterr()
    assert evaluate.main(base + ["--hf", folders["llava"], "--data", str(partial)]) == 1
    err = capsys.readouterr().err
    assert f"image {partial / 'images' / '157.jpg'} not found" in err and "images/<pid>.jpg" in err
    assert evaluate.main(base + ["--hf", folders["untagged"], "--data", str(partial)]) == 1
    err = capsys.readouterr().err
    assert "no 'mathvlm_template'" in err
    assert "configs/eval/<protocol>.py:template=vicuna_v1" in err
    assert evaluate.main(base + ["--hf", folders["llava"]]) == 1
    assert "pass --data DIR" in capsys.readouterr().err
    assert evaluate.main(base + ["--checkpoint", str(tmp_path), "--data", str(partial)]) == 1
    assert "pass --hf DIR" in capsys.readouterr().err
    os.remove(partial / "query.json")
    assert evaluate.main(base + ["--hf", folders["llava"], "--data", str(partial)]) == 1
    err = capsys.readouterr().err
    assert "query.json" in err and "expected layout" in err
    assert not (tmp_path / "out" / "eval_metrics.json").exists()


def test_deepseek_template_renders_the_sft_format():
    pieces = templates.render([{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                               {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
                              "deepseek")
    text = "".join("</eos>" if p.kind == "eos" else p.text for p in pieces)
    assert text == (templates.DEEPSEEK_SYSTEM + "\n\nUser: Q1\n\nAssistant: A1</eos>User: Q2\n\nAssistant: A2</eos>")
    assert [p.text for p in pieces if p.supervised] == [" A1", "", " A2", ""]
    prompt = templates.render_prompt([{"role": "user", "content": "<image>\nQ"}], "deepseek")
    assert "".join(p.text for p in prompt).endswith("User: \nQ\n\nAssistant:") and prompt[2].kind == "image"
