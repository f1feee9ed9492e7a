"""Per-item responses files in each benchmark's own format (re-scored by ``evaluate score`` to the
evaluator's numbers), per-evaluator decoding settings reaching the predict_fn, and ``evaluate run``'s
split of the items over processes (merged to the same metrics and files as one process); scripted
predict_fns, no model."""

import json
import os

import pytest

from mathvlm import config as mc
from mathvlm import evaluate, registry

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def echo(table):
    """predict_fn answering from a function of the prompt (deterministic per prompt)."""
    def predict_fn(state, prompts, images=None):
        return [table(p) for p in prompts]
    return predict_fn


MATHVISTA = {"Which is larger?": "The answer is (B).", "How many?": "Answer: 3", "Length?": "It is 1.2 cm",
             "Angle?": "Answer: (A)", "List?": "Answer: [1, 2]"}
MATH_V = {"Which?": "\\boxed{B}", "How much?": "\\boxed{0.5}", "Point?": "\\boxed{(1,2)}"}


def make(name, predict_fn, **options):
    return registry.get("evaluator", name)(predict_fn, **options)


BENCHMARKS = {
    # name: (evaluator options, predict_fn, score --data folder, responses file)
    "mathvista": (dict(data_dir=os.path.join(FIXTURES, "mathvista")),
                  echo(lambda p: MATHVISTA[p.split("Question: ")[1]]), None, "mathvista_responses.json"),
    "math_v": (dict(data_dir=os.path.join(FIXTURES, "math_v"), file="test.jsonl"),
               echo(lambda p: MATH_V[p.split("> ")[1].split("\n")[0]]), "math_v", "math_v_responses.jsonl"),
    "geoqa": (dict(data_dir=os.path.join(FIXTURES, "geoqa")),
              echo(lambda p: "Answer:A" if len(p) % 2 else "the answer is (B)"), "geoqa", "geoqa_responses.jsonl"),
    "we_math": (dict(data_dir=os.path.join(FIXTURES, "we_math")),
                echo(lambda p: "Answer: A" if len(p) % 3 else "Answer: B"), "we_math", "we_math_responses.json"),
    "mathverse": (dict(data_dir=os.path.join(FIXTURES, "mathverse")),
                  echo(lambda p: "So the answer is: B" if "cot" not in p else "Answer: 0.5"), None,
                  "mathverse_responses.json"),
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_responses_file_is_the_official_format_and_rescores_the_same(name, tmp_path, capsys):
    options, predict_fn, data, filename = BENCHMARKS[name]
    metrics = dict(make(name, predict_fn, workdir=str(tmp_path), batch_size=2, **options).run(None))
    path = tmp_path / filename
    assert path.exists()
    if name == "mathvista":  # {pid: problem + response, extraction, prediction}, as calculate_score.py
        results = json.loads(path.read_text())
        assert sorted(results) == ["1", "2", "3", "4", "5"]
        assert {"question", "answer", "response", "extraction", "prediction", "query"} <= set(results["1"])
        assert results["1"]["response"] == "The answer is (B)."
    elif name == "math_v":  # jsonl: the record with response and model_answer
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert all({"id", "response", "model_answer", "answer"} <= set(r) for r in rows)
        assert rows[0]["model_answer"] == "b"
    elif name == "mathverse":  # a list of records with model_answer, as MathVerse's scripts read
        rows = json.loads(path.read_text())
        assert all({"sample_index", "problem_version", "model_answer"} <= set(r) for r in rows)
    argv = ["score", "--benchmark", name, "--predictions", str(path)]
    if data:
        argv += ["--data", os.path.join(FIXTURES, data)]
    assert evaluate.main(argv) == 0
    scored = last_json(capsys.readouterr().out)
    assert scored["accuracy"] == pytest.approx(metrics[f"{name}/accuracy"])
    assert scored["total"] == len(make(name, predict_fn, **options).selected())


class Recording:
    """A predict_fn taking decoding settings (as mathvlm.train.predict.Predictor does)."""

    takes_generation_options = True

    def __init__(self):
        self.calls = []

    def __call__(self, state, prompts, images=None, **options):
        self.calls.append(options)
        return [f"r{i}" for i in options["indices"]]


def test_evaluator_decoding_settings_reach_the_predict_fn():
    predict_fn = Recording()
    evaluator = make("mathvista", predict_fn, data_dir=os.path.join(FIXTURES, "mathvista"), batch_size=2,
                     max_new_tokens=512, temperature=0.2, top_p=0.8, top_k=40, seed=3407, stop=["\n\n"])
    list(evaluator.run(None))
    assert predict_fn.calls[0] == {"indices": [0, 1], "batch_size": 2, "max_new_tokens": 512,
                                   "temperature": 0.2, "top_p": 0.8, "top_k": 40, "seed": 3407,
                                   "stop": ["\n\n"]}
    assert [c["indices"] for c in predict_fn.calls] == [[0, 1], [2, 3], [4]]
    # engine_heldout and text_math: ``seed`` picks the problems, ``sample_seed`` the samples
    engine = make("engine_heldout", predict_fn, num_examples=2, versions=("text_only",), image_size=32,
                  seed=5, sample_seed=9, temperature=0.7)
    list(engine.run(None))
    assert predict_fn.calls[-1]["seed"] == 9 and engine.seed == 5
    text = make("text_math", predict_fn, num_examples=3, sample_seed=4, max_new_tokens=7)
    list(text.run(None))
    assert predict_fn.calls[-1] == {"indices": [0, 1, 2], "batch_size": 16, "max_new_tokens": 7, "seed": 4}
    # a predict_fn that cannot take them: a clear error, not silently greedy
    plain = make("geoqa", echo(lambda p: "Answer:A"), data_dir=os.path.join(FIXTURES, "geoqa"), temperature=0.5)
    with pytest.raises(ValueError, match="generation settings .*temperature.* need a predict_fn"):
        list(plain.run(None))


def test_command_line_settings_override_every_evaluator():
    config = mc.defaults()
    config.lock()
    specs = [{"name": "mathvista", "max_new_tokens": 64, "seed": 1},
             {"name": "engine_heldout", "seed": 3, "temperature": 0.0},
             {"name": "text_math"}, {"name": "engine_retrieval", "num_examples": 4}]
    out = evaluate._apply_generation(config, specs, {
        "max_new_tokens": 512, "temperature": 0.2, "top_p": None, "top_k": None, "seed": 7,
        "stop": ["Q:"], "batch_size": 4})
    assert out[0] == {"name": "mathvista", "max_new_tokens": 512, "seed": 7, "temperature": 0.2,
                      "stop": ["Q:"], "batch_size": 4}
    assert out[1]["seed"] == 3 and out[1]["sample_seed"] == 7 and out[1]["temperature"] == 0.2
    assert out[2]["sample_seed"] == 7 and out[2]["max_new_tokens"] == 512
    assert out[3] == specs[3]  # nothing generated there: untouched
    assert (config.eval.max_new_tokens, config.eval.temperature, config.eval.stop) == (512, 0.2, ("Q:",))
    assert specs[0]["max_new_tokens"] == 64  # the caller's specs are not modified


SPLIT_SPECS = [
    ("mathvista", dict(data_dir=os.path.join(FIXTURES, "mathvista"), batch_size=2),
     echo(lambda p: MATHVISTA[p.split("Question: ")[1]]), ["mathvista.json", "mathvista_responses.json"]),
    ("engine_heldout", dict(num_examples=2, versions=("text_only",), image_size=32, batch_size=1),
     echo(lambda p: f"The answer is {len(p) % 7}."), ["engine.json", "engine_responses.jsonl"]),
    ("text_math", dict(num_examples=5, batch_size=2),
     echo(lambda p: f"Answer: {len(p)}"), ["text_math_responses.jsonl"]),
]


def evaluators_for(workdir, calls=None):
    built = []
    for name, options, predict_fn, _ in SPLIT_SPECS:
        def recorded(state, prompts, images=None, fn=predict_fn):
            if calls is not None:
                calls.append((state, len(prompts)))
            return fn(state, prompts, images)
        built.append(make(name, recorded, workdir=workdir, **options))
    return built


def test_split_over_processes_merges_to_the_one_process_result(tmp_path):
    single = str(tmp_path / "single")
    expected = evaluate.evaluate_split(evaluators_for(single), "model", workdir=single)
    shared = str(tmp_path / "shared")
    calls = []
    # processes 2 and 1 of 3 write their shares; process 0 (the only one with a workdir) merges.
    for process in (2, 1):
        assert evaluate.evaluate_split(evaluators_for(None, calls), f"model{process}", workdir=shared,
                                       process=process, count=3, token=11) == {}
    shard_files = sorted(os.listdir(os.path.join(shared, "eval_shards")))
    assert "00_mathvista.1-of-3.jsonl" in shard_files and "02_text_math.2-of-3.jsonl" in shard_files
    got = evaluate.evaluate_split(evaluators_for(shared, calls), "model0", workdir=shared, process=0,
                                  count=3, token=11, timeout=5)
    assert got == expected and expected["mathvista/accuracy"] == pytest.approx(0.8)
    for _, _, _, files in SPLIT_SPECS:
        for name in files:
            assert (tmp_path / "shared" / name).read_text() == (tmp_path / "single" / name).read_text(), name
    assert not os.path.exists(os.path.join(shared, "eval_shards"))  # merged: removed
    # each process generated only its batches: i::3 of [2, 2, 1] / [1, 1] / [2, 2, 1] rows (process 2
    # has no engine batch, and still writes its empty share)
    by_process = {p: [n for s, n in calls if s == f"model{p}"] for p in range(3)}
    assert by_process == {2: [1, 1], 1: [2, 1, 2], 0: [2, 1, 2]}


def test_process_zero_waits_with_a_timeout_and_ignores_stale_shards(tmp_path):
    workdir = str(tmp_path)
    # a failed earlier run (another token) left process 1's file: it is not this run's
    evaluate.write_shard(os.path.join(workdir, "eval_shards"), "00_mathvista", 1, 2, 99, {1: "old"})
    name, options, predict_fn, _ = SPLIT_SPECS[0]
    evaluator = make(name, predict_fn, workdir=workdir, **options)
    with pytest.raises(TimeoutError, match=r"no responses from process\(es\) \[1\] of 2 .*00_mathvista.1-of-2"):
        evaluate.evaluate_split([evaluator], None, workdir=workdir, process=0, count=2, token=5, timeout=0.3)
