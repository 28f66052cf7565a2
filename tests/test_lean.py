"""mmws's training paths are lean on accelerators: few operators, no host synchronization,
and ``torch.compile(fullgraph=True)`` traces them to the same numbers as eager.

Operator counts and host syncs are deterministic (unlike times), so the budgets are asserted:
one ``layer(x).sum().backward()`` at ``x = 2×64×32×32`` (the protocol of
``../shared/tools/opcount.py``, reimplemented in ``benchmarks/common.py``).
"""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from mmws import BCN, ConvWS

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
CHANNELS = 64
# (layer factory, budget of compute operators for forward + backward, loss and seed included)
BUDGETS = {
    'BCN micro': (lambda: BCN(CHANNELS), 24),
    'BCN batch': (lambda: BCN(CHANNELS, mode='batch'), 24),
    'BCN sync (one process)': (lambda: BCN(CHANNELS, mode='sync'), 24),
    # eps outside the root: a batch_norm kernel each way plus per-filter coefficients (two
    # forward, two backward; the unbiased std's sqrt(m/n) one more); eps inside the root: one
    # batch_norm kernel each way, as timm's StdConv2d. nn.Conv2d's count is 7.
    'ConvWS default': (lambda: ConvWS(CHANNELS, CHANNELS, 3, padding=1), 14),
    'ConvWS biased std': (lambda: ConvWS(CHANNELS, CHANNELS, 3, padding=1, unbiased=False), 13),
    'ConvWS eps inside sqrt': (lambda: ConvWS(CHANNELS, CHANNELS, 3, padding=1,
                                              eps_inside_sqrt=True), 9),
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
    factory, budget = BUDGETS[name]
    x = torch.randn(2, CHANNELS, 32, 32, requires_grad=True)
    counts = operator_counts(step(factory().train(), x))
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
    """Any conversion of a tensor's value to a Python value raises."""

    def forbidden(*args, **kwargs):
        raise AssertionError('host synchronization: a tensor value was read on the host')

    for name in ('item', 'tolist', '__bool__', '__int__', '__float__', '__index__'):
        monkeypatch.setattr(torch.Tensor, name, forbidden)


@pytest.mark.parametrize('mode', ['micro', 'batch', 'sync'])
def test_bcn_reads_no_tensor_value_on_the_host(mode, no_host_sync):
    bcn = BCN(16, num_groups=4, mode=mode)
    bcn.load_state_dict(BCN(16, num_groups=4).state_dict())
    bcn.momentum = 0.2
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    for _ in range(2):
        bcn.train()(x).sum().backward()
    bcn.eval()(x).sum().backward()
    with torch.no_grad():
        bcn(x)
    bcn.train()(torch.randn(0, 16, 5, 5, requires_grad=True)).sum().backward()


@pytest.mark.parametrize('eps_inside_sqrt', [False, True])
def test_convws_reads_no_tensor_value_on_the_host(eps_inside_sqrt, no_host_sync):
    conv = ConvWS(8, 16, 3, padding=1, eps_inside_sqrt=eps_inside_sqrt)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    conv.train()(x).sum().backward()
    with torch.no_grad():
        conv.eval()(x)
        conv(x)


def test_host_sync_guard_catches_a_sync(no_host_sync):
    with pytest.raises(AssertionError, match='host synchronization'):
        if torch.ones(1) > 0:
            pass


def compiled_equals_eager(layer: nn.Module, shape, steps: int = 2) -> None:
    """Two steps of eager and ``torch.compile(fullgraph=True)`` twins in float64: outputs,
    input and parameter gradients, and buffers (the estimates) agree."""
    eager, twin = layer.double(), copy.deepcopy(layer).double()
    compiled = torch.compile(twin, fullgraph=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
        x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_eager, out_compiled = eager(x_eager), compiled(x_compiled)
        weights = torch.randn(out_eager.shape, generator=gen, dtype=torch.float64)
        (out_eager * weights).sum().backward()
        (out_compiled * weights).sum().backward()
        torch.testing.assert_close(out_compiled, out_eager)
        torch.testing.assert_close(x_compiled.grad, x_eager.grad)
    for (name, param), twin_param in zip(eager.named_parameters(), twin.parameters()):
        torch.testing.assert_close(twin_param.grad, param.grad, msg=name)
    for (name, buffer), twin_buffer in zip(eager.named_buffers(), twin.buffers()):
        torch.testing.assert_close(twin_buffer, buffer, msg=name)


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('mode', ['micro', 'batch'])
def test_bcn_compiles_fullgraph(mode, training):
    torch._dynamo.reset()
    compiled_equals_eager(BCN(8, num_groups=2, mode=mode).train(training), (2, 8, 5, 5))


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_convws_compiles_fullgraph(training):
    torch._dynamo.reset()
    compiled_equals_eager(ConvWS(8, 4, 3, padding=1).train(training), (2, 8, 5, 5))
