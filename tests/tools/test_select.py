"""Math-LLaVA data selection: the ratio rule (exact shares, take-all of a short level, even spread over
sources) and the CLI end to end — two tiny trained classifiers score an engine pool, the selection is
written as LLaVA JSON that the conversations source reads, and that dataset is itself a valid pool."""

import json
import os

import numpy as np
import pytest

from mathvlm import config as mc
from mathvlm import main as mathvlm_main
from mathvlm.tools import select
from mathvlm.data.sources import ConversationSource
from mathvlm.data.tokenization import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "configs", "math_llava", "complexity_classifier.py")


def test_apportion_is_exact_when_the_ratio_divides():
    assert select.apportion(40, (2, 3, 4, 1)) == [8, 12, 16, 4]
    assert sum(select.apportion(41, (2, 3, 4, 1))) == 41
    assert select.apportion(3, (1, 1, 1, 1)) == [1, 1, 1, 0]


def test_level_targets_take_all_of_a_short_level_and_share_the_rest():
    # Level 3 has 2 images where its share of 40 is 4: all are taken, and 38 are shared 2:3:4.
    targets = select.level_targets(40, (2, 3, 4, 1), available=(100, 100, 100, 2))
    assert targets[3] == 2 and sum(targets) == 40
    assert targets[:3] == select.apportion(38, (2, 3, 4))
    # Math-LLaVA: every level-3 image, whatever its share.
    assert select.level_targets(40, (2, 3, 4, 1), (100, 100, 100, 10), take_all_level=3) == [7, 10, 13, 10]
    # A pool smaller than asked: everything.
    assert select.level_targets(40, (2, 3, 4, 1), (3, 3, 3, 3)) == [3, 3, 3, 3]


def test_spread_is_even_over_sources():
    rng = np.random.default_rng(0)
    groups = {"a": list(range(0, 50)), "b": list(range(50, 53)), "c": list(range(53, 100))}
    chosen = select.spread(groups, 21, rng)
    per_source = [sum(i in groups[s] for i in chosen) for s in "abc"]
    assert per_source == [9, 3, 9] and len(set(chosen)) == 21


def test_select_realises_the_ratio_exactly():
    rng = np.random.default_rng(1)
    levels = rng.integers(0, 4, 400)
    sources = rng.choice(["geoqa", "tabmwp", "figureqa"], 400)
    chosen, report = select.select(levels, sources, 40, (2, 3, 4, 1), seed=0)
    assert len(chosen) == len(set(chosen.tolist())) == 40
    assert np.bincount(levels[chosen], minlength=4).tolist() == [8, 12, 16, 4] == report["selected"]
    assert report["ratio_exact"]
    keep = levels != 3
    chosen, report = select.select(levels, sources, 40, (2, 3, 4, 1), keep=keep, seed=0)
    assert report["selected"][3] == 0 and not report["ratio_exact"] and len(chosen) == 40
    assert keep[chosen].all()


def train_classifier(workdir, label):
    config = mc.load(f"{RECIPE}:size=tiny,label={label},steps=2")
    mc.override(config, "data.batch_size", "8")
    mathvlm_main.run(config, str(workdir))
    return str(workdir)


def test_cli_selects_from_an_engine_pool_and_writes_llava_json(tmp_path, capsys):
    complexity = train_classifier(tmp_path / "complexity", "complexity")
    clarity = train_classifier(tmp_path / "clarity", "clarity")
    out = tmp_path / "selected"
    # Two training steps rate nearly everything alike: --min-clarity is left at 0 here (its filter is
    # test_select_realises_the_ratio_exactly's keep=) so that the pool is not emptied by chance.
    code = select.main(["--classifier", complexity, "--classifier", clarity, "--pool", "engine:24",
                        "--num", "12", "--ratio", "1:1:1:1", "--out", str(out), "--heldout", "8"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads(printed.strip().splitlines()[-1])
    assert "realised ratio 0:1:2:3" in printed and "held-out accuracy" in printed
    assert 0.0 <= summary["heldout_complexity"]["accuracy"] <= 1.0
    with open(out / "train.json") as f:
        rows = json.load(f)
    scores = [json.loads(line) for line in open(out / "scores.jsonl")]
    assert len(scores) == 24 and all(s["complexity"] in range(4) and s["clarity"] in (0, 1) for s in scores)
    assert len(rows) == 12 == summary["num_selected"]
    assert sorted(r["id"] for r in rows) == sorted({r["id"] for r in rows})
    assert np.bincount([r["complexity"] for r in rows], minlength=4).tolist() == summary["selected"]
    assert all(os.path.exists(out / r["image"]) for r in rows)
    # The conversations source trains on it as is.
    data = mc.ConfigDict({"format": "llava_json", "path": str(out / "train.json"), "image_root": str(out),
                          "seq_len": 512, "image_size": 32, "num_image_tokens": 4, "template": "plain"})
    source = ConversationSource(data, seed=0, tokenizer=load_tokenizer("engine"))
    row = source[0]
    assert row["images"].shape == (32, 32, 3) and bool(row["image_mask"]) and row["loss_mask"].sum() > 0
    # ... and is a pool itself (sources from its rows, images copied with their folders).
    again = tmp_path / "again"
    code = select.main(["--classifier", complexity, "--pool", f"llava_json:{out / 'train.json'}",
                        "--num", "4", "--out", str(again)])
    assert code == 0
    with open(again / "train.json") as f:
        second = json.load(f)
    assert len(second) == min(4, len(rows))
    assert {r["source"] for r in second} <= {r["source"] for r in rows}
    assert all(os.path.exists(again / r["image"]) for r in second)


def test_cli_errors_name_what_to_do(tmp_path, capsys):
    assert select.main(["--classifier", str(tmp_path), "--pool", "engine:4", "--num", "2",
                        "--out", str(tmp_path / "o")]) == 1
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="four non-negative weights"):
        select.parse_ratio("2:3:4")
