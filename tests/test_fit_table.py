"""launch/fit_table.py (``aot_compile.py --table``): the table rendered from its results file, and a
damaged results file named with its line."""

import json
import os
import sys

import pytest

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch"))
import fit_table  # noqa: E402


def _write(path, cells):
    with open(path, "w") as f:
        for cell, result in cells.items():
            f.write(json.dumps({"cell": cell, "result": result}) + "\n")


def _fits(args, temps, **extra):
    return {"fits": True, "peak_gib": args + temps - 1, "argument_gib": args, "temp_gib": temps,
            "seq": 2048, "hbm_gib": 16.0, "tflops_6nd_per_device_step": 198.2, **extra}


def test_table_shows_before_after_and_the_largest_batch(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    _write(results, {
        "puma2|v5litepod-16|before|1": _fits(2.0, 12.5),
        "puma2|v5litepod-16|after|1": _fits(2.0, 4.5, optimal_seconds=0.5, implied_mfu=0.31),
        "puma2|v5litepod-16|after|2": _fits(2.0, 9.0),
        "puma2|v5litepod-16|after|4": {"fits": False, "needed_gib": 20.25, "hbm_limit_gib": 15.75},
        "llava13b|v5p-32|after|1": _fits(9.0, 8.0),
        "llava13b|v5p-32|after|2": _fits(9.0, 12.0),
    })
    fit_table.main(["--render-only", "--rows", "puma2,llava13b", "--generations", "v5e,v5p",
                    "--results", str(results), "--out", str(tmp_path / "table.md")])
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
            for line in capsys.readouterr().out.splitlines()[2:]}
    puma = rows["Math-PUMA-7B stage 2 (KL pair step)", "v5litepod-16"]
    # before: arguments + temporaries; after likewise; batch 4 failed, so 2 is the largest.
    assert "| 14.5 | 6.5 | 16.0 | 2 | 198.2 | 0.5 | 31% |" in puma
    llava = rows["Math-LLaVA-13B (full fine-tune)", "v5p-32"]
    assert "| not compiled | 17.0 |" in llava and "| ≥ 2 |" in llava   # the search stopped at 2
    assert "not compiled" in rows["Math-PUMA-7B stage 2 (KL pair step)", "v5p-32"]
    assert (tmp_path / "table.md").read_text().count("\n") == 2 + 4


def test_a_damaged_results_line_is_named(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text('{"cell": "puma2|v5p-32|before|1", "result": {}}\n{"cell": \n')
    with pytest.raises(SystemExit, match=r"results.jsonl:2: not a JSON line"):
        fit_table.main(["--render-only", "--results", str(results)])


def test_unknown_rows_and_generations_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        fit_table.main(["--render-only", "--rows", "puma9", "--results", str(tmp_path / "r.jsonl")])
