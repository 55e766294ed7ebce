"""The floor under the Docker backend: raw docker-py and jupyter_client, no framework. Prints figures.

    python benchmarks/docker_floor.py [--runtime runsc] [--starts 5] [--cells 200]

A container with the same hardening as a box runs ``ipykernel`` on ipc transport in a bind-mounted
folder and jupyter_client on the host drives it directly. The framework's own figures
(benchmarks/sandbox_micro.py --backend docker) are judged against these, measured at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import tempfile
import time
from typing import Any

from jupyter_client import BlockingKernelClient

from sandboxes.backends.docker.engine import engine_client
from sandboxes.backends.docker.image_check import DEFAULT_IMAGE


def start_kernel(client: Any, folder: str, runtime: str | None) -> tuple[Any, BlockingKernelClient]:
    info = {"transport": "ipc", "ip": "/run/k/k", "key": secrets.token_hex(16), "signature_scheme": "hmac-sha256",
            "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}
    with open(os.path.join(folder, "kernel.json"), "w") as f:
        json.dump(info, f)
    os.chmod(folder, 0o777)
    container = client.containers.run(
        DEFAULT_IMAGE, ["/opt/kernel/bin/python", "-m", "ipykernel_launcher", "-f", "/run/k/kernel.json"],
        detach=True, network_mode="none", read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        user="10001:10001", pids_limit=256, mem_limit="1g", memswap_limit="1g", nano_cpus=1_000_000_000,
        tmpfs={"/tmp": "size=64m", "/home/sandbox": "size=256m,uid=10001"}, init=True, runtime=runtime,
        volumes={folder: {"bind": "/run/k", "mode": "rw"}}, labels={"org.rlm-sandboxes.floor": "1"})
    host_info = dict(info, ip=os.path.join(folder, "k"))
    kc = BlockingKernelClient()
    kc.load_connection_info(host_info)
    kc.start_channels(hb=False)
    return container, kc


def run_cell(kc: BlockingKernelClient, code: str) -> None:
    msg_id = kc.execute(code)
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status" \
                and msg["content"]["execution_state"] == "idle":
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=["runc", "runsc"], default="runc")
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--cells", type=int, default=200)
    args = parser.parse_args()
    runtime = None if args.runtime == "runc" else args.runtime
    client = engine_client()
    starts, cells = [], []
    for i in range(args.starts):
        folder = tempfile.mkdtemp(prefix="rlm-floor-")
        t = time.perf_counter()
        container, kc = start_kernel(client, folder, runtime)
        try:
            kc.wait_for_ready(timeout=60)
            run_cell(kc, "1")
            starts.append(time.perf_counter() - t)
            if i == 0:
                for _ in range(args.cells):
                    c = time.perf_counter()
                    run_cell(kc, "1")
                    cells.append(time.perf_counter() - c)
        finally:
            kc.stop_channels()
            container.remove(force=True)
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({"runtime": args.runtime, "floor_cold_start_p50_s": round(statistics.median(starts), 3),
                      "floor_trivial_cell_p50_ms": round(statistics.median(cells) * 1000, 2)}, indent=2))


if __name__ == "__main__":
    main()
