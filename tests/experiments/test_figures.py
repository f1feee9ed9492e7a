"""The experiment figures of docs/results.md are drawn from the runs' own metrics, and say what they drew."""

import json
import os

import pytest

from mathvlm.experiments import figures


def write_metrics(run_dir, records):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def branch(workdir, name, text_dominant, vision_dominant, earlier=0.0):
    write_metrics(workdir / name, [
        {"step": 1, "loss": 2.0},
        {"step": 10, "engine/version/text_dominant": earlier, "engine/version/vision_dominant": earlier},
        {"step": 10, "engine/version/text_dominant": text_dominant,
         "engine/version/vision_dominant": vision_dominant, "engine/accuracy": 0.5},
    ])


def test_puma_groups_branches_by_setting_and_seed_and_keeps_the_last_evaluation(tmp_path, capsys):
    branch(tmp_path, "ntp_weak", 0.9, 0.5)
    branch(tmp_path, "ntp_weak_s1", 0.8, 0.4)
    branch(tmp_path, "puma_kl_noise0.75", 0.9, 0.45)
    branch(tmp_path, "puma_lam0_noise0.75_s2", 0.85, 0.3)
    branch(tmp_path, "puma_kl_standard_T4", 0.95, 0.55)
    branch(tmp_path, "text_sft", 1.0, 0.2)  # the shared stage: not a branch
    os.makedirs(tmp_path / "clip_math")
    out = tmp_path / "puma.png"
    assert figures.main(["puma", str(tmp_path), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    printed = json.loads(capsys.readouterr().out)
    assert printed == {
        "": {"ntp_weak": {"text_dominant": [0.9, 0.8], "vision_dominant": [0.5, 0.4]}},
        "_noise0.75": {"puma_kl": {"text_dominant": [0.9], "vision_dominant": [0.45]},
                       "puma_lam0": {"text_dominant": [0.85], "vision_dominant": [0.3]}},
        "_standard_T4": {"puma_kl": {"text_dominant": [0.95], "vision_dominant": [0.55]}},
    }
    assert figures._describe("_standard_T4") == "clean, token-mean KL, T = 4"
    assert figures._describe("_noise0.75_s1"[:-3]) == "75% letters wrong"
    assert figures._ordered(["puma_kl", "puma_lam0.5", "ntp_weak", "puma_lam0"]) == [
        "ntp_weak", "puma_lam0", "puma_kl", "puma_lam0.5"]


def test_puma_refuses_a_branch_without_its_evaluation_and_a_workdir_without_branches(tmp_path):
    with pytest.raises(ValueError, match="no puma_gap branch stages"):
        figures.puma_branches(str(tmp_path))
    write_metrics(tmp_path / "puma_kl", [{"step": 5, "loss": 1.0}])
    with pytest.raises(ValueError, match=r"puma_kl/metrics.jsonl has no engine/version/text_dominant"):
        figures.puma_branches(str(tmp_path))


def test_grounding_curves_follow_the_logged_evaluations(tmp_path, capsys):
    write_metrics(tmp_path, [
        {"step": 50, "loss": 1.0},
        {"step": 100, "engine/version/vision_dominant": 0.6, "engine_blind/version/vision_dominant": 0.25},
        {"step": 200, "engine/version/vision_dominant": 0.9, "engine_blind/version/vision_dominant": 0.2},
    ])
    out = tmp_path / "grounding.png"
    figures.main(["grounding", str(tmp_path), "--out", str(out)])
    assert json.loads(capsys.readouterr().out) == {"vision-dominant": [[100, 0.6], [200, 0.9]],
                                                   "vision-dominant, blind": [[100, 0.25], [200, 0.2]]}
    assert out.stat().st_size > 1000


def test_a_run_that_was_never_evaluated_is_refused_by_name(tmp_path):
    write_metrics(tmp_path, [{"step": 1, "loss": 1.0}])
    with pytest.raises(ValueError, match="metrics.jsonl has none of .*retrieval/i2t_r@1.*was the run evaluated"):
        figures.eval_curves(str(tmp_path), figures.CLIP_MATH)
