"""The one way this repository starts TorchServe 0.12: configuration, processes, keys, models (stdlib only).

scripts/serve.sh, stop.sh and register.sh (through scripts/torchserve_ctl.py), the test harness and the
benchmarks all go through this package. Standard library only, so it runs before anything but Python is
installed (starting TorchServe needs the ``ts`` package in the Python given as ``python``).

One job a module:
  config     the base config.properties + overlays + overrides, rendered (render_config)
  memory     the frontend's JVM memory from the limits and the workers/batch size it serves
  workers    ``--workers auto``'s policy and the workers' GPUs
  rest       key_file.json and one HTTP call
  processes  TorchServe's pid file and process tree (/proc)
  java       finding a Java >= 11
  logs       what the logs say when something failed
  registrar  registering, scaling, waiting for READY workers
  mps        a CUDA MPS daemon for the workers
  names      what a model name may be (before it becomes a path or a config line)
  balancer   nginx in front of one TorchServe per GPU: the plan, its configuration, its process
  fleet      one TorchServe per GPU behind nginx, started and stopped together
  server     a running TorchServe as an object
  lifecycle  start / stop / running
  cli        the command line (scripts/torchserve_ctl.py)

Python API::

    from scripts import launcher

    overrides = {**launcher.port_overrides(launcher.free_ports(5)), "model_store": str(store)}
    with launcher.running(workdir, overrides=overrides, log_dir=workdir / "logs", tmpdir=workdir / "tmp") as ts:
        ts.register("demo", workers=1)  # waits until the worker is READY
        print(ts.call("POST", "/predictions/demo", {"inputs": ["", "hello"]}).body)
"""

from scripts.launcher.config import (
    BASE_CONFIG,
    PORT_NAMES,
    REPO_ROOT,
    base_url,
    effective_config,
    env_overrides,
    free_ports,
    port_overrides,
    read_overlays,
    read_properties,
    render_config,
)
from scripts.launcher.errors import CtlError, ServerDown
from scripts.launcher.java import find_java
from scripts.launcher.lifecycle import running, start, stop, wait_until_up
from scripts.launcher.memory import RECOMMENDED_MAX, Capacity, vmargs
from scripts.launcher.processes import process_alive, running_pid, stop_process_tree
from scripts.launcher.registrar import Registrar, find_archive, register
from scripts.launcher.rest import Keys, Response, read_keys, request
from scripts.launcher.server import Server
from scripts.launcher.workers import auto_workers, gpu_assignment, visible_gpus, worker_count, workers_arg

__all__ = [
    "BASE_CONFIG", "PORT_NAMES", "RECOMMENDED_MAX", "REPO_ROOT", "Capacity", "CtlError", "Keys", "Registrar",
    "Response", "Server", "ServerDown", "auto_workers", "base_url", "effective_config", "env_overrides",
    "find_archive", "find_java", "free_ports", "gpu_assignment", "port_overrides", "process_alive",
    "read_keys", "read_overlays", "read_properties", "register", "render_config", "request", "running",
    "running_pid", "start", "stop", "stop_process_tree", "visible_gpus", "vmargs", "wait_until_up",
    "worker_count", "workers_arg",
]
