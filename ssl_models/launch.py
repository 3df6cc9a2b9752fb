"""Starting data-parallel training: ``launch`` runs one function in every process.

``launch(fn, processes, *args)`` runs ``fn(rank, world_size, *args)`` in ``processes``
local processes the way torchrun does (MASTER_ADDR/MASTER_PORT on a free port, RANK,
WORLD_SIZE, LOCAL_RANK), one process group each (nccl on CUDA, else gloo). When the
process is already under torchrun (``already_launched()``), it joins that process group
and runs ``fn`` in this process instead of spawning again; so one stage works both from
``sslpipe run`` and from ``torchrun --nnodes=2 ... -m flows.cli pretrain``. A worker that
fails stops the others and is raised here as ``WorkerFailed``.

What runs inside the processes (gathering, SyncBN, DDP) is :mod:`ssl_models.distributed`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class WorkerFailed(RuntimeError):
    """A worker process raised or died; the message names the rank and its error."""


def already_launched() -> bool:
    """True under torchrun (or a worker of ``launch``): RANK and WORLD_SIZE are set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_processes(processes: int | str) -> int:
    """``auto`` -> one process per visible GPU (1 without GPUs); an int is checked."""
    if processes == "auto":
        return max(1, torch.cuda.device_count())
    count = int(processes)
    if count < 1:
        raise ValueError(f"processes must be >= 1 or 'auto', got {processes!r}")
    return count


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend(device: str | torch.device | None = None) -> str:
    """NCCL when training on GPUs, gloo on the CPU (also on a GPU machine told device=cpu)."""
    on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return "nccl" if on_gpu else "gloo"


def _init_from_env(backend: str) -> None:
    """Join the process group described by the environment (torchrun's variables)."""
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this worker when the process that launched it dies (Linux). A worker that
    outlived a killed stage would go on training and writing the checkpoint while the same
    command, started again, resumes from it with workers of its own."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl: nobody would signal us
        os._exit(1)


def _worker(local_rank: int, world_size: int, port: int, result_dir: str, parent: int, backend: str, fn: Callable, args: tuple) -> None:
    _die_with_parent(parent)
    # What torchrun would have set for this process.
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank)
    )
    if backend == "gloo" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # the ranks share the cores
    _init_from_env(backend)
    try:
        result = fn(local_rank, world_size, *args)
        torch.save(result, Path(result_dir) / f"rank{local_rank}.pt")
    except BaseException as error:
        # When one rank fails, its peers fail too, inside their next collective; the
        # time tells launch() which error came first, the cause rather than an echo.
        (Path(result_dir) / f"rank{local_rank}.error").write_text(f"{time.time()!r}\n{traceback.format_exc()}")
        with contextlib.suppress(Exception):  # the exception itself, for launch(expected=...)
            (Path(result_dir) / f"rank{local_rank}.exception").write_bytes(pickle.dumps(error))
        raise
    finally:
        dist.destroy_process_group()


def _raised(result_dir: str, rank: int) -> BaseException | None:
    """The exception worker ``rank`` raised, if it could be pickled."""
    path = Path(result_dir) / f"rank{rank}.exception"
    try:
        return pickle.loads(path.read_bytes())
    except Exception:  # noqa: BLE001 - absent, or it cannot be unpickled: the traceback text remains
        return None


def _first_error(result_dir: str) -> tuple[int, str] | None:
    """(rank, traceback) of the worker that failed first, if any wrote one."""
    errors = []
    for path in Path(result_dir).glob("rank*.error"):
        when, text = path.read_text().split("\n", 1)
        errors.append((float(when), int(path.stem.removeprefix("rank")), text))
    return min(errors)[1:] if errors else None


def launch(
    fn: Callable[..., Any],
    processes: int | str,
    *args: Any,
    expected: tuple[type[BaseException], ...] = (),
    device: str | torch.device | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` data-parallel; return the results by rank.

    - Under torchrun (``already_launched()``): join its process group, run ``fn`` here
      and return ``[this rank's result]``; ``processes`` is torchrun's business.
    - With one process: run ``fn(0, 1, *args)`` here, no process group.
    - Else spawn ``processes`` local workers (``fn`` and ``args`` must pickle: a
      module-level function), wait for all, and return their results.

    A worker's exception stops the other workers (none is left running) and is raised
    as ``WorkerFailed`` with the worker's rank and traceback; one of the ``expected``
    types (a fault whose message says it all, e.g. a diverged loss) is raised as it is.
    ``device`` (where ``fn`` trains) picks the backend: NCCL for CUDA, gloo otherwise;
    None: CUDA when there is a GPU.
    """
    backend = _backend(device)
    if already_launched():
        joined = not dist.is_initialized()
        if joined:
            _init_from_env(backend)
        try:
            return [fn(dist.get_rank(), dist.get_world_size(), *args)]
        finally:
            if joined:
                dist.destroy_process_group()
    count = resolve_processes(processes)
    if count == 1:
        return [fn(0, 1, *args)]
    if backend == "nccl" and count > torch.cuda.device_count():
        raise ValueError(f"processes={count} but only {torch.cuda.device_count()} GPU(s) are visible")
    with tempfile.TemporaryDirectory(prefix="sslpipe-launch-") as result_dir:
        try:
            # join=True: on the first failure the other workers are terminated and joined.
            mp.spawn(_worker, args=(count, _free_port(), result_dir, os.getpid(), backend, fn, args), nprocs=count, join=True)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
            first = _first_error(result_dir)
            if first is not None:
                raised = _raised(result_dir, first[0])
                if isinstance(raised, expected):
                    raise raised from None
                raise WorkerFailed(f"worker rank {first[0]} of {count} failed (the others were stopped):\n{first[1].strip()}") from None
            reason = error.msg.strip() if isinstance(error, mp.ProcessRaisedException) else f"died with exit code {error.exit_code}"
            raise WorkerFailed(f"worker rank {error.error_index} of {count} failed (the others were stopped): {reason}") from None
        return [torch.load(Path(result_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(count)]


__all__ = ["WorkerFailed", "already_launched", "launch", "resolve_processes"]
