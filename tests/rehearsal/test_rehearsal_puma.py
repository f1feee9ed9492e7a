"""Math-PUMA's real-size path, rehearsed end to end (see ``test_rehearsal.py`` for MAVIS): the
``size=7b`` recipes from folders in the released models' layouts (Qwen2-7B-Instruct,
siglip-so400m-patch14-384; miniature widths, same code branches) through stage 1 (text SFT) → export
→ build-vlm (gated aligner) → stage 2 (KL alignment on a Math-PUMA pair file with real PNGs under
``image_root``) → stage 3 (multimodal SFT on engine rows) → export → ``evaluate run`` on
MathVerse-format rows with Math-PUMA's decoding protocol; each command called in-process with its own
argument handling, on 8 fake devices with each recipe's own default mesh (FSDP over all of them).

And the multi-host path: stage 1 as 2 processes × 4 devices (``launch/multiprocess.py``, gloo) logs
the losses of 1 process × 8 devices, and its checkpoint restores here.

Only the budget changes (``steps=2|3``, batch 8; ``--max-new-tokens 16`` instead of Math-PUMA's 768
when evaluating): what a pod run would change for a smoke test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mathvlm import config as mc
from tests.rehearsal import miniature
from tests.rehearsal.commands import BUDGET, convert, image_prompt, train

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.long

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Math-PUMA's Qwen2 image token (mathvlm.data.tokenization.IMAGE_TOKEN_NAMES: LLaVA, Math-PUMA Qwen2, DeepSeek).
IMAGE_TOKEN = "<|image|>"
# Stage-1 rows ({"instruction", "output"}, as tests/train/test_hf_init.py): 24, so each of 3 steps of
# batch 8 reads other rows.
STAGE1_ROWS = [{"instruction": f"Compute {a} + {b}.", "output": f"{a} + {b} = {a + b}."}
               for a in range(1, 7) for b in range(2, 6)]
LOG_EVERY_STEP = "--config.train.log_every=1"


def losses(workdir) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


def write_stage1(path) -> str:
    path.write_text("\n".join(json.dumps(row) for row in STAGE1_ROWS) + "\n")
    return str(path)


def _triangle(path, label: str | None) -> None:
    """A small triangle diagram (PNG); ``label`` written inside (the text-rich version)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 80), "white")
    draw = ImageDraw.Draw(image)
    draw.polygon([(8, 70), (88, 70), (30, 10)], outline="black")
    if label:
        draw.text((14, 56), label, fill="black")
    image.save(path)


def write_stage2_pairs(root) -> str:
    """A Math-PUMA stage-2 pair file (``image_url, instruction, output, image_url_2, instruction_2,
    output_2``; strong = text-rich, weak = vision-rich) with image paths relative to ``root``."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(8):
        angle = 30 + 5 * i
        _triangle(root / "images" / f"{i}_text.png", f"{angle}°")
        _triangle(root / "images" / f"{i}_vision.png", None)
        answer = f"C = 180° - 90° - {angle}° = {60 - 5 * i}°."
        rows.append({"image_url": f"images/{i}_text.png",
                     "instruction": f"In the right triangle ABC, angle B = 90° and angle A = {angle}°. "
                                    "Find angle C.",
                     "output": answer,
                     "image_url_2": f"images/{i}_vision.png",
                     "instruction_2": "Find angle C in the triangle shown.",
                     "output_2": answer})
    path = root / "train.json"
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return str(path)


MATHVERSE_CHOICES = "Choices:\nA:80°\nB:60°\nC:40°\nD:100°"
MATHVERSE_ITEMS = [  # (problem_version, question_type, question, answer, image)
    ("Text Dominant", "multi-choice",
     f"In triangle ABC, angle A = 40° and angle B = 60°. Find angle C.\n{MATHVERSE_CHOICES}", "A", True),
    ("Text Only", "multi-choice",
     f"In triangle ABC, angle A = 40° and angle B = 60°. Find angle C.\n{MATHVERSE_CHOICES}", "A", False),
    ("Vision Intensive", "free-form", "As shown in the figure, find angle C.", "80", True),
    ("Vision Only", "free-form", "", "80", True),
]


def write_mathverse(root) -> str:
    """MathVerse testmini records (the fields of tests/eval/fixtures/mathverse) with images/<n>.png."""
    (root / "images").mkdir(parents=True)
    meta = {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"}
    records = []
    for n, (version, kind, question, answer, has_image) in enumerate(MATHVERSE_ITEMS, 1):
        image = f"{n}.png" if has_image else ""
        if image:
            _triangle(root / "images" / image, None if version == "Vision Only" else "40°")
        records.append({"sample_index": str(n), "problem_index": "1", "problem_version": version,
                        "question": question, "image": image, "answer": answer, "question_type": kind,
                        "metadata": meta,
                        "query_wo": f"Please directly answer the question.\nQuestion: {question}",
                        "query_cot": "Please first conduct reasoning, and then answer the question and "
                                     f"provide the final value at the end.\nQuestion: {question}"})
    (root / "testmini.json").write_text(json.dumps(records, indent=1, ensure_ascii=False))
    return str(root)


def restored_model(run):
    """The run's model as ``restore=`` rebuilds it (export and evaluate do the same), float32 compute."""
    from mathvlm import sharding
    from mathvlm.train.build import init_model

    config = mc.load_run_config(str(run))
    config.model.dtype = "float32"
    return init_model(config, sharding.make_mesh(config.mesh), restore=str(run))


def assert_exported_llm_logits_equal(run, exported):
    """transformers' Qwen2ForCausalLM on the exported folder gives the run's logits on a ChatML prompt
    rendered by the exported tokenizer's own chat template."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Compute 3 + 4."}],
                                        add_generation_prompt=True)
    ids = np.asarray(ids["input_ids"] if hasattr(ids, "keys") else ids, np.int32).reshape(1, -1)
    hf_model = transformers.Qwen2ForCausalLM.from_pretrained(exported).eval()
    assert type(hf_model).__name__ == "Qwen2ForCausalLM"
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(restored_model(run)(ids)), theirs, atol=1e-4, rtol=1e-4)


def assert_exported_vlm_logits_equal(run, exported, start):
    """The exported gated-aligner folder (no transformers class runs it) loads back in
    ``mathvlm.hf.from_pretrained`` with a GatedProjector and gives the run's logits on a prompt with an
    image; the assembled starting folder ``start`` gives other logits (the stages trained)."""
    from mathvlm import hf
    from mathvlm.models.projectors import GatedProjector

    ours = restored_model(run)
    loaded = hf.from_pretrained(exported, dtype="float32")
    assert isinstance(loaded.projector, GatedProjector) and isinstance(ours.projector, GatedProjector)
    assert loaded.config.image_token_id == ours.config.image_token_id
    tokens, pixels = image_prompt(ours.config)
    expected = np.asarray(ours(tokens, pixels))
    np.testing.assert_allclose(np.asarray(loaded(tokens, pixels)), expected, atol=1e-4, rtol=1e-4)
    untrained = np.asarray(hf.from_pretrained(start, dtype="float32")(tokens, pixels))
    assert np.abs(untrained - expected).max() > 1e-5


def test_puma_from_qwen2_and_siglip_to_an_evaluated_model(tmp_path, capsys):
    """Math-PUMA: text SFT of Qwen2 → export (transformers Qwen2ForCausalLM gives its logits) →
    build-vlm (SigLIP-so400m + the stage-1 LLM + gated aligner, ChatML, ``<|image|>``) → KL alignment
    on a stage-2 pair file (image_root) → multimodal SFT (engine rows) → export (mathvlm.hf loads it
    with the gated aligner: the run's logits) → evaluate run on MathVerse rows at Math-PUMA's
    temperature 0.1, top-p 0.8."""
    qwen2 = miniature.make_qwen2(tmp_path / "Qwen2-7B-Instruct")
    siglip = miniature.make_siglip_so400m(tmp_path / "siglip-so400m-patch14-384")
    runs, logged = tmp_path / "runs", {}

    # Stage 1: text-only math SFT of the LLM on stage-1 rows.
    stage1 = write_stage1(tmp_path / "stage1.jsonl")
    metrics = train(f"configs/math_puma/text_sft.py:size=7b,hf={qwen2},data={stage1},steps=2",
                    runs / "text_sft", LOG_EVERY_STEP)
    assert metrics["next_token/num_tokens"] > 0
    logged["text_sft"] = losses(runs / "text_sft")
    llm = str(tmp_path / "puma-qwen2-7b-stage1")
    convert("export", str(runs / "text_sft"), "--out", llm)
    assert json.loads((tmp_path / llm / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert_exported_llm_logits_equal(runs / "text_sft", llm)

    # The stage-2 starting VLM: SigLIP + the stage-1 LLM + a fresh gated aligner.
    vlm = str(tmp_path / "puma-qwen2-7b-vlm")
    convert("build-vlm", "--vision", siglip, "--llm", llm, "--projector", "gated",
            "--image-token", IMAGE_TOKEN, "--out", vlm)
    capsys.readouterr()
    folder = json.loads((tmp_path / vlm / "config.json").read_text())
    assert folder["projector_type"] == "gated" and folder["mathvlm_template"] == "chatml"
    from mathvlm.data.tokenization import HFTokenizer

    tokenizer = HFTokenizer(vlm)
    assert tokenizer.image_id == folder["image_token_index"]
    assert tokenizer.hf.convert_ids_to_tokens(tokenizer.image_id) == IMAGE_TOKEN
    template = (tmp_path / vlm / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template and IMAGE_TOKEN in template

    # Stage 2: KL alignment of vision-rich to text-rich members, from Math-PUMA's pair file.
    pairs = write_stage2_pairs(tmp_path / "stage2")
    metrics = train(f"configs/math_puma/kl_align.py:size=7b,hf={vlm},data={pairs},"
                    f"image_root={tmp_path / 'stage2'},steps=2", runs / "kl_align", LOG_EVERY_STEP)
    assert metrics["data/skipped_missing_image"] == 0 and metrics["data/skipped_corrupt_image"] == 0
    assert metrics["puma_kl/aligned_tokens"] > 0 and metrics["puma_kl/mismatched_pairs"] == 0
    assert np.isfinite(metrics["puma_kl/kl"]) and metrics["puma_kl/kl"] > 0
    logged["kl_align"] = losses(runs / "kl_align")

    # Stage 3: multimodal SFT (everything trains) from the KL run, on the engine's rows.
    metrics = train(f"configs/math_puma/instruct.py:size=7b,hf={vlm},init={runs / 'kl_align'},steps=2",
                    runs / "instruct", LOG_EVERY_STEP)
    assert metrics["next_token/num_tokens"] > 0 and metrics["data/skipped_too_long"] == 0
    logged["instruct"] = losses(runs / "instruct")

    exported = str(tmp_path / "puma-qwen2-7b-hf")
    convert("export", str(runs / "instruct"), "--out", exported)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["transformers_loadable"] is False     # gated: mathvlm only
    assert_exported_vlm_logits_equal(runs / "instruct", exported, vlm)

    # Evaluation with Math-PUMA's decoding (temperature 0.1, top-p 0.8; 16 new tokens, not 768).
    from mathvlm import evaluate

    data = write_mathverse(tmp_path / "mathverse")
    out = tmp_path / "eval"
    spec = {"name": "mathverse", "data_dir": data, "prompt_field": "query_cot", "batch_size": 4}
    assert evaluate.main(["run", "--config", f"configs/math_puma/instruct.py:size=7b,hf={exported}",
                          "--hf", exported, "--workdir", str(out), "--evaluators", json.dumps(spec),
                          "--temperature", "0.1", "--top-p", "0.8", "--max-new-tokens", "16"]) == 0
    capsys.readouterr()
    results = json.loads((out / "mathverse_responses.json").read_text())
    assert [r["sample_index"] for r in results] == ["1", "2", "3", "4"]
    assert [r["problem_version"] for r in results] == [item[0] for item in MATHVERSE_ITEMS]
    for record in results:
        assert isinstance(record["model_answer"], str) and record["model_answer"]
        assert isinstance(record["true_false"], bool) and "extraction" in record
    metrics = json.loads((out / "eval_metrics.json").read_text())
    assert metrics["source"] == f"hf:{os.path.abspath(exported)}"
    assert {f"mathverse/version/{item[0]}" for item in MATHVERSE_ITEMS} <= metrics.keys()
    assert metrics["mathverse/accuracy"] == np.mean([r["true_false"] for r in results])
    # The responses file re-scores to the same number (what the official scripts would read).
    assert evaluate.main(["score", "--benchmark", "mathverse", "--predictions",
                          str(out / "mathverse_responses.json")]) == 0
    rescored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rescored["total"] == len(MATHVERSE_ITEMS)
    assert rescored["accuracy"] == pytest.approx(metrics["mathverse/accuracy"])

    with capsys.disabled():
        print(f"\nlosses by stage: {json.dumps(logged)}; mathverse responses: "
              f"{[r['model_answer'] for r in results]}")
    for stage, values in logged.items():
        assert len(values) == 2 and np.isfinite(values).all(), (stage, values)


def _run(args, timeout):
    """``python args`` from the repository root; a hang fails with the processes' last output."""
    try:
        return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                              check=False, timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{' '.join(args)} still running after {timeout} s; last output:\n{out[-3000:]}")


def test_puma_stage1_as_two_hosts_matches_one(tmp_path, capsys):
    """Math-PUMA stage 1 (size=7b) as 2 processes × 4 devices (launch/multiprocess.py: FSDP over the
    8 devices of both processes, each reading half of every global batch) logs the per-step losses
    of 1 process × 8 devices, and the checkpoint the 2 processes wrote restores here (1 process) to
    the single run's state, optimizer moments included.

    Tolerance: the two runs add the per-device partial sums (loss, gradients) in a different order —
    across processes through gloo, within one process through XLA's in-process all-reduce — so
    float32 results differ in the last bits (measured: losses 8e-8 relative, parameters 2e-8 absolute
    after 3 steps); 1e-5 relative leaves room for that and fails on any real difference (another
    batch, another shard, a missing reduction: 1e-3 and more)."""
    qwen2 = miniature.make_qwen2(tmp_path / "Qwen2-7B-Instruct")
    stage1 = write_stage1(tmp_path / "stage1.jsonl")
    steps = 3
    spec = f"configs/math_puma/text_sft.py:size=7b,hf={qwen2},data={stage1},steps={steps}"
    single, multi = tmp_path / "single", tmp_path / "multi"
    train(spec, single, LOG_EVERY_STEP)
    proc = _run(["launch/multiprocess.py", "--processes", "2", "--local-devices", "4", "--",
                 "-m", "mathvlm.main", f"--config={spec}", *BUDGET, LOG_EVERY_STEP,
                 f"--workdir={multi}"], timeout=480)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1} over 8 devices" in proc.stdout
    saved = json.loads((multi / "config.json").read_text())
    assert saved["mesh"] == {"data": 1, "fsdp": -1, "tensor": 1}       # the recipe's own
    expected, got = losses(single), losses(multi)
    with capsys.disabled():
        print(f"\ntext_sft losses, 1 x 8: {expected}; 2 x 4: {got}")
    assert len(expected) == len(got) == steps
    assert len(set(expected)) == steps        # each step another batch: the order is checked too
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    # Both processes' shards are in the checkpoint, and it restores here onto 1 × 8.
    import jax

    from mathvlm import sharding
    from mathvlm.train.checkpoint import Checkpointer
    from mathvlm.train.loop import Trainer

    assert sorted(os.listdir(multi / "checkpoints" / str(steps) / "data_iter")) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
    config = mc.load_run_config(str(multi))
    states = {}
    for name, run in (("single", single), ("multi", multi)):
        trainer = Trainer(config, sharding.make_mesh(config.mesh))
        trainer.state, meta = Checkpointer(str(run)).restore(steps, trainer.state)
        assert meta["step"] == steps
        kernel = trainer.state[0]["layers"]["mlp"]["up_proj"]["kernel"]
        assert kernel.sharding.mesh.shape["fsdp"] == 8                  # placed FSDP over all 8
        states[name] = [jax.tree_util.tree_leaves_with_path(trainer.state[part]) for part in (0, 1)]
    (params, moments), (params_1, moments_1) = states["multi"], states["single"]
    assert len(params) == len(params_1) > 0 and len(moments) == len(moments_1) > 0
    for (path, a), (_, b) in zip(params, params_1):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    # Adam's moments hold the raw gradients, computed in bfloat16 (the recipe's model.dtype): where a
    # float32 partial sum lands on the other side of a bfloat16 rounding boundary, an element moves by
    # one bfloat16 step (2^-8 of itself; measured: 8e-4 of the leaf's largest element). Per leaf,
    # relative to its scale; counts and step exactly.
    for (path, a), (_, b) in zip(moments, moments_1):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-2 * np.abs(b).max(), jax.tree_util.keystr(path)
