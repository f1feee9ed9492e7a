"""``python -m mathvlm.evaluate run`` with a paper's decoding protocol: the Predictor's stop strings and
per-item sampling keys, the command line's decoding flags on a trained text demo, and the same run as
2 processes × 4 devices (launch/multiprocess.py) giving the metrics and per-item files of 1 process."""

import json
import os
import subprocess
import sys

import pytest
from flax import nnx

from mathvlm import config as mc
from mathvlm import evaluate
from mathvlm.data.tokenization import ByteTokenizer
from mathvlm.models.decoder import DECODER_PRESETS, DecoderConfig, DecoderLM
from mathvlm.train.predict import Predictor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 30 steps: greedy answers are "1 1 1 = 1 1 ..." (4 steps give only spaces), so a stop string has
# something to cut, and sampling at temperature 0.7 still varies.
CONFIG = os.path.join(REPO, "configs/text_demo.py:steps=30,batch_size=8")
TEXT_MATH = {"name": "text_math", "num_examples": 6, "batch_size": 4, "max_new_tokens": 12}


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_predictor_stop_strings_and_per_item_sampling_keys():
    model = DecoderLM(DecoderConfig(**{**DECODER_PRESETS["tiny"], "vocab_size": 260}), rngs=nnx.Rngs(3))
    predictor = Predictor(ByteTokenizer(), "plain", max_new_tokens=8, batch_size=4, pad_to=16)
    prompts = ["What is 2 + 3?", "Count the sides.", "x"]
    greedy = predictor(model, prompts)
    stop = next(c for c in greedy[0][1:] if c.strip())  # a character the greedy answer shows
    cut = predictor(model, prompts, stop=[stop, "never"])
    assert cut == [g.split(stop)[0] for g in greedy] and len(cut[0]) < len(greedy[0])
    assert predictor.stop_token_ids((stop, "ab")) == (ByteTokenizer.eos_id, ord(stop))  # one byte: ends early
    # Item k draws from fold_in(key(seed), k): the same item gives the same sample in another batch, at
    # another position; another seed gives other samples.
    sampled = predictor(model, prompts, indices=[10, 11, 12], temperature=1.0, seed=3)
    again = predictor(model, [prompts[2], "other", prompts[0]], indices=[12, 13, 10], temperature=1.0, seed=3,
                      batch_size=4)
    assert (again[0], again[2]) == (sampled[2], sampled[0])
    assert predictor(model, prompts, indices=[10, 11, 12], temperature=1.0, seed=4) != sampled
    assert sampled != greedy
    with pytest.raises(ValueError, match="top_p=0"):
        predictor(model, prompts, temperature=1.0, top_p=0.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo_run"))
    subprocess.run([sys.executable, "-m", "mathvlm.main", "--config", CONFIG, "--workdir", workdir,
                    "--config.eval.evaluators=()"], cwd=REPO, check=True, timeout=600, capture_output=True)
    return workdir


def responses(workdir) -> list[str]:
    with open(os.path.join(workdir, "text_math_responses.jsonl")) as f:
        return [json.loads(line)["response"] for line in f]


def run(trained, workdir, *flags, spec=TEXT_MATH):
    assert evaluate.main(["run", "--config", CONFIG, "--checkpoint", str(trained), "--workdir", str(workdir),
                          "--evaluators", json.dumps(spec), *flags]) == 0
    return responses(workdir)


def test_decoding_flags(trained, tmp_path, monkeypatch):
    # The whole command each time, with the model loaded once (loading it costs more than decoding;
    # the other tests load it through the command).
    loaded = evaluate.load_model(mc.load(CONFIG), checkpoint=trained)
    monkeypatch.setattr(evaluate, "load_model", lambda config, **kw: loaded)

    greedy = run(trained, tmp_path / "greedy")
    assert max(map(len, greedy)) > 3 and "=" in greedy[0]
    assert all(len(r) <= 3 for r in run(trained, tmp_path / "short", "--max-new-tokens", "3"))
    # the evaluator's own setting, overridden by the flag
    assert all(len(r) <= 5 for r in run(trained, tmp_path / "spec", spec={**TEXT_MATH, "max_new_tokens": 5}))
    stopped = run(trained, tmp_path / "stop", "--stop", "=", "--stop", "never")
    assert stopped == [r.split("=")[0] for r in greedy] and stopped != greedy
    sampled = run(trained, tmp_path / "t1", "--temperature", "0.7", "--seed", "1")
    assert run(trained, tmp_path / "t1b", "--temperature", "0.7", "--seed", "1") == sampled
    other = run(trained, tmp_path / "t2", "--temperature", "0.7", "--seed", "2")
    assert other != sampled and sampled != greedy
    # top-p / top-k / batch size are taken, and item keys make the batch size irrelevant to the samples
    nucleus = run(trained, tmp_path / "p", "--temperature", "0.7", "--seed", "1", "--top-p", "1.0",
                  "--top-k", "0", "--batch-size", "2")
    assert nucleus == sampled
    assert run(trained, tmp_path / "k1", "--temperature", "0.7", "--seed", "1", "--top-k", "1") == greedy


def test_two_processes_give_the_same_metrics_and_files_as_one(trained, tmp_path):
    """2 processes × 4 fake CPU devices, each with the whole model on its own devices and every second
    batch of items (sampled, so the per-item keys matter), merged by process 0 == 1 process × 8."""
    flags = ["--temperature", "0.7", "--seed", "1", "--max-new-tokens", "8"]
    spec = {**TEXT_MATH, "num_examples": 10}  # batches of 4, 4, 2: process 0 takes two, process 1 one
    args = ["-m", "mathvlm.evaluate", "run", "--config", CONFIG, "--checkpoint", str(trained),
            "--evaluators", json.dumps(spec), *flags]
    try:
        multi = subprocess.run([sys.executable, "launch/multiprocess.py", "--processes", "2", "--local-devices",
                                "4", "--", *args, "--workdir", str(tmp_path / "multi")], cwd=REPO,
                               capture_output=True, text=True, timeout=400,
                               env={**os.environ, "PYTHONPATH": REPO})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"2-process evaluate run still running after 400 s:\n{str(e.stdout)[-3000:]}")
    assert multi.returncode == 0, multi.stdout[-3000:]
    lines = multi.stdout.splitlines()
    rank1 = json.loads([line for line in lines if line.startswith("[1] {")][-1][4:])
    assert rank1["process"] == 1 and rank1["num_processes"] == 2
    merged = json.loads([line for line in lines if line.startswith("[0] {")][-1][4:])

    single = tmp_path / "single"
    assert evaluate.main(["run", "--config", CONFIG, "--checkpoint", str(trained), "--workdir", str(single),
                          "--evaluators", json.dumps(spec), *flags]) == 0
    expected = json.loads((single / "eval_metrics.json").read_text())
    assert merged == expected
    assert json.loads((tmp_path / "multi" / "eval_metrics.json").read_text()) == expected
    assert (tmp_path / "multi" / "text_math_responses.jsonl").read_text() == \
        (single / "text_math_responses.jsonl").read_text()
    assert len(responses(single)) == 10 and len(set(responses(single))) > 1
    assert not (tmp_path / "multi" / "eval_shards").exists()
