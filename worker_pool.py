"""Running many jobs at once: in spawned processes of a few torch threads each, or as Ray tasks on
one machine or a cluster. Ctrl-C, and SIGTERM turned into it (sigterm_as_interrupt), stop the
workers at once; what they finished stays. run.py and paper.py map their jobs through here.
"""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import sys

import torch


def _init_worker(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the parent's to handle: no tracebacks
    # pool.terminate()'s SIGTERM: exit through Python's cleanup, which hands back the semaphores this
    # worker made (tqdm's lock), instead of leaving the resource tracker to warn of them
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    # a worker already exiting (its one task done) must not raise SystemExit inside Python's exit
    # handlers when terminate()'s SIGTERM lands there: registered last, this runs first at exit
    atexit.register(signal.signal, signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(threads)


def _call_with_threads(function, item, threads: int):
    torch.set_num_threads(threads)
    return function(item)


def ray_map(function, items: list, threads: int, address: str | None = None, local_cpus: int = 1):
    """(item, function(item)) for every item, as Ray tasks of one CPU each, yielded as they finish;
    a task that fails yields its exception and the others go on. address None starts a local Ray
    with local_cpus CPUs; else it joins that cluster, whose nodes must see this repository and the
    output folder at the same paths (a shared filesystem)."""
    import ray    # optional: requirements-ray.txt
    root = os.path.dirname(os.path.abspath(__file__))
    ray.init(address=address, num_cpus=None if address else local_cpus, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": root}}, configure_logging=False)
    task = ray.remote(num_cpus=1, max_retries=0)(_call_with_threads)
    pending = {task.remote(function, item, threads): item for item in items}
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(ref)
            try:
                yield item, ray.get(ref)
            except ray.exceptions.RayError as error:
                yield item, error
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()


def pool_map(function, items: list, workers: int, threads: int, ordered: bool = True):
    """function(item) for every item in `workers` spawned processes of `threads` torch threads each,
    yielded in order (or as they finish). Ctrl-C terminates the workers at once."""
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (threads,), maxtasksperchild=1)
    try:
        yield from (pool.imap if ordered else pool.imap_unordered)(function, items)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main process where Ctrl-C raises KeyboardInterrupt."""


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)     # a second SIGTERM must not cut the workers' cleanup short
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within it, SIGTERM (kill, a scheduler's stop) raises Terminated in the main process as Ctrl-C
    raises KeyboardInterrupt, so that pool_map's cleanup ends the workers instead of orphaning them."""
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def stop_status(stop: KeyboardInterrupt) -> tuple[str, int]:
    """("terminated", 143) for SIGTERM, ("interrupted", 130) for Ctrl-C: the word and exit status."""
    return ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
