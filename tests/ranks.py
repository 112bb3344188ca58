"""Running a test's worker in several CPU processes (gloo), bounded in time: a rank that hangs
fails the test instead of blocking the suite. The worker takes (rank, world, port, *args)."""

import socket
import time

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker, *args, world: int = 2, timeout_s: float = 240, what: str = "the ranks") -> None:
    """Start `world` processes of `worker(rank, world, port, *args)` and wait for them all; kill
    them and fail the test if they have not finished within `timeout_s` seconds."""
    context = mp.start_processes(worker, args=(world, free_port(), *args), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"{what} did not finish within {timeout_s:.0f} s")
