"""Run directories: what ``--workdir`` may be, and where each file of a run goes.

A workdir is a local path (``file:///x`` counts as the local path ``/x``) or a ``gs://BUCKET/PATH`` URL.
For a local workdir every file is written there. For ``gs://``:

* checkpoints are written natively by orbax: the arrays through tensorstore's GCS driver, orbax's
  metadata through etils.epath (:mod:`mathvlm.train.checkpoint`);
* ``config.json`` is written through etils.epath (:func:`mathvlm.config.write_config`);
* the files written with plain file calls (``metrics.jsonl``, TensorBoard events, ``rollouts.jsonl``,
  evaluation tables, ``summary.md``) go to a local mirror, ``$MATHVLM_MIRROR_DIR`` (default
  ``~/.cache/mathvlm/mirror``) ``/<scheme>/<bucket>/<path>``, which is copied to the same names under
  the workdir URL after every checkpoint save, every 300 s of logging (``metrics.SYNC_SECONDS``) and
  when the run ends, also when it fails; a resumed run first copies back the files it appends to
  (``metrics.jsonl``, ``rollouts.jsonl``) (:class:`mathvlm.train.metrics.RunFiles`).

Other schemes are refused: orbax-checkpoint (0.12.8) builds tensorstore specs for gs:// only, and turns
e.g. s3://b/x into the relative path "s3:/b/x"; such storage can be mounted as a directory instead
(gcsfuse; mountpoint-s3 or s3fs). Only the jobs in :data:`REMOTE_JOBS` take a remote workdir, and a
previous stage's checkpoint or transformers folder is read with local file calls, so it must be local
(:func:`check_paths`). Writing gs:// needs gcsfs (or TensorFlow) and google-cloud-storage
(:func:`check_remote_backend`).
"""

from __future__ import annotations

import importlib.util
import os
import re

from ml_collections import ConfigDict

from mathvlm.config import ConfigError

REMOTE_SCHEMES = ("gs",)
# What reading and writing each scheme needs here, as (module, what to install, what for). etils.epath
# opens gs:// with tensorflow.io.gfile when TensorFlow is installed, else with fsspec's "gcs" filesystem
# (gcsfs); orbax itself asks google-cloud-storage about the bucket (hierarchical namespace) when it
# lists and deletes checkpoint steps.
_GCS_INSTALL = "pip install -r requirements-tpu.txt, or pip install gcsfs google-cloud-storage"
# Jobs that take a remote workdir; the others (e.g. "chain": a folder per stage) write it with local
# file calls.
REMOTE_JOBS = ("train",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


class WorkdirError(ConfigError):
    """A run directory (or another run path) the trainer cannot use; the message says what to change."""


def url_scheme(path) -> str | None:
    """``"gs"`` for ``gs://bucket/x`` (any ``scheme://``), None for a plain local path."""
    match = _SCHEME.match(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else None
    return match.group(1).lower() if match else None


def is_remote(path) -> bool:
    """Whether ``path`` is a URL (``gs://...``) rather than a local path (``file://`` counts as local)."""
    return url_scheme(path) not in (None, "file")


def local_path(path: str) -> str:
    """``file:///x/y`` → ``/x/y``; any other local path unchanged."""
    return path[len("file://"):] if url_scheme(path) == "file" else path


def remote_url(path: str, what: str = "--workdir") -> str:
    """The checked, normalised URL of a remote run path: ``gs://bucket/a//b/`` → ``gs://bucket/a/b``.
    Raises :class:`WorkdirError` for a scheme the trainer cannot write or a URL without a bucket."""
    scheme = url_scheme(path)
    if scheme not in REMOTE_SCHEMES:
        raise WorkdirError(
            f"{what} {path!r}: {scheme}:// is not supported. Checkpoints are written by orbax, whose "
            "tensorstore writer reaches remote storage only through gs:// (orbax-checkpoint 0.12.8), so "
            "use gs://BUCKET/PATH, a local directory, or the storage mounted as a directory (gcsfuse; "
            "mountpoint-s3 or s3fs for s3://)")
    rest = path[len(scheme) + 3:]
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise WorkdirError(f"{what} {path!r}: {bucket!r} is not a Cloud Storage bucket name (3-63 "
                           "lowercase letters, digits, '-', '_' or '.'); give gs://BUCKET/PATH")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise WorkdirError(f"{what} {path!r}: '..' has no meaning in a bucket path; write the path out")
    return "/".join([f"gs://{bucket}", *parts])


def check_paths(config: ConfigDict | None, workdir: str | None) -> str | None:
    """Check the run directory and the run paths of ``config`` before any work: a remote ``workdir`` must
    be ``gs://BUCKET/PATH`` and its job one that writes through it (:data:`REMOTE_JOBS`); a previous
    stage's checkpoint (``init.checkpoint``) and transformers folder (``init.hf``) are read with local
    file calls, so they must be local (or mounted). Returns the workdir as the trainer will use it (a
    normalised URL, or the local path as given); raises :class:`WorkdirError`. Nothing is touched."""
    init = config.get("init", {}) if config is not None else {}
    for key in ("checkpoint", "hf"):
        value = init.get(key, "") if hasattr(init, "get") else ""
        if isinstance(value, str) and is_remote(value):
            raise WorkdirError(
                f"init.{key}={value!r}: a starting point on {url_scheme(value)}:// is not read directly "
                "(it is loaded with local file calls); copy it to this machine first (gcloud storage cp "
                "-r URL DIR) or give the path of a gcsfuse mount")
    if workdir is None or not is_remote(workdir):
        return None if workdir is None else local_path(workdir)
    url = remote_url(workdir)
    job = config.get("job", "train") if config is not None else "train"
    if job not in REMOTE_JOBS:
        raise WorkdirError(
            f"--workdir {url}: config.job={job!r} writes its run directory with local file calls; a "
            f"gs:// workdir works for {' and '.join(repr(j) for j in REMOTE_JOBS)} jobs. Give a local "
            "directory, or the bucket mounted with gcsfuse (e.g. /mnt/gcs/...)")
    return url


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package; a module without a spec
        return False


def check_remote_backend(url: str) -> None:
    """Raise :class:`WorkdirError` when the packages that read and write ``url``'s scheme are missing
    (what etils.epath and orbax need for gs://), naming them and how to install them. Offline: it
    only looks at what is installed."""
    missing = []
    if not (os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0")
            and _importable("tensorflow")):
        import fsspec

        try:
            fsspec.get_filesystem_class("gcs")
        except (ImportError, ValueError) as e:
            missing.append(f"gcsfs (etils.epath writes config.json, metrics and orbax's checkpoint "
                           f"metadata through fsspec's gcs filesystem: {e})")
    if not _importable("google.cloud.storage"):
        missing.append("google-cloud-storage (orbax asks it about the bucket when it lists and deletes "
                       "checkpoint steps)")
    if missing:
        raise WorkdirError(f"--workdir {url}: this Python environment cannot write gs:// paths: missing "
                           f"{'; and '.join(missing)}. Install them ({_GCS_INSTALL}), or give a local or "
                           "mounted directory")


def prepare_remote_workdir(workdir: str, job: str = "train") -> str:
    """Check a remote workdir (scheme, job, installed packages) and prove it writable by writing and
    deleting one small object; returns its normalised URL. No directory is made: a bucket has none (and
    making one with gcsfs could create a misspelt bucket). Raises :class:`WorkdirError`."""
    import socket
    import uuid

    from etils import epath

    url = check_paths(ConfigDict({"job": job}), workdir)
    check_remote_backend(url)
    probe = epath.Path(url) / f".write_check_{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        probe.write_text("mathvlm write check\n")
        probe.unlink()
    except Exception as e:  # missing bucket, no credentials, no permission, network
        raise WorkdirError(
            f"--workdir {url} is not writable ({type(e).__name__}: {e}); check that the bucket exists, "
            "this machine's credentials (the TPU VM's service account, or gcloud auth "
            "application-default login) and their storage.objects.create and .delete permissions, or "
            "choose another --workdir") from None
    return url
