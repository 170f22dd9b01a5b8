"""Multi-process training and evaluation with real processes: torchrun + gloo on CPU.

Every run is tiny (micro HorNet, 32 px, 48 training images, batch 4: 6 optimizer steps per epoch). Layouts
are compared on weights after several optimizer steps. Randomness that would differ between layouts is off
(--aa none --reprob 0 --mixup 0 --cutmix 0 --drop_path 0 --color_jitter 0 --smoothing 0); crop and flip still
run, seeded per (seed, epoch, index) by SeededDataset, so a sample looks the same whichever rank loads it.

Run as a script (``torchrun ... tests/test_distributed.py <main.py flags>``) this module is main.py with a
0.4 s pause per optimizer step, so a test can kill a rank mid-epoch.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List

import pytest
import torch

from tests.train_helpers import REPO, base_args, env, load_model_sd, make_image_folder, run_main

EPOCHS = 2
STEPS_PER_EPOCH = 6  # 48 images / (2 processes x batch 4), or 48 / 8 in one process
DETERMINISTIC = dict(aa='none', reprob=0, mixup=0, cutmix=0, drop_path=0, color_jitter=0, smoothing=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun(nproc: int = 2, *extra: str) -> List[str]:
    port = [] if '--rdzv-backend' in extra else ['--master_port', str(_free_port())]  # static rendezvous
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), *port, *extra]


def _argv(data: pathlib.Path, out: pathlib.Path, **overrides) -> List[str]:
    return base_args(data, out, **{'epochs': EPOCHS, **DETERMINISTIC, **overrides})


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f'exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'
    return proc


def _last_checkpoint(out: pathlib.Path) -> pathlib.Path:
    return out / f'checkpoint-{EPOCHS - 1}.pth'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp('data'), classes=4, train_per_class=12, val_per_class=5)
    # 21 validation images: not divisible by 2 processes
    extra = root / 'val' / 'class_0' / '999.png'
    extra.write_bytes((root / 'val' / 'class_1' / '000.png').read_bytes())
    return root


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory, data):
    """The reference: torchrun, 2 processes x batch 4, 2 epochs (12 optimizer steps)."""
    out = tmp_path_factory.mktemp('ddp2')
    proc = _ok(run_main(_argv(data, out), launcher=torchrun(2), timeout=400))
    return out, proc


# ------------------------------------------------------------------------------------------------ layouts

def test_rank_batches_are_the_single_process_batch():
    """2 ranks x B see, at every step, exactly the 2B samples one process with batch 2B sees (and the two
    micro-batches of B with --update_freq 2): rank r takes entries r::2 of one global permutation."""
    from datasets import ResumableSampler
    n, b = 48, 4
    for epoch in (0, 1, 5):
        ranks = []
        for r in range(2):
            s = ResumableSampler(n, 2, r, shuffle=True, seed=3)
            s.set_epoch(epoch)
            ranks.append([i for _, i in s])
        one = ResumableSampler(n, 1, 0, shuffle=True, seed=3)
        one.set_epoch(epoch)
        single = [i for _, i in one]
        assert len(single) == n and len(ranks[0]) == len(ranks[1]) == n // 2
        for step in range(n // (2 * b)):
            two_proc = set(ranks[0][step * b:(step + 1) * b]) | set(ranks[1][step * b:(step + 1) * b])
            assert two_proc == set(single[step * 2 * b:(step + 1) * 2 * b])  # batch 2B, or 2 micro-batches of B


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_equal_one_process_with_double_batch(tmp_path, data, two_process_run):
    out2, _ = two_process_run
    ref = load_model_sd(_last_checkpoint(out2))
    ck = torch.load(_last_checkpoint(out2), map_location='cpu', weights_only=True)
    assert ck['global_step'] == EPOCHS * STEPS_PER_EPOCH
    for name, overrides in (('batch8', dict(batch_size=8)), ('batch4_accum2', dict(batch_size=4, update_freq=2))):
        out = tmp_path / name
        _ok(run_main(_argv(data, out, **overrides)))
        other = load_model_sd(_last_checkpoint(out))
        assert other.keys() == ref.keys()
        for k in ref:  # same samples per step; only the order of float sums differs
            torch.testing.assert_close(other[k], ref[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f'{name} {k}: {m}')


@pytest.mark.slow
@pytest.mark.distributed
def test_logs_and_checkpoints_are_written_by_rank0_only(two_process_run):
    out, proc = two_process_run
    lines = (out / 'log.txt').read_text().splitlines()
    assert [json.loads(line)['epoch'] for line in lines] == list(range(EPOCHS))  # one line per epoch, no duplicate
    train_log = (out / 'train.log').read_text()
    assert train_log.count('Start training') == 1
    assert train_log.count(f'Saved {out}/checkpoint-{EPOCHS - 1}.pth') == 1
    assert sorted(p.name for p in out.glob('*.pth')) == sorted(
        ['checkpoint-best.pth'] + [f'checkpoint-{e}.pth' for e in range(EPOCHS)])
    assert not list(out.glob('.tmp*')), 'a temporary file was left behind'
    # rank 1 logs only warnings: each progress line appears once on stderr
    assert proc.stderr.count('Start training') == 1
    assert proc.stderr.count('val dataset') == 1 and proc.stderr.count('* Acc@1') == EPOCHS
    # DDP's bucket views have the parameters' strides (the Global Filter + channels-last case: test_cli_usability.py)
    assert 'Grad strides do not match bucket view strides' not in proc.stderr, proc.stderr[-4000:]


# ------------------------------------------------------------------------------------------------ evaluation

def _eval(data, out, ckpt, launcher=(), **kw) -> Dict[str, float]:
    proc = _ok(run_main(base_args(data, out, eval='true', resume=str(ckpt), batch_size=4, **kw), launcher=launcher))
    if launcher:  # the result is printed once, by rank 0, on stdout
        assert proc.stdout.count('* Acc@1') == 1 and '* Acc@1' not in proc.stderr, proc.stdout + proc.stderr[-3000:]
    return json.loads((out / 'eval.json').read_text())


@pytest.mark.slow
@pytest.mark.distributed
def test_dist_eval_is_exact_with_uneven_split(tmp_path, data, two_process_run):
    ckpt = _last_checkpoint(two_process_run[0])
    n_val = sum(1 for _ in (data / 'val').rglob('*.png'))
    assert n_val == 21
    single = _eval(data, tmp_path / 'one', ckpt)
    dist_on = _eval(data, tmp_path / 'two_dist', ckpt, launcher=torchrun(2), dist_eval='true')
    dist_off = _eval(data, tmp_path / 'two_rank0', ckpt, launcher=torchrun(2), dist_eval='false')
    for got in (dist_on, dist_off):
        assert got['num_samples'] == single['num_samples'] == n_val
        assert got['acc1'] == single['acc1'] and got['acc5'] == single['acc5']
        assert got['loss'] == pytest.approx(single['loss'], rel=1e-6)
        assert got['sha256'] == single['sha256']
    assert 0 < single['acc1'] <= 100


# ------------------------------------------------------------------------------------------------ collectives

def _count_worker(rank: int, world: int, port: int, out_dir: str, update_freq: int, n_batches: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    import torch.nn as nn
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    import engine
    import utils
    from models.hornet import HorNet

    ds = utils.init_distributed('cpu')
    assert ds.distributed and ds.rank == rank
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = HorNet(num_classes=4, depths=(1, 1, 1, 1), base_dim=8)
    ddp = DDP(model, bucket_cap_mb=1000)  # the whole model in one bucket: one all-reduce per synced backward
    calls = {'buckets': 0, 'step_flags': 0}

    def counting_hook(state, bucket):
        calls['buckets'] += 1
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, counting_hook)
    real_all_reduce = dist.all_reduce  # the step flags are a MAX all-reduce; DDP's buckets are SUMs (comm hook)

    def counting_all_reduce(tensor, *args, **kwargs):
        if kwargs.get('op', args[0] if args else None) == dist.ReduceOp.MAX:
            calls['step_flags'] += 1
        return real_all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce
    g = torch.Generator().manual_seed(100 + rank)
    batches = [(torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 4, (2,), generator=g))
               for _ in range(n_batches)]
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    state = engine.TrainState()
    cfg = engine.StepConfig(update_freq=update_freq, batch_size=2, print_freq=1000)
    engine.train_one_epoch(ddp, nn.CrossEntropyLoss(), batches, n_batches, opt,
                           torch.amp.GradScaler('cpu', enabled=False), state, cfg)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(gathered[0], t) for t in gathered)
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump({**calls, 'optimizer_steps': state.global_step, 'weights_equal_across_ranks': same}, f)
    utils.cleanup_distributed()


@pytest.mark.slow
@pytest.mark.distributed
def test_accumulation_uses_one_allreduce_per_optimizer_step(tmp_path):
    import torch.multiprocessing as mp
    update_freq, n_batches = 3, 9
    mp.spawn(_count_worker, args=(2, _free_port(), str(tmp_path), update_freq, n_batches), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f'rank{rank}.json').read_text())
        steps = n_batches // update_freq
        assert got['optimizer_steps'] == steps
        assert got['buckets'] == steps, f'rank {rank}: {got["buckets"]} gradient all-reduces for {steps} steps'
        assert got['step_flags'] == steps  # the [non-finite rank, stop] flags: one small all-reduce per step too
        assert got['weights_equal_across_ranks']


# ------------------------------------------------------------------------------------------------ failures

def _worker_pids(agent_pid: int) -> Dict[int, int]:
    """{RANK: pid} of the worker processes torchrun (pid ``agent_pid``) started."""
    found = {}
    for d in pathlib.Path('/proc').iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / 'stat').read_text().rsplit(')', 1)[1].split()[1])
            if ppid != agent_pid:
                continue
            environ = dict(kv.split('=', 1) for kv in (d / 'environ').read_text().split('\0') if '=' in kv)
        except (OSError, ValueError, IndexError):
            continue
        if 'RANK' in environ:
            found[int(environ['RANK'])] = int(d.name)
    return found


def _alive(pid: int) -> bool:
    try:
        return pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def _start_slow(data, out, *torchrun_extra: str) -> subprocess.Popen:
    cmd = torchrun(2, *torchrun_extra) + [str(REPO / 'tests' / 'test_distributed.py')] + _argv(data, out)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(),
                            cwd=str(REPO), start_new_session=True)


def _stop(proc: subprocess.Popen, workers) -> str:
    """Kill what is left of a torchrun (its session) and the workers; return its output."""
    for pid in [proc.pid, *workers]:
        try:
            os.killpg(pid, signal.SIGKILL) if pid == proc.pid else os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return proc.communicate()[0][-4000:]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize('restarts, rendezvous', [(0, 'static'), (1, 'static'), (1, 'c10d')])
def test_rank_failure_exits_promptly_or_restarts_and_resumes(tmp_path, data, two_process_run, restarts, rendezvous):
    """SIGKILL rank 1 in epoch 1. Without restarts every process is gone within a minute (gloo sees the closed
    connection; no wait for the 30-min collective timeout). With --max-restarts 1 torchrun restarts both
    workers, which auto-resume from checkpoint-0.pth and end with the uninterrupted run's exact weights."""
    out = tmp_path / 'out'
    extra = ['--max-restarts', str(restarts)]
    if rendezvous == 'c10d':
        extra = ['--rdzv-backend', 'c10d', '--rdzv-endpoint', f'127.0.0.1:{_free_port()}', '--nnodes', '1'] + extra
    proc = _start_slow(data, out, *extra)
    deadline = time.monotonic() + 240
    while not (out / 'checkpoint-0.pth').exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f'no checkpoint-0.pth (exit {proc.poll()}):\n{_stop(proc, [])}')
        time.sleep(0.1)
    workers = _worker_pids(proc.pid)
    assert sorted(workers) == [0, 1], workers
    os.kill(workers[1], signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        output, _ = proc.communicate(timeout=60 if restarts == 0 else 180)
    except subprocess.TimeoutExpired:
        pytest.fail(f'torchrun still running {time.monotonic() - killed_at:.0f} s after rank 1 was killed:\n'
                    f'{_stop(proc, list(workers.values()) + list(_worker_pids(proc.pid).values()))}')
    if restarts == 0:
        assert proc.returncode != 0, output[-3000:]
        assert time.monotonic() - killed_at < 60
        assert not any(_alive(pid) for pid in workers.values())
        assert not (out / 'checkpoint-1.pth').exists()
        return
    assert proc.returncode == 0, output[-6000:]
    assert 'Resuming at epoch 1, step 0 ' in (out / 'train.log').read_text(), output[-4000:]
    ref = load_model_sd(_last_checkpoint(two_process_run[0]))
    got = load_model_sd(_last_checkpoint(out))
    for k in ref:
        assert torch.equal(got[k], ref[k]), f'{k} differs after the restart'


if __name__ == '__main__':  # main.py, slowed down: 0.4 s per optimizer step (see the module docstring)
    import engine
    import main

    _apply = engine.apply_schedules

    def _slow_apply(*a, **k):
        time.sleep(0.4)
        return _apply(*a, **k)

    engine.apply_schedules = _slow_apply
    sys.exit(main.cli())
