"""Run a recipe on every worker of a Cloud TPU pod slice (TPU VMs), from a config and a topology:

    python launch/tpu_pod.py --config configs/math_puma/kl_align.py:size=7b,hf=/ckpt/puma-qwen2-7b \\
        --topology v5p-128 --tpu-name my-pod --zone us-east5-a --workdir gs://my-bucket/runs/puma2_7b \\
        --config.mesh.data=1 --config.mesh.fsdp=-1 --dry-run

It checks on this machine, before any TPU time is spent, that the topology exists, that the config
loads with its ``--config.*`` overrides, that its mesh fits the slice's chips and that
``data.batch_size`` divides over the mesh's batch shards and the slice's hosts; then it builds (and,
without ``--dry-run``, runs) one ``gcloud compute tpus tpu-vm ssh NAME --worker=all --command ...``.
The command, on every worker: get the code (``git clone`` / ``pull`` of ``--repo-url``, or a checkout
already copied there), set up ``.venv-tpu`` from ``requirements-tpu.txt`` (jax with libtpu), export
``MATHVLM_DISTRIBUTED=auto`` (``mathvlm/distributed.py``: ``jax.distributed.initialize()`` reads the
slice from the TPU metadata, one process per host) and run ``python -m mathvlm.main``. Nothing here
touches the network except the gcloud command it runs.

``--workdir`` must be storage every worker reaches: ``gs://BUCKET/PATH`` (orbax writes the checkpoints
there directly; metrics and TensorBoard events are mirrored to it, see mathvlm/train/metrics.py) or a
directory all workers mount (NFS, gcsfuse).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
# Appended, not prepended: launch/multiprocess.py must not shadow the PyPI package of that name.
if HERE not in sys.path:
    sys.path.append(HERE)

import tpu_topology  # launch/ is not a package: scripts import their neighbours

# jax 0.10 needs Python ≥ 3.11; TPU-VM images ship Ubuntu 22.04 (Python 3.10), whose apt has 3.11.
PYTHON = "python3.11"
REPO_DIR = "$HOME/mathvlm"  # left to the worker's shell: each worker's own home


class LaunchError(ValueError):
    """A launch that would fail on the pod; the message says what to change (exit code 2)."""


def _stage_configs(config, spec: str):
    """A chain job's stage configs (each stage trains with its own batch and mesh)."""
    from mathvlm import config as mc

    base = config.get("config_dir", "") or os.path.dirname(os.path.abspath(mc.split_spec(spec)[0]))
    for stage in config.stages:
        path, arg = mc.split_spec(stage["config"])
        path = path if os.path.isabs(path) else os.path.join(base, path)
        yield stage["name"], mc.load(path if arg is None else f"{path}:{arg}")


def check_batch(config, topology, what: str) -> dict:
    """The mesh the config gets on the slice; raises LaunchError when the config's mesh or batch does
    not fit the slice's chips and hosts."""
    from mathvlm import sharding

    try:
        sizes = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(config.mesh, topology.chips)))
    except ValueError as e:
        raise LaunchError(f"{what}: {e} (topology {topology.describe()}); change --config.mesh.*")
    batch = config.data.batch_size
    shards = sizes["data"] * sizes["fsdp"]
    if batch % shards:
        raise LaunchError(f"{what}: data.batch_size={batch} does not divide over the {shards} batch shards "
                          f"(data × fsdp) of mesh {sizes} on {topology.describe()}; use a multiple of "
                          f"{shards} (--config.data.batch_size) or move chips to mesh.tensor")
    if batch % topology.hosts:
        raise LaunchError(f"{what}: data.batch_size={batch} does not divide over the {topology.hosts} hosts "
                          f"(one process each) of {topology.describe()}; use a multiple of {topology.hosts}")
    return sizes


def validate(spec: str, overrides: list[str], topology_name: str):
    """``(config, topology, mesh sizes)`` after every check; LaunchError names the first problem."""
    from mathvlm import config as mc

    try:
        topology = tpu_topology.parse(topology_name)
    except tpu_topology.TopologyError as e:
        raise LaunchError(str(e))
    try:
        config = mc.preflight(["main", f"--config={spec}", *overrides])
    except mc.ConfigError as e:
        raise LaunchError(f"config error: {e}")
    if config.job == "chain":
        try:
            for name, stage in _stage_configs(config, spec):
                check_batch(stage, topology, f"stage {name!r} ({stage.name})")
        except mc.ConfigError as e:
            raise LaunchError(f"config error in a stage of {spec}: {e}")
        return config, topology, None
    return config, topology, check_batch(config, topology, spec)


def remote_command(spec: str, overrides: list[str], workdir: str, *, repo_url: str = "", ref: str = "",
                   repo_dir: str = REPO_DIR, python: str = PYTHON, env: list[str] = ()) -> str:
    """The shell command every worker runs (one string for ``gcloud ... --command``)."""
    q = shlex.quote
    steps = []
    if repo_url:
        clone = f"git clone -q {q(repo_url)} {repo_dir}"
        update = f"git -C {repo_dir} pull -q --ff-only"
        if ref:
            clone += f" && git -C {repo_dir} checkout -q {q(ref)}"
            update = f"git -C {repo_dir} fetch -q origin && git -C {repo_dir} checkout -q {q(ref)}"
        steps.append(f"if [ -d {repo_dir}/.git ]; then {update}; else {clone}; fi")
    else:
        # The code was copied beforehand (see --help): fail early and say how, not in pip or python.
        steps.append(f"[ -f {repo_dir}/requirements-tpu.txt ] || {{ echo 'no mathvlm checkout at "
                     f"'{repo_dir}' on this worker: copy it first (gcloud compute tpus tpu-vm scp "
                     f"--recurse --worker=all) or pass --repo-url' >&2; exit 1; }}")
    steps += [
        f"cd {repo_dir}",
        (f"command -v {python} >/dev/null || {{ sudo apt-get update -qq && sudo apt-get install -y -qq "
         f"{python} {python}-venv; }}"),
        f"{python} -m venv .venv-tpu",
        ".venv-tpu/bin/pip install -q -r requirements-tpu.txt",
        # One process per host; jax.distributed.initialize() reads the slice from the TPU metadata.
        "export MATHVLM_DISTRIBUTED=auto",
    ]
    steps += [f"export {item.partition('=')[0]}={q(item.partition('=')[2])}" for item in env]
    main = [".venv-tpu/bin/python", "-m", "mathvlm.main", f"--config={spec}", *overrides,
            f"--workdir={workdir}"]
    steps.append(" ".join(q(a) for a in main))
    # set -e: any failing step stops this worker (and gcloud reports it), the `||` fallbacks excepted.
    return "; ".join(["set -e", *steps])


def gcloud_command(tpu_name: str, zone: str, remote: str, project: str = "") -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu_name, "--zone", zone, "--worker=all"]
    if project:
        cmd += ["--project", project]
    return cmd + ["--command", remote]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                     epilog="Other arguments must be --config.KEY=VALUE overrides; they "
                                            "are checked here and passed on to mathvlm.main.")
    parser.add_argument("--config", required=True, help="configs/<recipe>.py[:arg]")
    parser.add_argument("--topology", required=True, help=tpu_topology.EXAMPLES)
    parser.add_argument("--tpu-name", required=True, help="the TPU VM (queued resource) name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default="", help="gcloud project (default: gcloud's own)")
    parser.add_argument("--workdir", default="",
                        help="run directory on the workers (default runs/<recipe>); it must be storage "
                             "every worker shares so checkpoints are whole: gs://BUCKET/PATH, or a "
                             "directory all workers mount (NFS, gcsfuse)")
    parser.add_argument("--repo-url", default="", help="git URL each worker clones / updates")
    parser.add_argument("--ref", default="", help="commit or branch to check out (with --repo-url)")
    parser.add_argument("--repo-dir", default=REPO_DIR, help="checkout location on the workers")
    parser.add_argument("--python", default=PYTHON, help="interpreter for .venv-tpu on the workers")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment on the workers, e.g. LIBTPU_INIT_ARGS=...")
    parser.add_argument("--dry-run", action="store_true", help="print the gcloud command, run nothing")
    args, overrides = parser.parse_known_args(argv)
    unknown = [a for a in overrides if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised arguments {unknown}: only --config.KEY=VALUE overrides pass through")
    bad_env = [item for item in args.env if "=" not in item or not item.partition("=")[0].isidentifier()]
    if bad_env:
        parser.error(f"--env {bad_env}: give NAME=VALUE")

    config, topology, mesh = validate(args.config, overrides, args.topology)
    from mathvlm import config as mc
    from mathvlm import workdir as wd

    try:  # a gs:// workdir: its scheme, bucket name and the job (the workers check the rest)
        args.workdir = wd.check_paths(config, args.workdir or None) or ""
    except wd.WorkdirError as e:
        raise LaunchError(str(e))

    # Default: runs/<recipe path under configs/ with "_" for "/">, relative to the checkout.
    recipe = os.path.splitext(os.path.relpath(mc.split_spec(args.config)[0], "configs"))[0]
    if recipe.startswith(".."):
        recipe = os.path.basename(recipe)
    workdir = args.workdir or os.path.join("runs", recipe.replace(os.sep, "_"))
    remote = remote_command(args.config, overrides, workdir, repo_url=args.repo_url, ref=args.ref,
                            repo_dir=args.repo_dir, python=args.python, env=args.env)
    cmd = gcloud_command(args.tpu_name, args.zone, remote, args.project)
    print(f"# {config.name} on {topology.describe()}"
          + (f"; mesh {mesh}, global batch {config.data.batch_size}" if mesh else ""), file=sys.stderr)
    if topology.hosts > 1 and not args.workdir:
        print(f"# warning: workdir {workdir} is each worker's own disk; multi-host checkpoints need "
              "storage all workers share (--workdir gs://BUCKET/PATH, or an NFS / gcsfuse mount)",
              file=sys.stderr)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    try:
        return subprocess.run(cmd, check=False).returncode
    except FileNotFoundError:
        raise LaunchError("gcloud not found on PATH: install the Google Cloud CLI, or use --dry-run and "
                          "run the printed command where gcloud is") from None


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LaunchError as e:
        print(f"tpu_pod: error: {e}", file=sys.stderr)
        sys.exit(2)
