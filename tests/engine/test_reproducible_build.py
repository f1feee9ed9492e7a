"""``python -m mathvlm.engine build`` is reproducible byte for byte: the same arguments in two processes
(different ``PYTHONHASHSEED``) write identical files, and the printed sha256 digests (also in
``<data_dir>/SHA256SUMS``) are those of the files, so two ablation arms can check they saw the same data."""

import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSIONS = {"instruct": "1.0.0", "pairs": "1.1.0"}
DIGEST_LINE = re.compile(r"^sha256 (\w+): ([0-9a-f]{64}) \((\d+) records?, (\d+) files?\)$", re.M)


def _build(out, kind: str, seed: int, hashseed: int):
    """Run the real CLI in a fresh process; returns (data_dir, {name: (digest, records, files)})."""
    cmd = [sys.executable, "-m", "mathvlm.engine", "build", "--kind", kind, "--num", "6", "--heldout", "2",
           "--seed", str(seed), "--image-size", "32", "--out", str(out)]
    env = dict(os.environ, PYTHONHASHSEED=str(hashseed))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = {m[0]: (m[1], int(m[2]), int(m[3])) for m in DIGEST_LINE.findall(done.stdout)}
    return out / f"math_engine_{kind}" / VERSIONS[kind], printed


def _files(data_dir) -> dict:
    return {p.name: p.read_bytes() for p in sorted(data_dir.iterdir()) if p.is_file()}


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _manifest(files: dict, names) -> bytes:
    """``sha256sum`` lines of ``names`` (sorted), as in SHA256SUMS."""
    return "".join(f"{_sha(files[n])}  {n}\n" for n in sorted(names)).encode()


@pytest.mark.parametrize("kind", ["instruct", "pairs"])
def test_build_is_byte_identical_across_processes(tmp_path, kind):
    dir_a, printed_a = _build(tmp_path / "a", kind, seed=3, hashseed=1)
    dir_b, printed_b = _build(tmp_path / "b", kind, seed=3, hashseed=2)
    files_a, files_b = _files(dir_a), _files(dir_b)
    assert sorted(files_a) == sorted(files_b)
    differ = sorted(n for n in files_a if files_a[n] != files_b[n])
    assert not differ, f"files differ between two identical builds: {differ}"

    # the printed digests: equal across the two builds and those of the files themselves
    assert printed_a == printed_b
    assert set(printed_a) == {"train", "heldout", "dataset"}
    for split, records in (("train", 6), ("heldout", 2)):
        shards = [n for n in files_a if f"-{split}." in n and ".array_record-" in n]
        assert shards and printed_a[split] == (_sha(_manifest(files_a, shards)), records, len(shards))
    # SHA256SUMS lists every other file of the dataset; the dataset digest is the sha256 of SHA256SUMS
    sums = files_a["SHA256SUMS"]
    covered = [n for n in files_a if n != "SHA256SUMS"]
    assert {"dataset_info.json", "features.json"} <= set(covered)
    assert sums == _manifest(files_a, covered)
    assert printed_a["dataset"] == (_sha(sums), 8, len(covered))
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=dir_a, capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, check.stdout + check.stderr

    if kind == "pairs":  # another seed is other data, and the digest says so
        _, printed_c = _build(tmp_path / "c", kind, seed=4, hashseed=1)
        assert set(printed_c) == set(printed_a)
        assert all(printed_c[name][0] != printed_a[name][0] for name in printed_a)


def test_dataset_digest_matches_files(tmp_path):
    """``builders.dataset_digest`` reads any built directory (here: one written in this process)."""
    from mathvlm.engine import builders
    builder = builders.build("caption", 2, 5, str(tmp_path), num_heldout=1, image_size=32)
    data_dir = builder.data_dir
    digest = builders.dataset_digest(data_dir)
    files = _files(type(tmp_path)(data_dir))
    covered = [n for n in files if n != "SHA256SUMS"]
    assert digest["files"] == {n: _sha(files[n]) for n in covered}
    assert files["SHA256SUMS"] == _manifest(files, covered)
    assert digest["sha256"] == _sha(files["SHA256SUMS"])
    assert digest["splits"]["train"]["num_examples"] == 2 and digest["splits"]["heldout"]["num_examples"] == 1
