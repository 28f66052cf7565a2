"""BCN under torch.distributed: 2 CPU processes, gloo backend, both training paths."""
import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from reference import ReferenceEstimates, channel_elements

from mmws import BCN

WORLD_SIZE = 2
CHANNELS = 16
# Per step, the input shape of each rank: unequal sample counts and spatial sizes, and empty
# batches (a head that got no RoIs on one rank).
MICRO_SHAPES = [((1, CHANNELS, 6, 5), (2, CHANNELS, 4, 7)),
                ((2, CHANNELS, 5, 5), (0, CHANNELS, 5, 5)),
                ((0, CHANNELS, 3, 3), (1, CHANNELS, 3, 3)),
                ((0, CHANNELS, 3, 3), (0, CHANNELS, 3, 3))]
SYNC_SAMPLES = (1, 2)
PATHS = ('few_ops', 'two_pass')
BAD_VALUES = (float('nan'), float('inf'), -float('inf'))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def micro_inputs(step: int):
    gen = torch.Generator().manual_seed(step)
    return [torch.randn(shape, generator=gen) * 2 + 1 for shape in MICRO_SHAPES[step]]


def sync_inputs():
    gen = torch.Generator().manual_seed(10)
    return torch.randn(sum(SYNC_SAMPLES), CHANNELS, 6, 5, generator=gen).split(SYNC_SAMPLES)


def loss_weights(shape):
    return torch.arange(torch.Size(shape).numel(), dtype=torch.float32).view(shape).sin()


def _path_results(path: str, rank: int) -> dict:
    """Micro-batch steps under DDP (unequal and empty batches) and a sync step (then one with
    an empty rank) with ``training_path=path``."""
    micro = BCN(CHANNELS, num_groups=4, momentum=0.3, training_path=path).train()
    model = torch.nn.parallel.DistributedDataParallel(micro)
    for step in range(len(MICRO_SHAPES)):
        model(micro_inputs(step)[rank]).square().mean().backward()

    sync = BCN(CHANNELS, num_groups=4, mode='sync', training_path=path).train()
    x = sync_inputs()[rank].clone().requires_grad_()
    out = sync(x)
    weights = loss_weights((sum(SYNC_SAMPLES), ) + out.shape[1:]).split(SYNC_SAMPLES)
    (out * weights[rank]).sum().backward()
    # an empty batch on one rank: the other's statistics are its own, nobody hangs
    local = sync_inputs()[0] if rank == 0 else torch.zeros(0, CHANNELS, 6, 5)
    local = local.clone().requires_grad_()
    sync(local).sum().backward()
    return dict(running_mean=micro.running_mean, running_var=micro.running_var,
                steps=micro.num_batches_tracked, sync_out=out.detach(), sync_grad=x.grad,
                sync_bn_weight_grad=sync.bn_weight.grad, sync_running_mean=sync.running_mean,
                sync_running_var=sync.running_var)


def _non_finite_results(rank: int) -> dict:
    """A bad value on rank 1 only, in each mode: estimates and step counters after the bad
    step and a clean one."""
    results = {}
    for mode in ('micro', 'batch', 'sync'):
        for bad in BAD_VALUES:
            bcn = BCN(CHANNELS, num_groups=4, mode=mode, momentum=0.3).train()
            for step in range(2):
                x = micro_inputs(0)[1][:, :, :4, :4].clone().requires_grad_(False) + rank
                if step == 0 and rank == 1:
                    x[0, 5, 1, 2] = bad
                bcn(x.requires_grad_()).sum().backward()
            results[mode, str(bad)] = [bcn.running_mean.clone(), bcn.running_var.clone(),
                                       bcn.num_batches_tracked.clone(),
                                       bcn.num_batches_skipped.clone()]
    return results


def _compiled_results(rank: int) -> dict:
    """A compiled micro BCN (its all-reduce inside the compiled forward) against its eager
    twin, float64, over shapes that change and an empty rank."""
    eager = BCN(CHANNELS, num_groups=4, momentum=0.3).double().train()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, fullgraph=True, backend='aot_eager_decomp_partition')
    gen = torch.Generator().manual_seed(rank)
    pairs = []
    for shape in [(1 + rank, CHANNELS, 5, 5), (2, CHANNELS, 6, 4 + rank), (rank, CHANNELS, 3, 3)]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_eager, out_compiled = eager(x_eager), compiled(x_compiled)
        out_eager.square().sum().backward()
        out_compiled.square().sum().backward()
        pairs.append((out_eager.detach(), out_compiled.detach()))
        pairs.append((x_eager.grad, x_compiled.grad))
    pairs += [(a.grad, b.grad) for a, b in zip(eager.parameters(), twin.parameters())]
    pairs += list(zip(eager.buffers(), twin.buffers()))
    return dict(pairs=pairs)


def _worker(rank: int, port: int, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=WORLD_SIZE)
    try:
        results = {path: _path_results(path, rank) for path in PATHS}
        results['non_finite'] = _non_finite_results(rank)
        results['compiled'] = _compiled_results(rank)
        torch.save(results, os.path.join(result_dir, f'rank{rank}.pt'))
        dist.barrier()  # both ranks done with every collective before the teardown
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def rank_results(tmp_path_factory):
    result_dir = tmp_path_factory.mktemp('ddp')
    mp.spawn(_worker, args=(free_port(), str(result_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(result_dir / f'rank{r}.pt') for r in range(WORLD_SIZE)]


@pytest.mark.parametrize('path', PATHS)
def test_micro_estimates_identical_across_ranks(rank_results, path):
    first, second = (r[path] for r in rank_results)
    assert torch.equal(first['running_mean'], second['running_mean'])
    assert torch.equal(first['running_var'], second['running_var'])
    # the step where both ranks were empty did not count
    assert int(first['steps']) == int(second['steps']) == len(MICRO_SHAPES) - 1


@pytest.mark.parametrize('path', PATHS)
def test_micro_estimates_equal_those_of_all_elements_of_all_ranks(rank_results, path):
    ref = ReferenceEstimates(CHANNELS, momentum=0.3)
    for step in range(len(MICRO_SHAPES) - 1):
        ref.update(torch.cat([channel_elements(x) for x in micro_inputs(step)], dim=1))
    torch.testing.assert_close(rank_results[0][path]['running_mean'], ref.mean.float())
    torch.testing.assert_close(rank_results[0][path]['running_var'], ref.var.float())


@pytest.mark.parametrize('path', PATHS)
def test_sync_mode_equals_batch_mode_on_the_concatenated_batch(rank_results, path):
    rank_results = [r[path] for r in rank_results]
    x = torch.cat(sync_inputs()).requires_grad_()
    single = BCN(CHANNELS, num_groups=4, mode='batch').train()
    out = single(x)
    (out * loss_weights(out.shape)).sum().backward()
    torch.testing.assert_close(torch.cat([r['sync_out'] for r in rank_results]), out.detach())
    torch.testing.assert_close(torch.cat([r['sync_grad'] for r in rank_results]), x.grad,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sum(r['sync_bn_weight_grad'] for r in rank_results),
                               single.bn_weight.grad, rtol=1e-4, atol=1e-5)
    # second step: rank 1 was empty; both ranks' estimates followed rank 0's statistics
    single(sync_inputs()[0])
    for result in rank_results:
        torch.testing.assert_close(result['sync_running_mean'], single.running_mean)
        # unbiased over the elements of all processes, as nn.SyncBatchNorm
        torch.testing.assert_close(result['sync_running_var'], single.running_var)


def test_paths_agree_under_ddp(rank_results):
    for result in rank_results:
        for key, value in result['few_ops'].items():
            torch.testing.assert_close(result['two_pass'][key], value, rtol=1e-4, atol=1e-5,
                                       msg=key)


@pytest.mark.parametrize('bad', [str(v) for v in BAD_VALUES])
@pytest.mark.parametrize('mode', ['micro', 'batch', 'sync'])
def test_non_finite_value_on_one_rank(rank_results, mode, bad):
    """micro and sync (all-reduced statistics): both ranks skip the step and keep identical,
    finite estimates. batch (each rank its own statistics): the bad rank skips, the other
    updates."""
    first, second = (r['non_finite'][mode, bad] for r in rank_results)
    for result in (first, second):
        assert all(torch.isfinite(t).all() for t in result[:2])
    if mode == 'batch':
        assert [int(first[2]), int(first[3])] == [2, 0]
        assert [int(second[2]), int(second[3])] == [1, 1]
        return
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert [int(first[2]), int(first[3])] == [1, 1]


def test_compiled_layer_under_ddp_equals_eager(rank_results):
    for result in rank_results:
        for eager, compiled in result['compiled']['pairs']:
            torch.testing.assert_close(compiled, eager)
