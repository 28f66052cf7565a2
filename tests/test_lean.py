"""mmws's training paths are lean on accelerators: few operators, no host synchronization,
and ``torch.compile(fullgraph=True)`` traces them to the same numbers as eager.

Operator counts and host syncs are deterministic (unlike times), so the budgets are asserted.
The protocol (:func:`benchmarks.common.operator_counts`): after one warm-up call, the profiler
records one ``layer(x).sum().backward()``; every top-level aten operator that is not a view or
metadata query counts as one launch (the loss ``sum``, its backward seed and the gradient
accumulations included), and ``item`` / ``_local_scalar_dense`` / ``is_nonzero`` count as host
syncs. ``x = 2×64×32×32`` for the small-map budgets, ``2×64×64×64`` for BCN's two-pass path.
"""
import contextlib
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from mmws import BCN, ConvWS

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
CHANNELS = 64
SMALL, LARGE = (2, CHANNELS, 32, 32), (2, CHANNELS, 64, 64)
# (layer factory, input shape, budget of compute operators for forward + backward, loss, seed
# and the 5 gradient accumulations included). BCN's small-map path: 24 (the non-finite skip
# included); its large-map path: at most 48 (the normalization kernels on the moment points).
BUDGETS = {
    'BCN micro': (lambda: BCN(CHANNELS), SMALL, 24),
    'BCN batch': (lambda: BCN(CHANNELS, mode='batch'), SMALL, 24),
    'BCN sync (one process)': (lambda: BCN(CHANNELS, mode='sync'), SMALL, 24),
    'BCN micro two-pass': (lambda: BCN(CHANNELS), LARGE, 46),
    'BCN batch two-pass': (lambda: BCN(CHANNELS, mode='batch'), LARGE, 43),
    'BCN sync two-pass (one process)': (lambda: BCN(CHANNELS, mode='sync'), LARGE, 43),
    # eps outside the root: a batch_norm kernel each way plus per-filter coefficients (two
    # forward, two backward; the unbiased std's sqrt(m/n) one more); eps inside the root: one
    # batch_norm kernel each way, as timm's StdConv2d. nn.Conv2d's count is 7.
    'ConvWS default': (lambda: ConvWS(CHANNELS, CHANNELS, 3, padding=1), SMALL, 14),
    'ConvWS biased std': (lambda: ConvWS(CHANNELS, CHANNELS, 3, padding=1, unbiased=False),
                          SMALL, 13),
    'ConvWS eps inside sqrt': (lambda: ConvWS(CHANNELS, CHANNELS, 3, padding=1,
                                              eps_inside_sqrt=True), SMALL, 9),
}


@pytest.fixture
def operator_counts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from common import operator_counts
    return operator_counts


def step(layer: nn.Module, x: torch.Tensor):
    return lambda: layer(x).sum().backward()


@pytest.mark.parametrize('name', BUDGETS)
def test_training_operator_budget(name, operator_counts):
    factory, shape, budget = BUDGETS[name]
    x = torch.randn(shape, requires_grad=True)
    layer = factory().train()
    if isinstance(layer, BCN):  # the path the budget is for
        assert layer._path(x) == ('two_pass' if shape == LARGE else 'few_ops')
    counts = operator_counts(step(layer, x))
    assert counts['host_syncs'] == 0, counts['names']
    assert counts['compute'] <= budget, counts['names']


def test_convws_eval_costs_a_plain_conv(operator_counts):
    x = torch.randn(2, CHANNELS, 32, 32)
    conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1).eval()
    ws = ConvWS(CHANNELS, CHANNELS, 3, padding=1).eval()

    def infer(layer):
        def call():
            with torch.no_grad():
                layer(x)
        return call

    assert operator_counts(infer(ws)) == operator_counts(infer(conv))


@pytest.fixture
def no_host_sync(monkeypatch):
    """A context in which any conversion of a tensor's value to a Python value raises."""

    def forbidden(*args, **kwargs):
        raise AssertionError('host synchronization: a tensor value was read on the host')

    @contextlib.contextmanager
    def guard():
        with monkeypatch.context() as patch:
            for name in ('item', 'tolist', '__bool__', '__int__', '__float__', '__index__'):
                patch.setattr(torch.Tensor, name, forbidden)
            yield

    return guard


@pytest.mark.parametrize('path', ['few_ops', 'two_pass'])
@pytest.mark.parametrize('mode', ['micro', 'batch', 'sync'])
def test_bcn_reads_no_tensor_value_on_the_host(mode, path, no_host_sync):
    bcn = BCN(16, num_groups=4, mode=mode, training_path=path)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    bad = x.detach().clone()
    bad[0, 0, 0, 0] = float('nan')
    with no_host_sync():
        bcn.load_state_dict(BCN(16, num_groups=4).state_dict())
        bcn.momentum = 0.2
        for inputs in (x, bad, x):  # a skipped step decides on the device too
            bcn(inputs).sum().backward()
        bcn.train()(torch.randn(0, 16, 5, 5, requires_grad=True)).sum().backward()
    with pytest.warns(RuntimeWarning, match='non-finite'):
        bcn.eval()  # reads the skip counter once, to warn (not a training step)
    with no_host_sync():
        bcn(x).sum().backward()
        with torch.no_grad():
            bcn(x)


@pytest.mark.parametrize('eps_inside_sqrt', [False, True])
def test_convws_reads_no_tensor_value_on_the_host(eps_inside_sqrt, no_host_sync):
    conv = ConvWS(8, 16, 3, padding=1, eps_inside_sqrt=eps_inside_sqrt)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    with no_host_sync():
        conv.train()(x).sum().backward()
        with torch.no_grad():
            conv.eval()(x)
            conv(x)


def test_host_sync_guard_catches_a_sync(no_host_sync):
    with no_host_sync(), pytest.raises(AssertionError, match='host synchronization'):
        if torch.ones(1) > 0:
            pass


def compiled_equals_eager(layer: nn.Module, shapes, steps: int = 2, dynamic=None,
                         backend: str = 'inductor') -> None:
    """``steps`` steps (cycling through ``shapes``) of eager and
    ``torch.compile(fullgraph=True)`` twins in float64: outputs, input and parameter
    gradients, and buffers (the estimates, the step counters) agree."""
    eager, twin = layer.double(), copy.deepcopy(layer).double()
    compiled = torch.compile(twin, fullgraph=True, dynamic=dynamic, backend=backend)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        shape = shapes[step % len(shapes)]
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
        x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_eager, out_compiled = eager(x_eager), compiled(x_compiled)
        weights = torch.randn(out_eager.shape, generator=gen, dtype=torch.float64)
        (out_eager * weights).sum().backward()
        (out_compiled * weights).sum().backward()
        torch.testing.assert_close(out_compiled, out_eager, msg=lambda m: f'step {step}: {m}')
        torch.testing.assert_close(x_compiled.grad, x_eager.grad,
                                   msg=lambda m: f'step {step}: {m}')
    for (name, param), twin_param in zip(eager.named_parameters(), twin.parameters()):
        torch.testing.assert_close(twin_param.grad, param.grad, msg=name)
    for (name, buffer), twin_buffer in zip(eager.named_buffers(), twin.buffers()):
        torch.testing.assert_close(twin_buffer, buffer, msg=name)


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('mode', ['micro', 'batch'])
def test_bcn_compiles_fullgraph(mode, training):
    """Inductor, the default backend (one shape: its code generation takes tens of seconds
    on a CI machine; the shapes that change are tested below)."""
    torch._dynamo.reset()
    compiled_equals_eager(BCN(8, num_groups=2, mode=mode).train(training), [(2, 8, 5, 5)])


# A detector's input size changes every step; the partitioner of the compiled backward may
# recompute saved values from the graph's inputs, the buffers the forward has just updated in
# place (pytorch/pytorch#197039): five steps over shapes that change, with the backend that
# runs AOTAutograd's decompositions and min-cut partitioner without code generation.
COMPILE_CASES = [(mode, path, dynamic) for mode in ('micro', 'batch', 'sync')
                 for path in ('few_ops', 'two_pass')
                 for dynamic in ((None, True) if mode != 'sync' else (None, ))]


@pytest.mark.parametrize('mode,path,dynamic', COMPILE_CASES)
def test_bcn_compiled_training_over_steps_and_shapes(mode, path, dynamic):
    torch._dynamo.reset()
    bcn = BCN(8, num_groups=2, mode=mode, momentum=0.3, training_path=path).train()
    compiled_equals_eager(bcn, [(2, 8, 8, 8), (2, 8, 12, 10), (3, 8, 5, 7), (1, 8, 6, 6)],
                          steps=5, dynamic=dynamic, backend='aot_eager_decomp_partition')


def test_bcn_compiled_skips_non_finite_batches():
    torch._dynamo.reset()
    eager = BCN(8, num_groups=2, momentum=0.3).train()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, fullgraph=True, backend='aot_eager_decomp_partition')
    for step in range(3):
        x = torch.randn(2, 8, 5, 5) + step
        if step == 1:
            x[0, 2, 1, 1] = float('inf')
        eager(x), compiled(x)
    for name in ('running_mean', 'running_var', 'num_batches_tracked', 'num_batches_skipped'):
        torch.testing.assert_close(getattr(twin, name), getattr(eager, name), msg=name)
    assert int(twin.num_batches_skipped) == 1 and torch.isfinite(twin.running_var).all()


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_convws_compiles_fullgraph(training):
    torch._dynamo.reset()
    compiled_equals_eager(ConvWS(8, 4, 3, padding=1).train(training), [(2, 8, 5, 5)])
