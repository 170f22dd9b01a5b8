"""The process: who it is in a distributed run (read once from the environment), the collectives every rank takes
part in, the CPU cores and threads it may use, and graceful-stop signals.

Logging and progress meters live in ``runlog.py``; checkpoint I/O in ``checkpoints.py``; FLOP counting in
``models/flops.py``.
"""
from __future__ import annotations

import copy
import datetime
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from errors import UserError

_logger = logging.getLogger('hornet')


# ---------------------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistState:
    """Who this process is. Built once by :func:`init_distributed`; everything else reads it from here."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_STATE = DistState()


def dist_state() -> DistState:
    return _STATE


def _env_int(*names: str) -> Optional[int]:
    for n in names:
        if os.environ.get(n, '') != '':
            return int(os.environ[n])
    return None


def init_distributed(device: str, dist_url: str = 'env://', world_size: int = 1, dist_on_itp: bool = False,
                     timeout_s: int = 1800) -> DistState:
    """Read rank/world/local rank from torchrun (RANK, WORLD_SIZE, LOCAL_RANK), OpenMPI (``--dist_on_itp``)
    or SLURM (SLURM_PROCID, ...), pick this process's device from its local rank, and start the process group
    (NCCL on CUDA, gloo on CPU). A single process with none of these set runs undistributed."""
    global _STATE
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(no_cuda_message(device))
    if device not in ('cpu', 'cuda') and not device.startswith('cuda:'):
        raise UserError(f"--device {device!r} is not supported; use cpu or cuda")
    if dist_on_itp:
        rank = _env_int('OMPI_COMM_WORLD_RANK')
        world = _env_int('OMPI_COMM_WORLD_SIZE')
        local = _env_int('OMPI_COMM_WORLD_LOCAL_RANK')
        if rank is None or world is None:
            raise UserError("--dist_on_itp true needs OMPI_COMM_WORLD_RANK/SIZE in the environment (run under mpirun)")
        os.environ.setdefault('RANK', str(rank))
        os.environ.setdefault('WORLD_SIZE', str(world))
        os.environ.setdefault('LOCAL_RANK', str(local or 0))
    elif _env_int('RANK') is not None and _env_int('WORLD_SIZE') is not None:
        rank, world = _env_int('RANK'), _env_int('WORLD_SIZE')
        local = _env_int('LOCAL_RANK')
        if local is None:
            local = rank % max(torch.cuda.device_count(), 1) if device.startswith('cuda') else 0
    elif _env_int('SLURM_PROCID') is not None and _env_int('SLURM_NTASKS', 'SLURM_NPROCS') not in (None, 1) \
            and os.environ.get('MASTER_ADDR'):
        rank, world = _env_int('SLURM_PROCID'), _env_int('SLURM_NTASKS', 'SLURM_NPROCS')
        local = _env_int('SLURM_LOCALID') or 0
    else:
        rank, world, local = 0, 1, 0
    assert rank is not None and world is not None
    if world > 1 and world_size not in (1, world):
        _logger.warning('--world_size %d ignored: the launcher started %d processes', world_size, world)

    if device.startswith('cuda'):
        torch.cuda.set_device(local if device == 'cuda' else torch.device(device).index)
        dev = torch.device('cuda', torch.cuda.current_device())
        backend = 'nccl'
    else:
        dev = torch.device('cpu')
        backend = 'gloo'
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
        kwargs = dict(backend=backend, init_method=dist_url, world_size=world, rank=rank,
                      timeout=datetime.timedelta(seconds=timeout_s))
        if backend == 'nccl':
            kwargs['device_id'] = dev
        restart = _env_int('TORCHELASTIC_RESTART_COUNT') or 0
        if dist_url == 'env://' and restart > 0 and os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True':
            # torchrun --max-restarts with its agent's store (static --master_port, or c10d sharing its store):
            # the store outlives the dead workers and keeps their addresses, which restarted workers would read
            # and hang on; a per-restart key prefix keeps each attempt's keys apart
            store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), world, is_master=False,
                                  timeout=datetime.timedelta(seconds=timeout_s))
            kwargs.pop('init_method')
            kwargs['store'] = dist.PrefixStore(f'hornet/restart_{restart}', store)
        dist.init_process_group(**kwargs)
    _STATE = DistState(rank=rank, world_size=world, local_rank=local, device=dev,
                       backend=backend if world > 1 else None)
    return _STATE


def no_cuda_message(device: str) -> str:
    """The error for a CUDA device on a machine without one; ``cuda`` is --device's default."""
    which = '--device is cuda, the default,' if device == 'cuda' else f'--device {device} was given,'
    return (f"CUDA is not available on this machine ({which} but torch sees no GPU); to run on the CPU add "
            f"--device cpu")


def local_world_size() -> int:
    """Training processes on this machine (torchrun, OpenMPI, SLURM), 1 when none is set."""
    n = _env_int('LOCAL_WORLD_SIZE', 'OMPI_COMM_WORLD_LOCAL_SIZE')
    if n is None and os.environ.get('SLURM_JOB_ID') and _STATE.distributed:
        tasks = os.environ.get('SLURM_NTASKS_PER_NODE') or os.environ.get('SLURM_TASKS_PER_NODE') or ''
        digits = tasks.split('(')[0].split(',')[0]  # SLURM_TASKS_PER_NODE looks like '8(x2)' or '8,4'
        n = int(digits) if digits.isdigit() else None
    return max(1, n or 1)


def cpu_cores_available() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup (container) CPU quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        with open('/sys/fs/cgroup/cpu.max') as f:
            quota, period = f.read().split()[:2]
        if quota != 'max' and int(period) > 0:
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cores_and_sharing_processes() -> Tuple[int, int]:
    """(cores this process may use, training processes that share them)."""
    cores, procs = cpu_cores_available(), local_world_size()
    per_task = _env_int('SLURM_CPUS_PER_TASK')
    if per_task is not None and cores <= per_task:
        procs = 1  # SLURM bound this task to cores of its own: they are not shared with the other tasks
    return cores, procs


MAX_AUTO_WORKERS = 10  # the original's --num_workers: enough for ImageNet at 224 px per GPU


def auto_num_workers(device_type: str) -> Tuple[int, str]:
    """``--num_workers auto``: data loading workers per training process, and why that many.

    On a GPU each worker takes a core of its own beside the training process: this process's share of the cores
    minus one for itself, at most 10 (the original's count). On the CPU one (none on a single core): the model's
    arithmetic is the bulk of a step and needs the cores (set_intra_op_threads gives each worker a whole share of
    them), and one worker is enough to overlap the decoding with it. Measured on the quick start, 2 cores: 0, 1
    and 2 workers take the same 0.06 s a step, but without a worker the decoding is waited for (30% of the step)
    and the "input pipeline is the bottleneck" warning fires; 2 workers exceed the cores.
    """
    cores, procs = _cores_and_sharing_processes()
    share = max(1, cores // procs)
    if device_type != 'cuda':
        return min(1, share - 1), (f"training on the CPU: {'one worker' if share > 1 else 'no worker on one core'}, "
                                   f"the model's arithmetic needs the other cores")
    workers = max(0, min(MAX_AUTO_WORKERS, share - 1))
    return workers, (f"{cores} cores / {procs} training process{'es' if procs != 1 else ''} on this machine, less "
                     f"one core for the training process, at most {MAX_AUTO_WORKERS}")


def set_intra_op_threads(requested: int, num_workers: int) -> int:
    """Set torch's intra-op thread count for this process and log the choice; returns it.

    ``requested`` > 0 wins (``--threads``); else OMP_NUM_THREADS if set (torchrun sets 1 for several processes);
    else the cores available divided among this machine's training processes and their data loading workers:
    cores // (local processes x (1 + num_workers)) (a SLURM task bound to its own --cpus-per-task cores shares
    them with its workers only). More threads than free cores do not just stop helping, they hurt: every
    parallel region waits for its slowest thread, and a thread that shares its core with a loader worker or
    another program is slow (with torch's default, one epoch of the quick start took 5-10x longer on a busy
    machine).
    """
    if requested > 0:
        threads, why = requested, '--threads'
    elif os.environ.get('OMP_NUM_THREADS', '').strip():
        threads, why = torch.get_num_threads(), 'OMP_NUM_THREADS'
    else:
        cores, procs = _cores_and_sharing_processes()
        workers = max(0, int(num_workers))
        threads = max(1, cores // (procs * (1 + workers)))
        why = (f"{cores} cores / ({procs} process{'es' if procs != 1 else ''} x (1 + {workers} data loading "
               f"worker{'s' if workers != 1 else ''}))")
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    _logger.info('CPU threads per process: %d (%s; --threads N to change)', threads, why)
    return threads


def match_param_strides_to_grads(model: torch.nn.Module, input_size: int, channels_last: bool = False,
                                 in_chans: int = 3) -> List[str]:
    """Give each parameter the strides its gradient will have, where the two differ only on size-1 dims.

    DDP (``gradient_as_bucket_view``) lays its buckets out like the parameters, and warns "Grad strides do not
    match bucket view strides" when a gradient arrives with other strides. For a tensor with a size-1 dim, such
    as a depthwise kernel (C, 1, k, k) or a 1x1 kernel (O, I, 1, 1), several stride tuples describe the same
    memory order; which one a gradient gets depends on how the model computes with the parameter (HorNet runs
    its depthwise convolutions channels-last, so their kernel gradients come back channels-last, and uses 1x1
    kernels as matrices, so theirs come back in the standard layout whatever ``model.to(channels_last)`` made of
    the parameter). Values and memory order stay as they are; only those strides change. The gradients are read
    off a forward/backward of a copy of the model on the meta device: no compute, no memory, no random draws.
    Returns the names of the parameters that changed.
    """
    try:
        probe = copy.deepcopy(model).to('meta')
        probe.train()
        x = torch.empty(2, in_chans, input_size, input_size, device='meta')
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = probe(x)
        out = out if isinstance(out, torch.Tensor) else out[0]
        out.float().sum().backward()
        grads = {n: p.grad for n, p in probe.named_parameters()}
    except Exception as e:  # a model the meta device cannot run: keep its layouts (DDP may warn, nothing worse)
        _logger.debug('Gradient layout probe failed: %s', e)
        return []
    changed = []
    for name, p in model.named_parameters():
        g = grads.get(name)
        if g is None or g.shape != p.shape or g.stride() == p.stride():
            continue
        if any(gs != ps for gs, ps, n in zip(g.stride(), p.stride(), p.shape) if n != 1):
            continue  # another memory order: a real layout choice, not ours to change
        new = torch.empty_strided(p.shape, g.stride(), dtype=p.dtype, device=p.device)
        new.copy_(p.detach())
        p.data = new
        changed.append(name)
    return changed


def barrier() -> None:
    if _STATE.distributed:
        dist.barrier()


def broadcast_from_main(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (a check only rank 0 can make, so that all ranks act on it together)."""
    if not _STATE.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: Sequence[float], device: Optional[torch.device] = None) -> List[float]:
    """Sum a few numbers across ranks (float64 so counts and loss sums stay exact)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device or _STATE.device)
    if _STATE.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(values: Sequence[float], device: Optional[torch.device] = None) -> List[float]:
    t = torch.tensor(list(values), dtype=torch.float64, device=device or _STATE.device)
    if _STATE.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- graceful stop
class StopRequest:
    """Set by SIGTERM/SIGUSR2 (preemption, time limit) or a first Ctrl-C (SIGINT, where installed for it) so
    training can save at the next step boundary.

    Nothing is done in the signal handler itself except setting a flag: the training loop agrees on the stop
    across ranks, saves a checkpoint at a consistent step and exits. A second Ctrl-C raises KeyboardInterrupt at
    once, for a step that would take too long to finish.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.received: set = set()   # every signal seen (SIGTERM then SIGUSR2 must still read as SIGUSR2)
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        self.received.add(signum)

    @property
    def ctrl_c(self) -> bool:
        """Stopped by Ctrl-C alone (exit status 130), not by a scheduler's signal (3: requeue)."""
        return signal.SIGINT in self.received and not self.received & {signal.SIGTERM, signal.SIGUSR2}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        """No logging here: a handler that logs while the interrupted code is inside a write to the same stream
        gets "RuntimeError: reentrant call" (printed as a '--- Logging error ---' traceback). The training loop
        logs the signal at the step boundary; a Ctrl-C is acknowledged at once with one unbuffered write."""
        if signum == signal.SIGINT and signum in self.received:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the checkpoint of this step
        if self.signum is None and signum == signal.SIGINT and _STATE.is_main:
            line = (f"{time.strftime('%H:%M:%S')} WARNING Ctrl-C: saving a checkpoint when this training step "
                    f"ends, then stopping (Ctrl-C again stops at once, without it)\n")
            try:
                os.write(2, line.encode())
            except OSError:
                pass
        self.signum = signum
        self.received.add(signum)

    def install(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGUSR2)) -> None:
        """Handle ``signals`` (a run's start: what an earlier run in this process received is forgotten)."""
        self.signum = None
        self.received = set()
        for s in signals:
            self._previous[s] = signal.signal(s, self._handler)

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self._previous.clear()


STOP = StopRequest()
