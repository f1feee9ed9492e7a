"""``python -m mathvlm.evaluate run``: a demo run trained a few steps in a subprocess (real orbax checkpoint),
then evaluated from its workdir; the numbers must equal the trainer's own final evaluation, the loaded
parameters must be the checkpoint's, and --step / --evaluators / --hf must work."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from mathvlm import config as mc
from mathvlm import evaluate, sharding

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs/text_demo.py:steps=4,batch_size=8")


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("demo_run"))
    subprocess.run([sys.executable, "-m", "mathvlm.main", "--config", CONFIG, "--workdir", workdir],
                   cwd=REPO, check=True, timeout=600, capture_output=True)
    return workdir


def param_arrays(model) -> dict:
    state = nnx.state(model, nnx.Param)
    return {sharding.path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(state)}


def test_run_reproduces_the_trainers_final_evaluation(trained, tmp_path):
    out = subprocess.run([sys.executable, "-m", "mathvlm.evaluate", "run", "--config", CONFIG,
                          "--checkpoint", trained, "--workdir", str(tmp_path)],
                         cwd=REPO, check=True, timeout=600, capture_output=True, text=True)
    result = last_json(out.stdout)
    with open(os.path.join(trained, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    trainer_eval = [row for row in logged if "text_math/accuracy" in row][-1]
    assert trainer_eval["step"] == 4 and result["step"] == 4
    keys = {k for k in trainer_eval if k.startswith("text_math/")}
    assert keys >= {"text_math/accuracy", "text_math/accuracy_add"}
    assert {k: result[k] for k in keys} == {k: trainer_eval[k] for k in keys}
    assert "| text_math/accuracy |" in out.stdout
    assert json.loads((tmp_path / "eval_metrics.json").read_text()) == result


def test_loaded_parameters_are_the_trained_ones(trained):
    from mathvlm.train import build, optim
    from mathvlm.train.checkpoint import Checkpointer

    config = mc.load(CONFIG)
    model, origin = evaluate.load_model(config, checkpoint=trained)
    assert origin["step"] == 4 and origin["source"].endswith(os.path.join("checkpoints", "4", "state"))
    # The trainer's own resume path: restore (model, optimizer) into a fresh sharded pair.
    mesh = sharding.make_mesh(config.mesh)
    make = build.make_model_and_optimizer(config, optim.trainable_filter(config.train.trainable))
    fresh_model, fresh_opt = sharding.create_sharded(make, mesh, config.sharding.rules)
    initial = param_arrays(fresh_model)
    graphdef, target = nnx.split((fresh_model, fresh_opt))
    ckpt = Checkpointer(trained)
    restored, _ = ckpt.restore(4, target)
    ckpt.close()
    reference = param_arrays(nnx.merge(graphdef, restored)[0])
    loaded = param_arrays(model)
    assert loaded.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(loaded[name], reference[name], err_msg=name)
    assert any(not np.array_equal(loaded[n], initial[n]) for n in initial)  # training moved them


def test_run_with_step_and_evaluator_json(trained, tmp_path, capsys):
    spec = {"name": "engine_heldout", "num_examples": 2, "versions": ["text_only"], "image_size": 32,
            "multiple_choice": True}
    assert evaluate.main(["run", "--config", CONFIG, "--checkpoint", trained, "--step", "4",
                          "--workdir", str(tmp_path), "--evaluators", json.dumps(spec)]) == 0
    result = last_json(capsys.readouterr().out)
    assert {"engine/accuracy", "engine/version/text_only"} <= set(result) and result["step"] == 4
    assert "text_math/accuracy" not in result  # the JSON replaced the config's evaluators
    table = json.loads((tmp_path / "engine.json").read_text())
    assert table["overall"]["total"] == 2

    assert evaluate.main(["run", "--config", CONFIG, "--checkpoint", trained, "--step", "3",
                          "--workdir", str(tmp_path)]) == 1
    assert "saved steps there: [4]" in capsys.readouterr().err
    assert evaluate.main(["run", "--config", CONFIG, "--checkpoint", str(tmp_path), "--workdir",
                          str(tmp_path)]) == 1
    assert "no finished checkpoint" in capsys.readouterr().err
    assert evaluate.main(["run", "--config", CONFIG, "--checkpoint", trained, "--workdir", str(tmp_path),
                          "--evaluators", "[{'name': 1}"]) == 1
    assert "--evaluators is not JSON" in capsys.readouterr().err


def test_run_from_a_transformers_folder(trained, tmp_path, capsys):
    from mathvlm import hf

    config = mc.load(CONFIG)
    model, _ = evaluate.load_model(config, checkpoint=trained)
    hf.save_pretrained(model, str(tmp_path / "hf"))
    loaded, origin = evaluate.load_model(config, hf=str(tmp_path / "hf"))
    assert origin["source"].startswith("hf:")
    expected = param_arrays(model)
    for name, value in param_arrays(loaded).items():
        np.testing.assert_allclose(value, expected[name], err_msg=name)
    assert evaluate.main(["run", "--config", CONFIG, "--hf", str(tmp_path / "hf"), "--workdir",
                          str(tmp_path / "out"), "--evaluators", '{"name": "text_math", "num_examples": 8}']) == 0
    assert "text_math/accuracy" in last_json(capsys.readouterr().out)
