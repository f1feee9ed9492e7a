"""The build CLI writes ArrayRecord TFDS datasets that read back without TensorFlow."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mathvlm.engine import builders, core

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _image(value):
    if isinstance(value, bytes):
        return np.asarray(Image.open(io.BytesIO(value)))
    return np.asarray(value)


def test_cli_build_pairs_reads_back(tmp_path):
    import tensorflow_datasets as tfds
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "mathvlm.engine", "build", "--kind", "pairs", "--num", "3", "--heldout", "2",
           "--seed", "4", "--out", str(out), "--image-size", "96"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    path = out / "math_engine_pairs" / "1.1.0"
    assert any(f.name.endswith(tuple(f"array_record-0000{i}-of-00001" for i in range(1))) for f in path.iterdir())
    builder = tfds.builder_from_directory(str(path))
    train, held = builder.as_data_source(split="train"), builder.as_data_source(split="heldout")
    assert len(train) == 3 and len(held) == 2
    rows = sorted((train[i] for i in range(3)), key=lambda r: r["id"])
    want = core.make_record(4, 0, kind="pairs", image_size=96)
    assert rows[0]["id"].decode() == want["id"]
    assert rows[0]["strong_question"].decode() == want["strong_question"]
    assert rows[0]["weak_question_mc"].decode() == want["weak_question_mc"]
    np.testing.assert_array_equal(_image(rows[0]["weak_image"]), want["weak_image"])
    assert rows[0]["answer_value"] == pytest.approx(want["answer_value"], nan_ok=True)
    assert {r["id"] for r in (held[i] for i in range(2))}.isdisjoint({r["id"] for r in rows})


def test_instruct_and_caption_builders_are_deterministic(tmp_path):
    import tensorflow_datasets as tfds
    contents = []
    for run in ("a", "b"):
        builders.build("instruct", 4, 7, str(tmp_path / run), num_heldout=1, image_size=64)
        ds = tfds.data_source("math_engine_instruct", data_dir=str(tmp_path / run))["train"]
        contents.append(sorted((r["id"], r["question"], _image(r["image"]).tobytes()) for r in (ds[i] for i in range(4))))
    assert contents[0] == contents[1]
    rec = core.make_record(7, 2, image_size=64)
    row = next(r for r in contents[0] if r[0].decode() == rec["id"])
    assert row[1].decode() == rec["question"]
    builders.build("caption", 2, 7, str(tmp_path / "c"), num_heldout=1, image_size=64)
    cap = tfds.data_source("math_engine_caption", data_dir=str(tmp_path / "c"))["train"]
    assert len(cap) == 2 and cap[0]["caption"] and _image(cap[0]["image"]).shape == (64, 64, 3)
