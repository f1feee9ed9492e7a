"""The sweep runner: a grid over one recipe arg printed as launch commands, and a 2-point complexity-ratio
sweep run end to end (tiny fine-tunes of a few steps) whose results land in results.csv / results.md and
drive notebooks/complexity_ablation.ipynb."""

import csv
import json
import os

from mathvlm import sweep
from tests.test_notebooks import run_notebook  # one notebook runner for the suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "ablations", "complexity_ratio.py")


def test_print_gives_one_command_per_table8_mix(tmp_path, capsys):
    assert sweep.main(["--config", CONFIG, "--print", "--workdir", str(tmp_path), "--steps", "7"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(lines) == 5
    for mix, line in zip(("2:3:4:1", "3:3:3:1", "4:3:2:1", "2:4:3:1", "1:1:1:1"), lines):
        assert line.startswith("python -m mathvlm.main --config=configs/math_llava/finetune.py:size=tiny")
        assert f",ratio={mix},steps=7" in line
        assert f"--workdir={tmp_path}/ratio_{mix.replace(':', '-')}" in line
    _, group = sweep.load_sweep(CONFIG + ":mixes=1:0:0:0/0:0:0:1")
    runs = sweep.plan(group, workdir=str(tmp_path), overrides=["optim.lr=1e-4"])
    assert [r["name"] for r in runs] == ["ratio_1-0-0-0", "ratio_0-0-0-1"]
    assert runs[0]["command"][-1] == "--config.optim.lr=1e-4"


def test_a_config_without_a_sweep_group_is_refused(capsys):
    assert sweep.main(["--config", os.path.join(ROOT, "configs", "text_demo.py"), "--print"]) == 2
    assert "no 'sweep' group" in capsys.readouterr().err


def test_two_mix_sweep_runs_collects_and_plots(tmp_path, capsys):
    args = ["--config", CONFIG + ":mixes=2:3:4:1/1:0:0:0,eval_examples=1", "--workdir", str(tmp_path),
            "--steps", "2", "--override", "data.batch_size=8", "--override", "data.length_buckets=(480,)",
            "--override", "eval.max_new_tokens=8", "--override", "train.log_every=1",
            # complexity_ratio scans every problem's level at start-up (~13 ms each): 400, not 20K
            "--override", "data.num_examples=400"]
    assert sweep.main(args + ["--run"]) == 0, capsys.readouterr().out
    printed = capsys.readouterr().out
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["ratio"] for r in rows] == ["2:3:4:1", "1:0:0:0"]
    for row in rows:
        assert row["status"] == "done" and row["step"] == "2"
        assert 0.0 <= float(row["engine/accuracy"]) <= 1.0
        assert {f"engine/version/{v}" for v in ("text_dominant", "vision_only", "text_only")} <= set(row)
    # Each run trained on its own mix: the level-0-only run saw level-0 rows only.
    assert float(rows[1]["data/level_0"]) == 1.0 and float(rows[0]["data/level_0"]) < 1.0
    with open(tmp_path / "ratio_1-0-0-0" / "config.json") as f:
        assert json.load(f)["data"]["complexity_ratio"] == [1.0, 0.0, 0.0, 0.0]
    table = (tmp_path / "results.md").read_text()
    assert "| 2:3:4:1 | done | 2 |" in table and "by MathVerse version" in table
    assert "| ratio |" in printed
    # Finished runs are collected, not rerun.
    assert sweep.main(args + ["--run"]) == 0
    assert capsys.readouterr().out.count("finished earlier, not rerun") == 2
    text = run_notebook("complexity_ablation.ipynb", {"MATHVLM_SWEEP": str(tmp_path)})
    assert "2 finished runs" in text and "plotted 2 mixes" in text
