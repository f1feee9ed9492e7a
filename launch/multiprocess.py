"""Run N cooperating processes on this machine (gloo CPU collectives), e.g. to test multi-host code:

    python launch/multiprocess.py --processes 2 --local-devices 4 -- \
        -m mathvlm.main --config configs/text_demo.py --workdir runs/mp

Everything after ``--`` is passed to ``python`` in each process. Exits with the first non-zero code;
each process's output is prefixed with its index.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _relay(index: int, stream, sink) -> None:
    for line in iter(stream.readline, ""):
        sink.write(f"[{index}] {line}")
        sink.flush()


def launch(python_args: list[str], processes: int, local_devices: int | None = None,
           timeout: float | None = None, env: dict | None = None) -> int:
    """Start the processes, relay their output, and return the worst exit code."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs, relays = [], []
    for index in range(processes):
        proc_env = dict(os.environ if env is None else env)
        proc_env.update(MATHVLM_COORDINATOR=coordinator, MATHVLM_NUM_PROCESSES=str(processes),
                        MATHVLM_PROCESS_ID=str(index), JAX_PLATFORMS="cpu")
        if local_devices:
            proc_env["MATHVLM_LOCAL_DEVICES"] = str(local_devices)
            proc_env.pop("XLA_FLAGS", None)  # the per-process device count comes from the line above
        proc = subprocess.Popen([sys.executable, *python_args], env=proc_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        relay = threading.Thread(target=_relay, args=(index, proc.stdout, sys.stdout), daemon=True)
        relay.start()
        relays.append(relay)
    codes = []
    try:
        for proc in procs:
            codes.append(proc.wait(timeout=timeout))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        raise
    finally:
        for relay in relays:
            relay.join(timeout=5)
    return max(codes, key=abs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--local-devices", type=int, default=None,
                        help="fake CPU devices per process (default: jax's own count)")
    parser.add_argument("python_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    python_args = args.python_args[1:] if args.python_args[:1] == ["--"] else args.python_args
    if not python_args:
        parser.error("give the python arguments after --, e.g. -- -m mathvlm.main --config ...")
    sys.exit(launch(python_args, args.processes, args.local_devices))


if __name__ == "__main__":
    main()
