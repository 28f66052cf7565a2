"""BCN under torch.distributed: 2 CPU processes, gloo backend."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from reference import ReferenceEstimates, reference_batch_stats

from mmws import BCN

WORLD_SIZE = 2
SAMPLES_PER_RANK = (1, 2)  # unequal on purpose: the all-reduce must weight by sample count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def rank_inputs(step: int):
    gen = torch.Generator().manual_seed(step)
    full = torch.randn(sum(SAMPLES_PER_RANK), 16, 6, 5, generator=gen) * 2 + 1
    return full.split(SAMPLES_PER_RANK)


def loss_weights(shape):
    return torch.arange(torch.Size(shape).numel(), dtype=torch.float32).view(shape).sin()


def _worker(rank: int, port: int, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD_SIZE)
    try:
        micro = BCN(16, num_groups=4, momentum=0.3).train()
        model = torch.nn.parallel.DistributedDataParallel(micro)
        for step in range(3):
            model(rank_inputs(step)[rank]).square().mean().backward()

        sync = BCN(16, num_groups=4, mode='sync').train()
        x = rank_inputs(10)[rank].clone().requires_grad_()
        out = sync(x)
        weights = loss_weights((sum(SAMPLES_PER_RANK), ) + out.shape[1:]).split(SAMPLES_PER_RANK)
        (out * weights[rank]).sum().backward()
        torch.save(dict(running_mean=micro.running_mean, running_var=micro.running_var,
                        sync_out=out.detach(), sync_grad=x.grad,
                        sync_bn_weight_grad=sync.bn_weight.grad),
                   os.path.join(result_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def rank_results(tmp_path_factory):
    result_dir = tmp_path_factory.mktemp('ddp')
    mp.spawn(_worker, args=(free_port(), str(result_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(result_dir / f'rank{r}.pt') for r in range(WORLD_SIZE)]


def test_micro_estimates_identical_across_ranks(rank_results):
    first, second = rank_results
    assert torch.equal(first['running_mean'], second['running_mean'])
    assert torch.equal(first['running_var'], second['running_var'])


def test_micro_estimates_equal_those_of_the_concatenated_batch(rank_results):
    ref = ReferenceEstimates(16, momentum=0.3)
    for step in range(3):
        ref.update(*reference_batch_stats(torch.cat(rank_inputs(step)).double()))
    torch.testing.assert_close(rank_results[0]['running_mean'], ref.mean.float())
    torch.testing.assert_close(rank_results[0]['running_var'], ref.var.float())


def test_sync_mode_equals_batch_mode_on_the_concatenated_batch(rank_results):
    x = torch.cat(rank_inputs(10)).requires_grad_()
    single = BCN(16, num_groups=4, mode='batch').train()
    out = single(x)
    (out * loss_weights(out.shape)).sum().backward()
    torch.testing.assert_close(torch.cat([r['sync_out'] for r in rank_results]), out.detach())
    torch.testing.assert_close(torch.cat([r['sync_grad'] for r in rank_results]), x.grad,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sum(r['sync_bn_weight_grad'] for r in rank_results),
                               single.bn_weight.grad, rtol=1e-4, atol=1e-5)
