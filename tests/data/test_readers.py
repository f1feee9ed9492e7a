"""Readers of the papers' data formats and the conversation source, including every bad-record kind."""

import json

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from mathvlm.data import readers, sources
from mathvlm.data.tokenization import ByteTokenizer


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (20, 10), (10, 200, 30)).save(folder / "ok.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


def write_json(path, rows):
    path.write_text(json.dumps(rows))
    return str(path)


def llava_rows():
    return [
        {"id": "a", "image": "ok.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour dominates?"}, {"from": "gpt", "value": "Green"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
        {"id": "c", "image": "missing.png", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
        {"id": "d", "image": "corrupt.png", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
        {"id": "e", "conversations": [{"from": "human", "value": "long " * 40}, {"from": "gpt", "value": "x"}]},
        {"id": "f", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "  "}]},
        {"id": "g", "image": "ok.png"},
    ]


def test_llava_reader_and_source_with_every_bad_kind(tmp_path, image_dir):
    path = write_json(tmp_path / "mathv360k.json", llava_rows())
    skips = readers.SkipCounter()
    records = readers.read_llava_json(path, str(image_dir), skips=skips, max_bad_fraction=0.5)
    assert [r["id"] for r in records] == ["a", "b", "c", "d", "e"]
    assert skips.counts == {"empty_answer": 1, "malformed_row": 1}
    assert records[1]["images"] == [] and records[0]["images"] == [str(image_dir / "ok.png")]

    config = ConfigDict({"format": "llava_json", "path": path, "image_root": str(image_dir),
                         "seq_len": 64, "image_size": 8, "num_image_tokens": 4,
                         "template": "plain", "max_bad_fraction": 0.5})
    source = sources.ConversationSource(config, seed=0, tokenizer=ByteTokenizer())
    rows = [source[i] for i in range(len(source))]
    reasons = [sources.SKIP_REASONS[int(r["skip_reason"])] for r in rows]
    assert reasons == ["ok", "ok", "missing_image", "corrupt_image", "too_long"]
    for row in rows:
        assert row["tokens"].shape == (64,) and row["images"].shape == (8, 8, 3)
    assert rows[0]["image_mask"] and not rows[1]["image_mask"]
    assert (rows[0]["tokens"] == ByteTokenizer.image_id).sum() == 4
    assert ByteTokenizer().decode(rows[0]["targets"][rows[0]["loss_mask"] > 0]) == "Green"
    for blank in rows[2:]:
        assert blank["loss_mask"].sum() == 0 and not blank["image_mask"]


def test_malformed_jsonl_lines_counted_and_limit_enforced(tmp_path):
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(9)] + ["{not json"]
    path = tmp_path / "stage1.jsonl"
    path.write_text("\n".join(lines) + "\n")
    skips = readers.SkipCounter()
    records = readers.read_puma_rows(str(path), skips=skips, max_bad_fraction=0.2)
    assert len(records) == 9 and skips.counts == {"malformed_json": 1}
    assert skips.examples["malformed_json"] == [f"{path}:10"]
    with pytest.raises(ValueError, match=r"stage1.jsonl: 1 of 10 records are unusable .*malformed_json"):
        readers.read_puma_rows(str(path), max_bad_fraction=0.05)


def test_puma_pairs_and_text_only_rows(tmp_path):
    rows = [{"image_url": "", "instruction": "In triangle ABC, AB=3, BC=4, angle B=90°. Find AC.",
             "output": "AC=5", "image_url_2": "v.png", "instruction_2": "Find AC.", "output_2": "AC=5"}]
    path = write_json(tmp_path / "stage2.json", rows)
    (pair,) = readers.read_puma_rows(path, image_root="/imgs", pairs=True)
    assert pair["strong"]["images"] == [] and pair["weak"]["images"] == ["/imgs/v.png"]
    assert pair["weak"]["conversation"][0]["content"] == "<image>\nFind AC."
    assert pair["strong"]["conversation"][1]["content"] == pair["weak"]["conversation"][1]["content"]
    with pytest.raises(ValueError, match="unusable"):
        readers.read_puma_rows(write_json(tmp_path / "bad.json", [{"instruction": "q", "output": "a"}]),
                               pairs=True)


def test_mavis_rows_versions(tmp_path):
    row = {"id": 7, "choices": ["3", "4", "5"], "answer_index": 2,
           "image_text_dominant": "td.png", "image_text_lite": "tl.png", "image_vision_dominant": "vd.png",
           "text_en": {"text_dominant_question": "AB=3 and BC=4 with a right angle at B. Find AC.",
                       "text_lite_question": "Find AC.", "vision_dominant_question": "Find AC.",
                       "CoT_reasoning": "By Pythagoras AC = 5. Answer: C"}}
    path = write_json(tmp_path / "mavis.json", [row])
    (lite,) = readers.read_mavis_rows(path, "text_lite")
    (dominant,) = readers.read_mavis_rows(path, "text_dominant")
    assert lite["images"] == ["tl.png"] and dominant["images"] == ["td.png"]
    assert "AB=3" in dominant["conversation"][0]["content"]
    assert "AB=3" not in lite["conversation"][0]["content"]
    assert lite["conversation"][0]["content"].endswith("Choices:\nA: 3\nB: 4\nC: 5")
    assert lite["meta"]["answer_index"] == 2
    with pytest.raises(ValueError, match="MAVIS version"):
        readers.read_mavis_rows(path, "vision_only")


def test_missing_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        readers.read_llava_json(str(tmp_path / "nope.json"))


def test_rows_are_deterministic(tmp_path, image_dir):
    path = write_json(tmp_path / "m.json", llava_rows()[:2])
    config = ConfigDict({"format": "llava_json", "path": path, "image_root": str(image_dir),
                         "seq_len": 48, "image_size": 8, "num_image_tokens": 2, "template": "plain"})
    a = sources.ConversationSource(config, seed=0, tokenizer=ByteTokenizer())[0]
    b = sources.ConversationSource(config, seed=1, tokenizer=ByteTokenizer())[0]
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_pair_and_preference_rows_are_prefixed(tmp_path, image_dir):
    pairs = [{"image_url": "", "instruction": "AB=3, BC=4, angle B is right. Find AC.", "output": "5",
              "image_url_2": "ok.png", "instruction_2": "Find AC.", "output_2": "5"},
             {"image_url": "", "instruction": "q", "output": "a",
              "image_url_2": "missing.png", "instruction_2": "q", "output_2": "a"}]
    config = ConfigDict({"format": "puma_pairs", "path": write_json(tmp_path / "p.json", pairs),
                         "image_root": str(image_dir), "seq_len": 64, "image_size": 8,
                         "num_image_tokens": 3, "template": "plain", "max_bad_fraction": 0.5})
    source = sources.ConversationSource(config, seed=0, tokenizer=ByteTokenizer())
    row, broken = source[0], source[1]
    assert row["skip_reason"] == 0
    assert not row["strong_image_mask"] and row["weak_image_mask"]
    tok = ByteTokenizer()
    assert tok.decode(row["strong_targets"][row["strong_loss_mask"] > 0]) == "5"
    assert tok.decode(row["weak_targets"][row["weak_loss_mask"] > 0]) == "5"
    # One side's image is missing: the whole pair is blanked and counted.
    assert sources.SKIP_REASONS[int(broken["skip_reason"])] == "missing_image"
    assert broken["strong_loss_mask"].sum() == 0 and broken["weak_loss_mask"].sum() == 0

    prefs = [{"id": "p1", "prompt": "What is 2+3?", "chosen": "2+3=5. Answer: 5", "rejected": "Answer: 6"}]
    config = ConfigDict({"format": "preference_rows", "path": write_json(tmp_path / "d.json", prefs),
                         "seq_len": 48, "template": "plain"})
    row = sources.ConversationSource(config, seed=0, tokenizer=tok)[0]
    np.testing.assert_array_equal(row["chosen_tokens"][:12], row["rejected_tokens"][:12])  # shared prompt
    assert tok.decode(row["rejected_targets"][row["rejected_loss_mask"] > 0]) == "Answer: 6"
