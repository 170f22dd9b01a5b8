"""Functions that the SLURM tests submit with submitit. They live in an importable module (not in the
test file) so the job process can unpickle them: it runs this repository's Python with the repository
root on PYTHONPATH (see tests/slurm_fixture.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def allreduce_rank_plus_one():
    """One task per node: gloo all_reduce of rank+1 -> (rank, world_size, node name, reduced sum)."""
    import submitit
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the emulated nodes all live on loopback
    dist.init_process_group("gloo")
    try:
        value = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(value)
        return env.rank, env.world_size, os.environ["SLURMD_NODENAME"], float(value.item())
    finally:
        dist.destroy_process_group()


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def run_twice(marker_dir: str, sleep_s: float = 300) -> dict:
    """First run: writes ``first`` and sleeps (to be requeued). Later run: writes ``second`` and returns."""
    folder = Path(marker_dir)
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    if not (folder / "first").exists():
        (folder / "first").write_text(f"{os.environ.get('SLURM_JOB_ID')} restart={restarts}\n")
        time.sleep(sleep_s)
        return {"run": "first", "restart_count": restarts}
    (folder / "second").write_text(f"{os.environ.get('SLURM_JOB_ID')} restart={restarts}\n")
    return {"run": "second", "restart_count": restarts}
