"""launch/tpu_pod.py and launch/tpu_topology.py: topology names, the checks made before any TPU time is
spent, and the gcloud command (printed with --dry-run, never run: no network in tests)."""

import importlib.util
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"launch_{name}", os.path.join(ROOT, "launch", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


topo = _load("tpu_topology")
tpu_pod = _load("tpu_pod")

PUMA_7B = "configs/math_puma/kl_align.py:size=7b,hf=/ckpt/puma-qwen2-7b"   # global batch 128
MAVIS_7B = "configs/mavis/instruct.py:size=7b,hf=/ckpt/mavis-7b"          # global batch 32


@pytest.mark.parametrize("name, chips, jax_name, cloud_name, hosts", [
    ("v5p-128", 64, "v5:4x4x4", "v5p-128", 16),
    ("v5p-8", 4, "v5:2x2x1", "v5p-8", 1),
    ("v5p-256", 128, "v5:4x4x8", "v5p-256", 32),
    ("v5litepod-16", 16, "v5e:4x4", "v5litepod-16", 4),
    ("v5e-8", 8, "v5e:2x4", "v5litepod-8", 1),
    ("v6e-256", 256, "v6e:16x16", "v6e-256", 64),
    ("v4-32", 16, "v4:2x2x4", "v4-32", 4),
    ("v5e:2x2", 4, "v5e:2x2", "v5litepod-4", 1),
    ("v5:4x4x4", 64, "v5:4x4x4", "v5p-128", 16),
    ("V5P:2x2x2", 8, "v5:2x2x2", "v5p-16", 2),
])
def test_topology_names(name, chips, jax_name, cloud_name, hosts):
    t = topo.parse(name)
    assert (t.chips, t.jax_name, t.cloud_name, t.hosts) == (chips, jax_name, cloud_name, hosts)


@pytest.mark.parametrize("name, says", [
    ("v7x-8", "unknown TPU generation 'v7x'"),
    ("v5p-7", "N must be even"),
    ("v5p-24", "power-of-two number of chips"),
    ("v5litepod-12", "not 12"),
    ("v5e:2x2x2", "2-D torus"),
    ("v5:4x4", "3-D torus"),
    ("tpu", "neither a Cloud TPU accelerator type nor a JAX topology name"),
])
def test_bad_topology_names_say_what_is_valid(name, says):
    with pytest.raises(topo.TopologyError) as info:
        topo.parse(name)
    assert says in str(info.value)


def _dry_run(capsys, *args):
    assert tpu_pod.main([*args, "--dry-run"]) == 0
    out = capsys.readouterr()
    return shlex.split(out.out), out.err


def test_dry_run_prints_the_worker_all_command_with_env_and_main(capsys):
    cmd, err = _dry_run(capsys, "--config", PUMA_7B, "--topology", "v5p-128", "--tpu-name", "pod-a",
                        "--zone", "us-east5-a", "--project", "proj", "--workdir", "/mnt/runs/puma2",
                        "--repo-url", "https://example.invalid/mathvlm.git", "--ref", "abc123",
                        "--env", "LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true",
                        "--config.mesh.data=1", "--config.mesh.fsdp=-1")
    assert cmd[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-a", "--zone", "us-east5-a",
                       "--worker=all"]
    assert cmd[9:11] == ["--project", "proj"] and cmd[11] == "--command" and len(cmd) == 13
    remote = cmd[12]
    steps = [s.strip() for s in remote.split("; ")]
    # The code, then the TPU environment, then the distributed environment, then the run.
    assert "git clone -q https://example.invalid/mathvlm.git $HOME/mathvlm" in remote
    assert "checkout -q abc123" in remote
    install = next(i for i, s in enumerate(steps) if s == ".venv-tpu/bin/pip install -q -r requirements-tpu.txt")
    env = steps.index("export MATHVLM_DISTRIBUTED=auto")
    extra = steps.index("export LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true")
    main = shlex.split(steps[-1])
    assert install < env < extra < len(steps) - 1
    assert main == [".venv-tpu/bin/python", "-m", "mathvlm.main", f"--config={PUMA_7B}",
                    "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--workdir=/mnt/runs/puma2"]
    # What the workers get is one valid shell script (parsed, not run).
    assert subprocess.run(["bash", "-n", "-c", remote], check=False).returncode == 0
    assert "v5p-128 = v5:4x4x4: 64 chips on 16 host(s)" in err
    assert "'data': 1, 'fsdp': 64, 'tensor': 1" in err


def test_dry_run_with_a_jax_topology_name_and_a_copied_checkout(capsys):
    cmd, err = _dry_run(capsys, "--config", MAVIS_7B, "--topology", "v5e:4x4", "--tpu-name", "t",
                        "--zone", "z", "--config.mesh.data=1", "--config.mesh.fsdp=-1")
    remote = cmd[cmd.index("--command") + 1]
    assert "--project" not in cmd and "git clone" not in remote
    assert "[ -f $HOME/mathvlm/requirements-tpu.txt ] ||" in remote      # says how to copy the code
    assert remote.endswith("--workdir=runs/mavis_instruct")
    assert "workdir runs/mavis_instruct is each worker's own disk" in err  # 4 hosts, no shared storage


def test_batch_that_does_not_divide_over_the_mesh_is_refused():
    # MAVIS 7B: global batch 32; the default mesh puts all 64 chips of v5p-128 on the data axis.
    with pytest.raises(tpu_pod.LaunchError) as info:
        tpu_pod.main(["--config", MAVIS_7B, "--topology", "v5p-128", "--tpu-name", "t", "--zone", "z",
                      "--dry-run"])
    assert "data.batch_size=32 does not divide over the 64 batch shards" in str(info.value)


def test_batch_that_does_not_divide_over_the_hosts_is_refused():
    with pytest.raises(tpu_pod.LaunchError) as info:
        tpu_pod.main(["--config", MAVIS_7B, "--topology", "v5litepod-16", "--tpu-name", "t", "--zone", "z",
                      "--config.mesh.data=1", "--config.mesh.fsdp=1", "--config.mesh.tensor=-1",
                      "--config.data.batch_size=6", "--dry-run"])
    assert "data.batch_size=6 does not divide over the 4 hosts" in str(info.value)


def test_mesh_that_does_not_fit_the_chips_is_refused():
    with pytest.raises(tpu_pod.LaunchError, match="mesh .* needs 32 devices, but 16 are available"):
        tpu_pod.main(["--config", MAVIS_7B, "--topology", "v6e-16", "--tpu-name", "t", "--zone", "z",
                      "--config.mesh.data=4", "--config.mesh.fsdp=8", "--dry-run"])


def test_config_errors_are_reported_before_any_launch():
    with pytest.raises(tpu_pod.LaunchError, match="unknown config key 'optim.lrr'"):
        tpu_pod.main(["--config", PUMA_7B, "--topology", "v5p-128", "--tpu-name", "t", "--zone", "z",
                      "--config.optim.lrr=1", "--dry-run"])
    with pytest.raises(tpu_pod.LaunchError, match="real sizes need hf="):
        tpu_pod.main(["--config", "configs/mavis/instruct.py:size=7b", "--topology", "v5p-128",
                      "--tpu-name", "t", "--zone", "z", "--dry-run"])


def test_chain_jobs_check_every_stage(capsys):
    cmd, _ = _dry_run(capsys, "--config", "configs/demo.py", "--topology", "v5litepod-4", "--tpu-name",
                        "t", "--zone", "z")
    assert "--config=configs/demo.py" in cmd[-1]
    with pytest.raises(tpu_pod.LaunchError, match="stage 'clip_math'"):
        tpu_pod.main(["--config", "configs/demo.py", "--topology", "v6e-256", "--tpu-name", "t",
                      "--zone", "z", "--dry-run"])


def test_cli_bad_topology_exits_2_with_a_clear_error_and_prints_no_command():
    proc = subprocess.run([sys.executable, "launch/tpu_pod.py", "--config", PUMA_7B, "--topology",
                           "v5p-100", "--tpu-name", "t", "--zone", "z", "--dry-run"],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "tpu_pod: error: topology 'v5p-100'" in proc.stderr
    assert "power-of-two number of chips" in proc.stderr


def test_shell_wrapper_dry_run():
    proc = subprocess.run(["bash", "launch/tpu_pod.sh", "pod-b", "europe-west4-b", "--topology",
                           "v5litepod-16", "--config", MAVIS_7B, "--workdir", "/mnt/x",
                           "--config.mesh.data=1", "--config.mesh.fsdp=-1"],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    cmd = shlex.split(proc.stdout)
    assert cmd[5:9] == ["pod-b", "--zone", "europe-west4-b", "--worker=all"]
    assert cmd[-1].endswith("--config.mesh.fsdp=-1 --workdir=/mnt/x")
