"""Run one test function on N gloo processes on localhost and collect every rank's result.

`run_distributed(fn, world_size, *args)` starts N processes (forkserver, torch preloaded,
so a start costs well under a second), sets the torchrun variables on a free port,
calls `init_distributed`, runs `fn(*args)` and returns the list of per-rank results. Any
rank's exception fails the test with every failing rank's traceback; a run that
outlives `timeout` has each live rank dump its Python stacks to stderr (SIGUSR1 via
faulthandler), is killed, and is reported with the ranks that never answered.
"""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import pickle
import queue
import signal
import time
import traceback
from typing import Any, Callable

_CONTEXT = mp.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["torch", "torch.distributed", "zerospeed"])


def _free_port() -> int:
    from zerospeed.comm.ports import free_port

    return free_port()


def _child(fn, args, rank, world_size, port, comm_timeout, results, env) -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ZEROSPEED_COMM_TIMEOUT=str(comm_timeout),
        OMP_NUM_THREADS="1",
    )
    try:
        import torch

        torch.set_num_threads(1)
        import zerospeed.comm as comm

        comm.init_distributed(dist_backend="gloo")
        result = fn(*args)
        # Plain pickle bytes: torch's queue pickler would share tensors through file
        # descriptors that die with this process before the parent reads them.
        results.put((rank, "ok", pickle.dumps(result)))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            import zerospeed.comm as comm

            comm.destroy_process_group()
        except Exception:  # noqa: BLE001 - the process is ending anyway
            pass


class DistributedTestError(AssertionError):
    pass


def _dump_stacks_of_live(procs: list) -> None:
    """Ask every rank still running to print its Python stacks (the hang's clue) to stderr."""
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            try:
                os.kill(proc.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
    time.sleep(0.5)  # let the dumps reach stderr before the kill; no rank is waited on


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    comm_timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run `fn(*args)` on `world_size` ranks; return results ordered by rank."""
    results = _CONTEXT.Queue()
    port = _free_port()
    procs = [
        _CONTEXT.Process(
            target=_child, args=(fn, args, rank, world_size, port, comm_timeout, results, env or {}), daemon=True
        )
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    outcomes: dict[int, tuple[str, Any]] = {}
    try:
        deadline = time.monotonic() + timeout
        while len(outcomes) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                rank, status, value = results.get(timeout=min(remaining, 1.0))
                outcomes[rank] = (status, value)
            except queue.Empty:
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead and len(outcomes) + len(dead) >= world_size and results.empty():
                    break
    finally:
        if len(outcomes) < world_size:
            _dump_stacks_of_live(procs)
            for rank, proc in enumerate(procs):
                if rank not in outcomes and proc.is_alive():
                    proc.kill()  # it never answered: no point waiting for a clean exit
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    errors = [f"--- rank {r} ---\n{v}" for r, (s, v) in sorted(outcomes.items()) if s == "error"]
    missing = [r for r in range(world_size) if r not in outcomes]
    if errors or missing:
        lines = []
        if missing:
            lines.append(f"ranks {missing} did not answer within {timeout}s (exit codes {[p.exitcode for p in procs]})")
        lines.extend(errors)
        raise DistributedTestError("\n".join(lines))
    return [pickle.loads(outcomes[r][1]) for r in range(world_size)]
