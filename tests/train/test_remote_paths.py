"""gs:// workdirs without a network: URL checks and normalisation, the clear errors (unsupported scheme,
missing packages, unwritable bucket, jobs that write locally), local paths unchanged, and real runs
against a fake Cloud Storage on this machine.

The fake serves one local folder two ways, as Cloud Storage is reached two ways: tensorstore's own GCS
driver (orbax's checkpoint arrays) talks HTTP to a small JSON-API server (``TENSORSTORE_GCS_HTTP_URL``),
and etils.epath (config.json, orbax's metadata, the mirrored metrics) goes through an fsspec filesystem
registered for ``gs``/``gcs`` in place of gcsfs. google-cloud-storage, which orbax asks whether the
bucket has a hierarchical namespace, is a stub saying no. Everything else is the real code: orbax,
tensorstore, grain, the Checkpointer, the trainer."""

import http.server
import importlib
import importlib.machinery
import json
import logging
import os
import shlex
import sys
import threading
import types
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from ml_collections import ConfigDict

from mathvlm import config as mc
from mathvlm import sharding
from mathvlm import workdir as wd
from mathvlm.data import pipeline
from mathvlm import main as entry
from mathvlm.train import checkpoint as checkpoint_lib
from mathvlm.train import metrics
from mathvlm.train.checkpoint import Checkpointer
from tests.train.test_checkpoint import make  # the sharded model + Adam state those tests save

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "text_demo.py")


# ------------------------------------------------------------------------------- fake Cloud Storage

class _GCSHandler(http.server.BaseHTTPRequestHandler):
    """The Cloud Storage JSON API calls tensorstore makes (media GET with ranges and generation
    preconditions, media upload, list, delete), over ``server.root/<bucket>/<object name>``; an
    object's generation is its file's mtime in ns."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _json(self, value):
        self._reply(200, json.dumps(value).encode(), [("Content-Type", "application/json")])

    def _request(self):
        url = urllib.parse.urlsplit(self.path)
        self.server.requests.append((self.command, url.path))
        return url.path.split("/"), dict(urllib.parse.parse_qsl(url.query))

    def _object(self, bucket, name):
        path = os.path.join(self.server.root, bucket, name)
        return path, (os.stat(path).st_mtime_ns if os.path.isfile(path) else None)

    def _meta(self, bucket, name, path):
        return {"kind": "storage#object", "bucket": bucket, "name": name, "metageneration": "1",
                "generation": str(os.stat(path).st_mtime_ns), "size": str(os.path.getsize(path))}

    @staticmethod
    def _fails(params, generation):
        """A failed ifGenerationMatch (0: the object must not exist)."""
        if "ifGenerationMatch" not in params:
            return False
        want = int(params["ifGenerationMatch"])
        return generation is not None if want == 0 else generation != want

    def do_GET(self):
        parts, params = self._request()  # /storage/v1/b/<bucket>/o[/<object>]
        bucket = parts[4]
        if len(parts) == 6:
            return self._list(bucket, params)
        name = urllib.parse.unquote("/".join(parts[6:]))
        with self.server.lock:
            path, generation = self._object(bucket, name)
            if self._fails(params, generation):
                return self._reply(412)
            if generation is None:
                return self._reply(404)
            if params.get("ifGenerationNotMatch") == str(generation):
                return self._reply(304)
            if params.get("alt") != "media":
                return self._json(self._meta(bucket, name, path))
            with open(path, "rb") as f:
                data = f.read()
        headers = [("x-goog-generation", str(generation)), ("Content-Type", "application/octet-stream")]
        ranged = self.headers.get("Range", "")
        if not ranged.startswith("bytes="):
            return self._reply(200, data, headers)
        first, _, last = ranged[len("bytes="):].partition("-")
        if not first:
            first, last = max(0, len(data) - int(last)), len(data) - 1
        first, last = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        headers.append(("Content-Range", f"bytes {first}-{last}/{len(data)}"))
        self._reply(206, data[first:last + 1], headers)

    def _list(self, bucket, params):
        base = os.path.join(self.server.root, bucket)
        names = sorted(os.path.relpath(os.path.join(folder, f), base).replace(os.sep, "/")
                       for folder, _, files in os.walk(base) for f in files)
        start, end = params.get("pageToken") or params.get("startOffset") or "", params.get("endOffset")
        items = [self._meta(bucket, n, os.path.join(base, n)) for n in names
                 if n.startswith(params.get("prefix", "")) and n >= start and (end is None or n < end)
                 and not (params.get("pageToken") and n == start)]
        self._json({"kind": "storage#objects", "items": items})

    def do_POST(self):
        parts, params = self._request()  # /upload/storage/v1/b/<bucket>/o?uploadType=media&name=...
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        bucket, name = parts[5], params.get("name", "")
        if params.get("uploadType") != "media" or not name:
            return self._reply(400)
        if not os.path.isdir(os.path.join(self.server.root, bucket)):
            return self._reply(404)
        with self.server.lock:
            path, generation = self._object(bucket, name)
            if self._fails(params, generation):
                return self._reply(412)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".uploading", "wb") as f:
                f.write(body)
            os.replace(path + ".uploading", path)
            meta = self._meta(bucket, name, path)
        self._json(meta)

    def do_DELETE(self):
        parts, params = self._request()
        bucket, name = parts[4], urllib.parse.unquote("/".join(parts[6:]))
        with self.server.lock:
            path, generation = self._object(bucket, name)
            if generation is None:
                return self._reply(404)
            if self._fails(params, generation):
                return self._reply(412)
            os.remove(path)
        self._reply(204)


def _filesystem_over(root):
    """An fsspec filesystem for ``gs://bucket/key`` over ``root/bucket/key`` (gcsfs's place)."""

    class FakeGCSFileSystem(DirFileSystem):
        protocol = ("gs", "gcs")
        cachable = False

        def __init__(self, *args, **kwargs):  # etils passes finalize_on_close=True
            super().__init__(path=root, fs=LocalFileSystem(auto_mkdir=True))

        def open(self, path, *args, **kwargs):
            bucket = self._strip_protocol(path).split("/")[0]
            if not os.path.isdir(os.path.join(root, bucket)):
                raise FileNotFoundError(f"the bucket {bucket!r} does not exist")
            return super().open(path, *args, **kwargs)

    return FakeGCSFileSystem


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GCSHandler)
    server.daemon_threads = True
    server.root, server.lock, server.requests = str(tmp_path_factory.mktemp("gcs")), threading.Lock(), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TENSORSTORE_GCS_HTTP_URL", f"http://127.0.0.1:{server.server_port}")
        patch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake-token")  # no credential lookup
        yield server
    server.shutdown()


def _clear_caches():
    from etils.epath import backend
    from orbax.checkpoint._src.path import gcs_utils

    backend.fsspec_backend._get_filesystem.cache_clear()
    gcs_utils.get_bucket.cache_clear()


@pytest.fixture
def gcs(gcs_server, monkeypatch, tmp_path, request):
    """A fresh bucket ``gs://<name>`` on the fake; returns (bucket name, its local folder, server)."""
    registry = importlib.import_module("fsspec.registry")
    fake = _filesystem_over(gcs_server.root)
    for protocol in ("gs", "gcs"):
        monkeypatch.setitem(registry._registry, protocol, fake)
    storage = types.ModuleType("google.cloud.storage")
    storage.__spec__ = importlib.machinery.ModuleSpec("google.cloud.storage", None)
    storage.Client = lambda: types.SimpleNamespace(
        get_bucket=lambda name: types.SimpleNamespace(name=name, hierarchical_namespace_enabled=False))
    monkeypatch.setitem(sys.modules, "google.cloud.storage", storage)
    monkeypatch.setenv("EPATH_USE_TF", "0")
    monkeypatch.setenv("MATHVLM_MIRROR_DIR", str(tmp_path / "mirror"))
    monkeypatch.chdir(tmp_path)  # so a URL mangled into a relative path would show up here
    bucket = "bucket-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    os.makedirs(os.path.join(gcs_server.root, bucket))
    _clear_caches()
    yield bucket, os.path.join(gcs_server.root, bucket), gcs_server
    _clear_caches()




def data_iterator():
    return pipeline.make_iterator(ConfigDict({"source": "text_math", "batch_size": 2, "seq_len": 64}), seed=0)


def _objects(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


# ------------------------------------------------------------------- checks and paths (nothing touched)

@pytest.mark.parametrize("given, url", [
    ("gs://my-bucket/runs/x", "gs://my-bucket/runs/x"),
    ("gs://my-bucket/runs//x/", "gs://my-bucket/runs/x"),
    ("GS://my-bucket/./x", "gs://my-bucket/x"),
    ("gs://my-bucket", "gs://my-bucket"),
])
def test_a_gs_workdir_is_accepted_and_normalised(given, url):
    config = mc.load(f"{DEMO}:steps=2")
    assert wd.is_remote(given)
    assert wd.check_paths(config, given) == url
    assert wd.remote_url(given) == url


@pytest.mark.parametrize("given, message", [
    ("s3://my-bucket/x", r"s3:// is not supported.*gs://BUCKET/PATH.*mountpoint-s3"),
    ("memory://x", r"memory:// is not supported"),
    ("hf://org/repo", r"hf:// is not supported"),
    ("gs:///runs/x", r"'' is not a Cloud Storage bucket name"),
    ("gs://My_Bucket/x", r"'My_Bucket' is not a Cloud Storage bucket name"),
    ("gs://my-bucket/a/../b", r"'\.\.' has no meaning"),
])
def test_a_remote_path_the_trainer_cannot_write_is_refused_naming_it(given, message):
    with pytest.raises(wd.WorkdirError, match=message) as error:
        wd.check_paths(mc.load(f"{DEMO}:steps=2"), given)
    assert given in str(error.value)


def test_orbax_still_builds_tensorstore_specs_for_gs_only():
    """Why s3:// is refused: orbax 0.12.8 normalises s3://b/x into the relative path "s3:/b/x" and
    stops. If this starts passing through, s3 can join mathvlm.workdir.REMOTE_SCHEMES."""
    from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

    assert ts_utils.build_kvstore_tspec("gs://my-bucket/run/checkpoints/1/state")["base"]["driver"] == "gcs"
    with pytest.raises(ValueError, match="absolute"):
        ts_utils.build_kvstore_tspec("s3://my-bucket/run/checkpoints/1/state")


def test_local_paths_are_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = mc.load(f"{DEMO}:steps=2")
    for path in ("runs/x", str(tmp_path / "y"), "relative/../z"):
        assert not wd.is_remote(path)
        assert wd.check_paths(config, path) == path
        files = metrics.RunFiles(path)
        assert files.local == path and not files.enabled and files.remote_path(f"{path}/a") == f"{path}/a"
        files.pull()
        assert files.push() and not os.path.exists(path)  # a local workdir: nothing to copy
    assert wd.check_paths(config, "file:///data/run") == "/data/run"
    assert entry.prepare_workdir("runs/x") == str(tmp_path / "runs" / "x")
    ckpt = Checkpointer("runs/x", async_save=False)
    assert ckpt.workdir == str(tmp_path / "runs" / "x") and not ckpt.remote
    assert ckpt.directory == os.path.join(str(tmp_path), "runs", "x", "checkpoints")
    assert str(ckpt.manager.directory) == ckpt.directory
    ckpt.close()


def test_jobs_that_write_locally_and_remote_starting_points_are_refused():
    chain = mc.load(os.path.join(ROOT, "configs", "demo.py"))
    assert chain.job == "chain"
    with pytest.raises(wd.WorkdirError, match=r"config.job='chain' writes its run directory with local"):
        wd.check_paths(chain, "gs://my-bucket/demo")
    assert wd.check_paths(chain, "runs/demo") == "runs/demo"
    config = mc.load(f"{DEMO}:steps=2")
    config.init.checkpoint = "gs://my-bucket/stage1"
    with pytest.raises(wd.WorkdirError, match=r"init.checkpoint='gs://my-bucket/stage1'.*gcloud storage cp"):
        wd.check_paths(config, "runs/x")  # whatever the workdir
    with pytest.raises(mc.ConfigError, match="reading a run from gs://"):
        mc.load_run_config("gs://my-bucket/stage1")


def test_the_command_line_refuses_a_bad_workdir_before_absl_or_jax(capsys):
    with pytest.raises(SystemExit) as exit_:
        mc.main_guard(["main", f"--config={DEMO}:steps=2", "--workdir", "s3://my-bucket/x"])
    assert exit_.value.code == 2
    assert "config error: --workdir 's3://my-bucket/x': s3:// is not supported" in capsys.readouterr().err
    mc.main_guard(["main", f"--config={DEMO}:steps=2", "--workdir=gs://my-bucket/x"])  # accepted


def test_missing_packages_for_gs_fail_at_startup_naming_the_path_and_what_to_install(monkeypatch):
    registry = importlib.import_module("fsspec.registry")
    monkeypatch.delitem(registry._registry, "gcs", raising=False)
    monkeypatch.setitem(registry.known_implementations, "gcs", {
        "class": "gcsfs_is_not_installed.GCSFileSystem", "err": "Please install gcsfs to access Google Storage"})
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # import fails
    monkeypatch.setenv("EPATH_USE_TF", "0")
    with pytest.raises(SystemExit) as exit_:
        entry.prepare_workdir("gs://my-bucket/run")
    message = str(exit_.value)
    for part in ("--workdir gs://my-bucket/run", "gcsfs", "google-cloud-storage", "requirements-tpu.txt",
                 "Please install gcsfs"):
        assert part in message, (part, message)
    with pytest.raises(wd.WorkdirError, match="cannot write gs:// paths: missing gcsfs"):
        Checkpointer("gs://my-bucket/run")


def test_tpu_pod_passes_a_gs_workdir_to_every_worker(capsys):
    spec = importlib.util.spec_from_file_location("launch_tpu_pod", os.path.join(ROOT, "launch", "tpu_pod.py"))
    tpu_pod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tpu_pod
    spec.loader.exec_module(tpu_pod)
    common = ["--topology", "v5litepod-16", "--tpu-name", "t", "--zone", "z"]
    assert tpu_pod.main(["--config", f"{DEMO}:steps=2", *common, "--workdir", "gs://my-bucket/runs/x/",
                         "--dry-run"]) == 0
    out = capsys.readouterr()
    assert shlex.split(out.out)[-1].endswith("--workdir=gs://my-bucket/runs/x")
    assert "own disk" not in out.err
    with pytest.raises(tpu_pod.LaunchError, match="s3:// is not supported"):
        tpu_pod.main(["--config", f"{DEMO}:steps=2", *common, "--workdir", "s3://my-bucket/x", "--dry-run"])
    with pytest.raises(tpu_pod.LaunchError, match="config.job='chain'"):
        tpu_pod.main(["--config", "configs/demo.py", *common, "--workdir", "gs://my-bucket/x", "--dry-run"])


# ------------------------------------------------------------------------- against the fake bucket

def test_a_gs_workdir_is_probed_at_startup_and_stays_a_url(gcs, tmp_path):
    bucket, folder, _ = gcs
    assert entry.prepare_workdir(f"gs://{bucket}/run/") == f"gs://{bucket}/run"
    assert _objects(folder) == []  # the probe object was removed, and nothing else was written
    with pytest.raises(SystemExit, match=r"gs://no-such-bucket/run is not writable.*bucket exists"):
        entry.prepare_workdir("gs://no-such-bucket/run")
    assert os.listdir(tmp_path) == []  # no local "gs:" folder


def test_checkpoints_round_trip_through_tensorstore_on_gs(gcs, tmp_path, caplog):
    """The real Checkpointer on gs://: orbax gets the URL, the arrays go through tensorstore's GCS
    driver (HTTP to the fake), keep-N deletes old steps, restore and resume detection work, and an
    unfinished step folder (no commit marker) is never counted."""
    bucket, folder, server = gcs
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    state = jax.tree.map(lambda x: x + 1 if x.dtype != jnp.int32 else x, make(mesh, "fsdp"))
    it = data_iterator()
    next(it)
    ckpt = Checkpointer(f"gs://{bucket}/run", keep=2)
    assert ckpt.remote and ckpt.directory == f"gs://{bucket}/run/checkpoints"
    assert isinstance(ckpt.manager.directory, epath.Path)
    assert str(ckpt.manager.directory) == f"gs://{bucket}/run/checkpoints"
    with caplog.at_level(logging.WARNING):
        needed = ckpt.check_space(state, min_free_bytes=5)
    assert needed == 3 * checkpoint_lib.checkpoint_bytes(state) + 5
    assert "checkpoint space check skipped" in caplog.text and f"gs://{bucket}/run/checkpoints" in caplog.text
    del server.requests[:]
    for step in (1, 2, 3):
        next(it)
        ckpt.save(step, jax.tree.map(lambda x, s=step: x * s if x.dtype != jnp.int32 else x, state), it,
                  meta={"note": step})
    ckpt.close()
    expected_next = next(it)
    assert ("POST", f"/upload/storage/v1/b/{bucket}/o") in server.requests  # tensorstore wrote arrays
    saved = _objects(folder)
    assert {p.split("/")[2] for p in saved} == {"2", "3"}  # keep=2 deleted step 1
    assert "run/checkpoints/3/commit_success.txt" in saved and any("/3/state/" in p for p in saved)
    assert not os.path.exists(tmp_path / "gs:") and os.listdir(tmp_path) == []

    os.makedirs(os.path.join(folder, "run", "checkpoints", "4", "state"))  # a save that died midway
    with open(os.path.join(folder, "run", "checkpoints", "4", "state", "_METADATA"), "w") as f:
        f.write("{}")
    again = Checkpointer(f"gs://{bucket}/run/")
    assert again.complete_steps() == [2, 3] and again.latest_step() == 3
    fresh = data_iterator()
    restored, meta = again.restore(3, make(mesh, "fsdp"), fresh)
    again.close()
    assert meta == {"step": 3, "note": 3}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        want = np.asarray(a) * 3 if a.dtype != jnp.int32 else np.asarray(a)
        np.testing.assert_array_equal(np.asarray(b), want.astype(b.dtype))
    np.testing.assert_array_equal(next(fresh)["tokens"], expected_next["tokens"])


def test_run_files_mirror_metrics_and_tensorboard_to_the_bucket(gcs, tmp_path, caplog):
    bucket, folder, _ = gcs
    url = f"gs://{bucket}/run"
    os.makedirs(os.path.join(folder, "run"))
    with open(os.path.join(folder, "run", "metrics.jsonl"), "w") as f:  # an earlier machine's records
        f.writelines(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3))
    files = metrics.RunFiles(url)
    with caplog.at_level(logging.WARNING):
        files.pull()
    assert files.local == str(tmp_path / "mirror" / "gs" / bucket / "run")
    assert f"written to {files.local} and copied there" in caplog.text  # says where they go
    writer = metrics.MetricWriter(files.local, total_steps=10, initial_step=2)  # resumed at step 2
    writer.write(3, {"loss": 0.25})
    assert files.push(writer.flush)
    remote = [json.loads(line) for line in open(os.path.join(folder, "run", "metrics.jsonl"))]
    assert [(r["step"], r["loss"]) for r in remote] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    events = [p for p in _objects(os.path.join(folder, "run")) if p.startswith("tensorboard/")]
    assert events and files.remote_path(os.path.join(files.local, events[0])) == f"{url}/{events[0]}"
    stamp = os.stat(os.path.join(folder, "run", "metrics.jsonl")).st_mtime_ns
    assert files.push() and os.stat(os.path.join(folder, "run", "metrics.jsonl")).st_mtime_ns == stamp
    writer.write(4, {"loss": 0.2})
    writer.close()

    # The process dies before copying step 4: the next start keeps that mirror aside, says where, and
    # continues from the bucket's copy.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        metrics.RunFiles(url).pull()
    aside = [p for p in os.listdir(os.path.dirname(files.local)) if p.startswith("run.unsynced-")]
    assert len(aside) == 1 and "never reached" in caplog.text and aside[0] in caplog.text
    kept = os.path.join(os.path.dirname(files.local), aside[0], "metrics.jsonl")
    assert json.loads(open(kept).read().splitlines()[-1])["step"] == 4
    assert [json.loads(x)["step"] for x in open(os.path.join(files.local, "metrics.jsonl"))] == [1, 2, 3]
    # A mirror whose files all reached the bucket is simply replaced.
    metrics.RunFiles(url).pull()
    assert len([p for p in os.listdir(os.path.dirname(files.local)) if "unsynced" in p]) == 1


def test_a_copy_that_fails_is_reported_and_retried(gcs, caplog, monkeypatch):
    bucket, folder, _ = gcs
    files = metrics.RunFiles(f"gs://{bucket}/run")
    files.pull()
    with open(os.path.join(files.local, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1}\n')

    def broken(source, destination):
        raise PermissionError("403 storage.objects.create denied")

    copy = metrics._copy
    monkeypatch.setattr(metrics, "_copy", broken)
    with caplog.at_level(logging.WARNING):
        assert not files.push()
    assert "could not copy 1 file(s)" in caplog.text and "403" in caplog.text and files.local in caplog.text
    assert not os.path.exists(os.path.join(folder, "run", "metrics.jsonl"))
    monkeypatch.setattr(metrics, "_copy", copy)
    assert files.push() and open(os.path.join(folder, "run", "metrics.jsonl")).read() == '{"step": 1}\n'


def test_training_on_a_gs_workdir_writes_everything_there_and_resumes_on_another_machine(gcs, tmp_path,
                                                                                         monkeypatch):
    bucket, folder, _ = gcs
    url = f"gs://{bucket}/text_demo"

    def config(steps):
        config = mc.load(f"{DEMO}:steps={steps},batch_size=8")
        for key, value in {"eval.evaluators": "()", "train.log_every": "2", "checkpoint.every_steps": "2"}.items():
            mc.override(config, key, value)
        return config

    entry.run(config(4), url + "/")
    run = os.path.join(folder, "text_demo")
    saved = _objects(run)
    for name in ("config.json", "metrics.jsonl", "summary.md", "loss.png", "checkpoints/4/commit_success.txt"):
        assert name in saved, (name, saved)
    assert any(p.startswith("tensorboard/events.out.tfevents") for p in saved)
    assert json.load(open(os.path.join(run, "config.json")))["train"]["steps"] == 4
    assert not [p for p in os.listdir(tmp_path) if p != "mirror"]  # nothing mangled into the cwd

    monkeypatch.setenv("MATHVLM_MIRROR_DIR", str(tmp_path / "other_machine"))
    entry.run(config(6), url)
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [2, 4, 6]  # continued from the bucket's metrics.jsonl
    assert sorted({p.split("/")[1] for p in _objects(run) if p.startswith("checkpoints/")}) == ["4", "6"]
