"""Two CPU processes for the tests that need a real process group (gloo)."""

from __future__ import annotations

import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, port: int, function, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        function(rank, *args)
    finally:
        dist.destroy_process_group()


def run_on_two_ranks(function, *args) -> None:
    """`function(rank, *args)` in two spawned processes joined in one gloo group (a module-level function: it is
    pickled by name)."""
    mp.spawn(_rank_main, args=(free_port(), function, args), nprocs=2, join=True)
