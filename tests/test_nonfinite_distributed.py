"""A non-finite loss on ONE rank stops every rank at the same optimizer step, naming that rank and step."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    import engine
    import utils
    from models.hornet import HorNet

    utils.init_distributed('cpu', timeout_s=120)  # a hang would fail the test long before the default 30 min
    torch.manual_seed(0)
    model = DDP(HorNet(num_classes=4, depths=(1, 1, 1, 1), base_dim=8))
    calls = {'n': 0}

    def criterion(out, target):
        calls['n'] += 1
        loss = F.cross_entropy(out, target)
        return loss * float('nan') if (rank == 1 and calls['n'] == 3) else loss

    g = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 4, (2,), generator=g)) for _ in range(6)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = engine.TrainState()
    result = {'raised': None}
    try:
        engine.train_one_epoch(model, criterion, batches, len(batches), opt, torch.amp.GradScaler('cpu', enabled=False),
                               state, engine.StepConfig(update_freq=1, batch_size=2, print_freq=1000))
    except engine.NonFiniteLoss as e:
        result['raised'] = str(e)
    result['global_step'] = state.global_step
    result['finite'] = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(result, f)
    utils.cleanup_distributed()


@pytest.mark.slow
@pytest.mark.distributed
def test_non_finite_loss_on_one_rank_stops_all_ranks_together_naming_rank_and_step(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, )
    results = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
    for r in results:
        assert r['raised'] is not None, 'every rank must stop, not only the one that saw the NaN'
        assert 'on rank 1 at epoch 0, optimizer step 2' in r['raised']
        assert r['global_step'] == 2
        assert r['finite']
