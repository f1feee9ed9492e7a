"""The sweep runner: a grid over a recipe arg or a config key, several seeds per point, shards of the
grid printed as launch commands; collection with statistics on fabricated runs whose answers are known;
and a 2-mix × 2-seed complexity-ratio sweep run end to end (tiny fine-tunes of 2 steps) whose results
land in results.csv / results_summary.csv / results.md / results.png and drive
notebooks/complexity_ablation.ipynb."""

import csv
import json
import os

import pytest
from ml_collections import ConfigDict

from mathvlm import config as mc
from mathvlm.tools import sweep
from tests.test_notebooks import run_notebook  # one notebook runner for the suite

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "ablations", "complexity_ratio.py")


def _commands(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]


def test_print_gives_one_command_per_table8_mix(tmp_path, capsys):
    assert sweep.main(["--config", CONFIG, "--print", "--workdir", str(tmp_path), "--steps", "7"]) == 0
    lines = _commands(capsys)
    assert len(lines) == 5
    for mix, line in zip(("2:3:4:1", "3:3:3:1", "4:3:2:1", "2:4:3:1", "1:1:1:1"), lines):
        assert line.startswith("python -m mathvlm.main --config=configs/math_llava/finetune.py:size=tiny")
        assert f",ratio={mix},steps=7" in line
        assert f"--workdir={tmp_path}/ratio_{mix.replace(':', '-')}" in line
        assert "--config.seed" not in line  # one seed: the recipe's own, folders as before
    _, group = sweep.load_sweep(CONFIG + ":mixes=1:0:0:0/0:0:0:1")
    runs = sweep.plan(group, workdir=str(tmp_path), overrides=["optim.lr=1e-4"])
    assert [r["name"] for r in runs] == ["ratio_1-0-0-0", "ratio_0-0-0-1"]
    assert runs[0]["command"][-1] == "--config.optim.lr=1e-4"


def test_plan_seeds_config_key_axis_and_shards(tmp_path, capsys):
    _, group = sweep.load_sweep(CONFIG + ":mixes=2:3:4:1/1:0:0:0")
    runs = sweep.plan(group, workdir=str(tmp_path), seeds=3, overrides=["seed=10"])
    assert [r["name"] for r in runs] == [f"ratio_{m}_s{k}" for m in ("2-3-4-1", "1-0-0-0") for k in range(3)]
    assert [r["command"][-1] for r in runs] == [f"--config.seed={s}" for s in (10, 11, 12) * 2]
    assert [r["seed"] for r in sweep.plan(group, seeds=2)] == [0, 1, 0, 1]  # the recipe's seed is 0

    # A config key as the axis: --config.<axis>=<value>, values checked against the base config.
    group = ConfigDict({"base": "configs/math_llava/finetune.py:size=tiny", "axis": "data.complexity_ratio",
                        "values": ((1.0, 0.0, 0.0, 0.0), "(0, 0, 0, 1)"), "workdir": str(tmp_path),
                        "overrides": ("optim.lr=1e-4",), "seeds": 2})
    runs = sweep.plan(group, steps=5)
    assert [r["name"] for r in runs] == ["data.complexity_ratio_1.0-0.0-0.0-0.0_s0",
                                         "data.complexity_ratio_1.0-0.0-0.0-0.0_s1",
                                         "data.complexity_ratio_0-0-0-1_s0", "data.complexity_ratio_0-0-0-1_s1"]
    assert runs[1]["spec"].endswith("finetune.py:size=tiny,steps=5")
    assert "--config.data.complexity_ratio=(1.0, 0.0, 0.0, 0.0)" in runs[1]["command"]
    # The trainer's own command-line check reads each command back as intended.
    for run, ratio, seed in zip(runs, ((1.0, 0.0, 0.0, 0.0),) * 2 + ((0, 0, 0, 1),) * 2, (0, 1, 0, 1)):
        config = mc.preflight(["main", *run["command"][3:]])
        assert (config.data.complexity_ratio, config.seed, config.train.steps) == (ratio, seed, 5)
        assert config.optim.lr == 1e-4
    with group.unlocked():
        group.axis, group.values = "optim.lrr", (1e-3,)
    with pytest.raises(mc.ConfigError, match=r"sweep axis 'optim.lrr'.*'lrr' is not a key of 'optim'"):
        sweep.plan(group)
    group.axis, group.values = "optim.lr", (1e-3, "fast")
    with pytest.raises(mc.ConfigError, match=r"sweep axis 'optim.lr'.*'fast'"):
        sweep.plan(group)

    # --shard i/n (1-based): the runs at positions ≡ i-1 (mod n); the shards split the grid exactly.
    args = ["--config", CONFIG + ":mixes=2:3:4:1/1:0:0:0/1:1:1:1", "--workdir", str(tmp_path), "--seeds", "2"]
    assert sweep.main(args + ["--print"]) == 0
    every = _commands(capsys)
    assert len(every) == 6 and every[3].endswith("ratio_1-0-0-0_s1 --config.seed=1")
    shards = []
    for i in (1, 2, 3, 4):
        assert sweep.main(args + ["--print", "--shard", f"{i}/4"]) == 0
        shards.append(_commands(capsys))
    assert shards == [[every[0], every[4]], [every[1], every[5]], [every[2]], [every[3]]]
    for bad in ("0/4", "5/4", "2", "a/b", "1/0"):
        assert sweep.main(args + ["--print", "--shard", bad]) == 2
        assert "--shard" in capsys.readouterr().err
    assert sweep.main(args + ["--collect", "--shard", "1/2"]) == 2
    assert sweep.main(args + ["--print", "--baseline", "9:9:9:9"]) == 2
    assert "baseline '9:9:9:9' is not one of the sweep values" in capsys.readouterr().err


def test_a_config_without_a_sweep_group_is_refused(capsys):
    assert sweep.main(["--config", os.path.join(ROOT, "configs", "text_demo.py"), "--print"]) == 2
    assert "no 'sweep' group" in capsys.readouterr().err


# Six held-out items (two versions, two complexity levels) and, per mix, each seed's answers.
ITEMS = [(f"engine/1000000/{i}", ("text_dominant", "vision_only")[i % 2], i // 3) for i in range(6)]
ANSWERS = {"2:3:4:1": [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]],   # the baseline: always wrong
           "1:0:0:0": [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]],   # always right
           "1:1:1:1": [[1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]}   # per-item mean 1, ½, ½, 0, 0, 0


def _fake_run(run_dir, seed: int, answers=None, logged_accuracy=None):
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({"seed": seed, "train": {"steps": 2}}, f)
    accuracy = logged_accuracy if answers is None else sum(answers) / len(answers)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 1, "loss": 2.0}) + "\n")
        f.write(json.dumps({"step": 2, "loss": 1.5, "engine/accuracy": accuracy}) + "\n")
    if answers is not None:
        with open(os.path.join(run_dir, "engine_responses.jsonl"), "w") as f:
            for (item, version, level), correct in zip(ITEMS, answers):
                f.write(json.dumps({"id": item, "version": version, "family": "function", "complexity": level,
                                    "correct": bool(correct), "answered": True}) + "\n")


def test_collect_summarises_seeds_and_tests_each_mix_against_the_baseline(tmp_path, capsys):
    for mix, seeds in ANSWERS.items():
        for k, answers in enumerate(seeds):
            _fake_run(tmp_path / f"ratio_{mix.replace(':', '-')}_s{k}", k, answers)
    for k, logged in enumerate((0.5, 0.7)):  # an evaluator without a responses file: metrics only
        _fake_run(tmp_path / f"ratio_3-3-3-1_s{k}", k, logged_accuracy=logged)
    args = ["--config", CONFIG + ":mixes=2:3:4:1/1:0:0:0/1:1:1:1/3:3:3:1", "--workdir", str(tmp_path),
            "--seeds", "2", "--collect"]
    assert sweep.main(args) == 0
    capsys.readouterr()
    with open(tmp_path / "results.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert [(r["ratio"], r["seed"], r["status"]) for r in runs] == [
        (m, str(k), "done") for m in ("2:3:4:1", "1:0:0:0", "1:1:1:1", "3:3:3:1") for k in (0, 1)]
    assert float(runs[4]["engine/accuracy"]) == 2 / 6 and float(runs[6]["engine/accuracy"]) == 0.5
    with open(tmp_path / "results_summary.csv", newline="") as f:
        summary = {(r["ratio"], r["group"]): r for r in csv.DictReader(f)}

    def numbers(mix, group, *keys):
        return pytest.approx(tuple(float(summary[mix, group][k]) for k in keys), abs=1e-12)

    assert summary["2:3:4:1", "all"]["significant"] == "baseline"
    assert numbers("2:3:4:1", "all", "accuracy", "lo", "hi") == (0.0, 0.0, 0.0)
    # Always right against always wrong: d_i = 1 on all 6 items; exact p = 2/2^6.
    assert numbers("1:0:0:0", "all", "accuracy", "lo", "hi", "diff", "diff_lo", "diff_hi", "p") == \
        (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.03125)
    assert summary["1:0:0:0", "all"]["significant"] == "yes"
    # 4 right of 12; d = (1, ½, ½, 0, 0, 0): mean 1/3; of the 8 sign patterns of (1, ½, ½) only ±(1 + ½ + ½)
    # reach |Σ| = 2: p = 2/8.
    assert numbers("1:1:1:1", "all", "accuracy", "diff", "p") == (1 / 3, 1 / 3, 0.25)
    assert summary["1:1:1:1", "all"]["significant"] == "no"
    assert float(summary["1:1:1:1", "all"]["lo"]) < 1 / 3 < float(summary["1:1:1:1", "all"]["hi"])
    # Holm over the two mixes tested: 2 · 0.03125 = 0.0625, max(0.0625, 1 · 0.25) = 0.25.
    assert (0.0625,) == numbers("1:0:0:0", "all", "p_holm") and (0.25,) == numbers("1:1:1:1", "all", "p_holm")
    assert summary["1:0:0:0", "all"]["significant_holm"] == "no"
    # Groups from the responses' fields: text_dominant items 0, 2, 4 → d = (1, ½, 0): p = 2/4.
    assert numbers("1:1:1:1", "version/text_dominant", "items", "accuracy", "diff", "p") == (3, 0.5, 0.5, 0.5)
    assert numbers("1:1:1:1", "complexity/0", "items", "diff", "p") == (3, 2 / 3, 0.25)
    assert numbers("1:0:0:0", "complexity/1", "p") == (0.25,)
    # No responses file: the logged accuracy averaged over seeds, no interval, no test.
    assert numbers("3:3:3:1", "all", "accuracy", "seeds") == (0.6, 2)
    assert summary["3:3:3:1", "all"]["lo"] == summary["3:3:3:1", "all"]["p"] == ""
    assert summary["3:3:3:1", "all"]["source"] == "metrics"

    text = (tmp_path / "results.md").read_text()
    assert "- ratio=1:0:0:0 is significantly higher than the baseline: +100.0 [+100.0, +100.0] pp, p = 0.03125 " \
           "(< 0.05; Holm p = 0.0625)." in text
    assert "- ratio=1:1:1:1 is not significantly different from the baseline: +33.3 [" in text
    assert "p = 0.25 (≥ 0.05" in text
    assert "paired sign-flip permutation test" in text and "Significant when p < 0.05 and the 95% interval of the difference excludes 0" in text
    assert "6 items" in text and "per point: 2:3:4:1: 2, 1:0:0:0: 2, 1:1:1:1: 2, 3:3:3:1: 2" in text
    assert "ratio=3:3:3:1: no per-item `engine_responses.jsonl`" in text
    assert "intervals and tests are unavailable" in text
    assert "| 1:0:0:0 | 2 | 6 | 100.0 [100.0, 100.0] | +100.0 [+100.0, +100.0] | 0.03125 | 0.0625 | yes |" in text
    assert "| 2:3:4:1 (baseline) | 2 | 6 | 0.0 [0.0, 0.0] |  |  |  |  |" in text
    assert "| 3:3:3:1 | 2 |  | 60.0 |  |  |  |  |" in text
    # Per group: no group has p < 0.05 with 3 items (the smallest exact p is 2/2^3), so no star.
    assert "| ratio | version/text_dominant | version/vision_only | complexity/0 | complexity/1 |" in text
    assert "| 1:1:1:1 | 50.0 [" in text and "] *" not in text
    assert (tmp_path / "results.png").stat().st_size > 1000

    # Another baseline: the always-wrong mix is then significantly lower.
    assert sweep.main(args + ["--baseline", "1:0:0:0"]) == 0
    assert "- ratio=2:3:4:1 is significantly lower than the baseline: -100.0 [-100.0, -100.0] pp, p = 0.03125" \
        in capsys.readouterr().out


@pytest.mark.long
def test_two_mix_two_seed_sweep_runs_collects_and_plots(tmp_path, capsys, monkeypatch):
    # The runs are subprocesses: one CPU device each compiles and runs faster than the suite's 8 fake ones.
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    args = ["--config", CONFIG + ":mixes=2:3:4:1/1:0:0:0,eval_examples=1", "--workdir", str(tmp_path),
            "--steps", "2", "--seeds", "2", "--override", "data.batch_size=8",
            "--override", "data.length_buckets=(480,)", "--override", "eval.max_new_tokens=8",
            "--override", "train.log_every=1",
            # complexity_ratio scans every problem's level at start-up (~13 ms each): 100, not 4,000
            "--override", "data.num_examples=100"]
    # As two cluster jobs would: each runs its shard of the grid, then one collection reads all four runs.
    assert sweep.main(args + ["--run", "--shard", "1/2"]) == 0, capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratio_1-0-0-0_s0", "ratio_2-3-4-1_s0"]
    assert sweep.main(args + ["--run", "--shard", "2/2"]) == 0, capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ratio_1-0-0-0_s0", "ratio_1-0-0-0_s1", "ratio_2-3-4-1_s0", "ratio_2-3-4-1_s1"]  # no results yet
    capsys.readouterr()
    assert sweep.main(args + ["--collect"]) == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["ratio"], r["seed"]) for r in rows] == [("2:3:4:1", "0"), ("2:3:4:1", "1"), ("1:0:0:0", "0"),
                                                       ("1:0:0:0", "1")]
    for row in rows:
        assert row["status"] == "done" and row["step"] == "2"
        assert 0.0 <= float(row["engine/accuracy"]) <= 1.0
        assert {f"engine/version/{v}" for v in ("text_dominant", "vision_only", "text_only")} <= set(row)
    # Each run trained on its own mix: the level-0-only runs saw level-0 rows only.
    assert float(rows[2]["data/level_0"]) == 1.0 and float(rows[0]["data/level_0"]) < 1.0
    with open(tmp_path / "ratio_1-0-0-0_s1" / "config.json") as f:
        config = json.load(f)
    assert config["data"]["complexity_ratio"] == [1.0, 0.0, 0.0, 0.0] and config["seed"] == 1
    with open(tmp_path / "results_summary.csv", newline="") as f:
        summary = {(r["ratio"], r["group"]): r for r in csv.DictReader(f)}
    overall = summary["1:0:0:0", "all"]
    assert overall["seeds"] == "2" and overall["items"] == "6" and overall["source"] == "responses"
    assert float(overall["lo"]) <= float(overall["accuracy"]) <= float(overall["hi"])
    assert 0.0 < float(overall["p"]) <= 1.0 and overall["significant"] in ("yes", "no")
    assert ("2:3:4:1", "version/vision_only") in summary
    table = (tmp_path / "results.md").read_text()
    assert "| 2:3:4:1 | 0 | done | 2 |" in table and "by MathVerse version" in table
    assert "- ratio=1:0:0:0 is " in table and "6 items" in table and "| Holm p |" in table
    assert "| ratio |" in printed and (tmp_path / "results.png").exists()
    # Finished runs are collected, not rerun.
    assert sweep.main(args + ["--run"]) == 0
    assert capsys.readouterr().out.count("finished earlier, not rerun") == 4
    text = run_notebook("complexity_ablation.ipynb", {"MATHVLM_SWEEP": str(tmp_path)})
    assert "4 finished runs" in text and "plotted 2 mixes x" in text and "groups with intervals" in text
