"""Ray as the executor of independent work items (benchmark cells): one Ray task per item, with
declared resources, retried by Ray when its worker dies, results streamed back as they finish.

This module knows nothing of cells: the caller passes a module-level function (Ray ships it by
reference, so every worker must have veil installed) and its argument tuples. Ray is an optional
extra (``pip install 'veil[ray]'``); without ``--ray`` nothing here imports it.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KILL_HOOK = "VEIL_TEST_KILL_WHEN"
"""Test-only: ``FILE:MARKER``. A task whose worker sees FILE appear while MARKER is absent creates
MARKER and exits at once (``os._exit``), as a crashed or preempted worker would: exactly once."""


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cells run: in this process (``address`` None), or as Ray tasks on a cluster.

    Args:
        address: ``auto`` (the cluster this machine belongs to, or ``$RAY_ADDRESS``), ``HOST:PORT``
            of a head node, ``ray://HOST:PORT`` (Ray Client), or ``local`` (a new cluster on this
            machine, for the length of the command); None: in-process, as without Ray.
        gpus: GPUs each task asks for (fractions share one); None: 1 when the device is CUDA, else 0.
        max_retries: times Ray reruns a task whose worker died (a crash, an out-of-memory kill, a
            preempted node); an exception raised by the cell itself is not retried.
        storage: where Ray Tune keeps population members' checkpoints (``veil learn-schedule``'s
            PBT only): a folder every node sees (NFS) or a cloud URI (``s3://...``); None: a
            temporary folder on this machine, right for a cluster of one machine.
    """

    address: str | None = None
    gpus: float | None = None
    max_retries: int = 3
    storage: str | None = None

    def __post_init__(self) -> None:
        if self.gpus is not None and self.gpus < 0:
            raise ValueError(f"--ray-gpus must be >= 0, got {self.gpus}")
        if self.max_retries < 0:
            raise ValueError(f"--ray-retries must be >= 0, got {self.max_retries}")

    def task_gpus(self, device: str) -> float:
        """GPUs per task: the given number, else one for a CUDA device and none otherwise."""
        if self.gpus is not None:
            return self.gpus
        return 1.0 if str(device).startswith("cuda") else 0.0


def ray_module() -> Any:
    """Ray, or a one-line error saying how to install it (Ray is an optional extra)."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ValueError("--ray needs Ray, which is not installed: pip install 'veil[ray]'") from None


def worker_env() -> dict[str, str]:
    """The driver's ``VEIL_*`` variables (cache, data root, tracking URI), passed to every task so a
    worker reads the same data root and cache as the command line that started the benchmark."""
    return {k: v for k, v in os.environ.items() if k.startswith("VEIL_")}


def _die_when(spec: str) -> None:
    """The ``KILL_HOOK``: watch for FILE in a thread and exit the worker once it appears."""
    path, marker = (Path(p) for p in spec.split(":", 1))
    if marker.exists():
        return

    def watch() -> None:
        while not path.exists():
            time.sleep(0.005)
        marker.touch()
        os._exit(137)

    threading.Thread(target=watch, daemon=True).start()


def _task(fn: Callable[..., Any], call: tuple[Any, ...], *shared: Any) -> Any:
    """What a Ray task runs: ``fn(*shared, *call)`` (with the test-only kill hook when asked)."""
    if os.environ.get(KILL_HOOK):
        _die_when(os.environ[KILL_HOOK])
    return fn(*shared, *call)


def run_tasks(fn: Callable[..., Any], calls: list[tuple[Any, ...]], config: ClusterConfig, cpus: float,
              gpus: float = 0.0, shared: tuple[Any, ...] = ()) -> Iterator[tuple[int, Any]]:
    """Run ``fn(*shared, *call)`` for every call as a Ray task asking for ``cpus`` CPUs and ``gpus``
    GPUs, retried ``config.max_retries`` times on a worker's death; yield ``(index, result)`` as
    each finishes (``shared``, e.g. a model, goes to the object store once). Connects to the
    cluster at ``config.address`` (and disconnects after, if it connected); the first exception a
    task raised is raised here once every task has ended."""
    ray = ray_module()
    connected = not ray.is_initialized()
    if connected:
        ray.init(address=config.address, runtime_env={"env_vars": worker_env()}, log_to_driver=True,
                 logging_level="WARNING")
    try:
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=config.max_retries,
                            retry_exceptions=False)(_task)
        fn_ref, shared_refs = ray.put(fn), [ray.put(obj) for obj in shared]
        pending = {remote.remote(fn_ref, call, *shared_refs): i for i, call in enumerate(calls)}
        failed: BaseException | None = None
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:  # the cell's own error: report it as the cell raised it
                    failed = failed or err.as_instanceof_cause()
                    continue
                yield index, result
        if failed is not None:
            raise failed
    finally:
        if connected:
            ray.shutdown()
