"""The one entry point: ``python -m mathvlm.main --config configs/<x>.py[:arg] --workdir DIR``.

flags → config (checked before any work) → workdir (config.json) → mesh → the job the config names
(``config.job``, registry kind "job"; ``train`` runs the trainer). Overrides: ``--config.optim.lr=1e-4``.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

from mathvlm import config as mc
from mathvlm import registry, sharding
from mathvlm import workdir as wd

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/demo.py or configs/x.py:size=tiny.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, checkpoints; "
                                "a local path or gs://BUCKET/PATH.")
flags.mark_flags_as_required(["config", "workdir"])


def prepare_workdir(workdir: str, job: str = "train") -> str:
    """Create the run directory and prove it is writable before any expensive work starts. A
    ``gs://BUCKET/PATH`` workdir is checked (job, installed packages) and probed with one small object,
    and stays a URL (:func:`mathvlm.workdir.prepare_remote_workdir`)."""
    if wd.is_remote(workdir):
        try:
            return wd.prepare_remote_workdir(workdir, job=job)
        except wd.WorkdirError as e:
            raise SystemExit(str(e)) from None
    workdir = os.path.abspath(wd.local_path(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_check_"):
            pass
    except OSError as e:
        raise SystemExit(f"workdir {workdir!r} is not writable ({e.strerror}); choose another --workdir") from None
    return workdir


def _say(message: str) -> None:
    import jax

    if jax.process_index() == 0:
        print(message, flush=True)


def run(config, workdir: str):
    """Run ``config.job`` in ``workdir``; returns whatever the job returns (e.g. final metrics)."""
    try:
        wd.check_paths(config, workdir)
    except wd.WorkdirError as e:
        raise SystemExit(str(e)) from None
    workdir = prepare_workdir(workdir, job=config.get("job", "train"))
    mc.write_config(config, workdir)
    mesh = sharding.make_mesh(config.mesh)
    _say(f"workdir {workdir}; mesh {dict(mesh.shape)} over {mesh.size} devices; "
         f"sharding rules {config.sharding.rules!r}")
    job = registry.get("job", config.job)
    return job(config, workdir=workdir, mesh=mesh)


def _main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and grain are chatty at INFO; -v 0 restores it
    from mathvlm import distributed  # imports jax: after the config checks, before any device use

    joined = distributed.initialize_from_env()
    run(_CONFIG.value, _WORKDIR.value)
    if joined:
        distributed.shutdown()


def cli(argv=None):
    argv = list(sys.argv if argv is None else argv)
    mc.main_guard(argv)  # unknown key / wrong type → one clear line, before absl or jax start
    app.run(_main, argv=argv)


if __name__ == "__main__":
    cli()
