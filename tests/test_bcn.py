import copy
import math
import warnings

import pytest
import torch
from reference import (ReferenceEstimates, channel_elements, reference_batch_stats,
                       reference_bcn)
from torch import nn

from mmws import BCN

SHAPES = [(2, 8, 5, 7), (1, 64, 9, 9), (3, 16, 4), (2, 32, 3, 3, 3), (4, 8)]
# The two training paths compute the same function; `auto` picks one by shape.
PATHS = ['few_ops', 'two_pass']


def randomize(bcn: BCN, seed: int = 0) -> BCN:
    """Non-trivial affines and estimates, so every term of the formula is exercised."""
    gen = torch.Generator().manual_seed(seed)
    c = bcn.num_features
    with torch.no_grad():
        for p in (bcn.weight, bcn.bn_weight):
            p.copy_(1 + 0.3 * torch.randn(c, generator=gen))
        for p in (bcn.bias, bcn.bn_bias):
            p.copy_(0.3 * torch.randn(c, generator=gen))
        bcn.running_mean.copy_(torch.randn(c, generator=gen))
        bcn.running_var.copy_(0.5 + torch.rand(c, generator=gen))
        bcn.num_batches_tracked.fill_(100)
    return bcn


def params_of(bcn):
    return (bcn.bn_weight, bcn.bn_bias, bcn.weight, bcn.bias)


def make_input(shape, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 3, shape[1]).view(1, -1, *([1] * (len(shape) - 2)))
    return (torch.randn(shape, generator=gen) * scale + 0.7).to(dtype)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('mode', ['micro', 'batch', 'sync'])
def test_eval_uses_estimates(shape, mode):
    groups = 4 if shape[1] >= 4 else 1
    bcn = randomize(BCN(shape[1], num_groups=groups, mode=mode)).eval()
    x = make_input(shape)
    expected = reference_bcn(x.double(), bcn.running_mean.double(), bcn.running_var.double(),
                             *(p.double() for p in params_of(bcn)), groups)
    before = bcn.running_mean.clone()
    torch.testing.assert_close(bcn(x), expected.float(), rtol=1e-4, atol=1e-4)
    assert torch.equal(bcn.running_mean, before)


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('shape', SHAPES)
def test_micro_training_updates_then_normalizes(shape, path):
    bcn = randomize(BCN(shape[1], num_groups=4, momentum=0.2, training_path=path)).train()
    ref = ReferenceEstimates(shape[1], 0.2)
    ref.mean, ref.var, ref.steps = (bcn.running_mean.double().clone(),
                                    bcn.running_var.double().clone(), 100)
    for step in range(3):
        x = make_input(shape, seed=step)
        out = bcn(x)
        ref.update(channel_elements(x.double()))
        expected = reference_bcn(x.double(), ref.mean, ref.var,
                                 *(p.double() for p in params_of(bcn)), 4)
        torch.testing.assert_close(bcn.running_mean, ref.mean.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bcn.running_var, ref.var.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out, expected.float(), rtol=1e-4, atol=1e-4)
    assert int(bcn.num_batches_tracked) == 103


def test_average_warmup_schedule():
    bcn = BCN(8, num_groups=2, momentum=0.25)
    ref = ReferenceEstimates(8, 0.25)
    rates = []
    for step in range(6):
        rates.append(float(bcn.update_rate()))
        x = make_input((2, 8, 4, 4), seed=step)
        bcn(x)
        ref.update(channel_elements(x.double()))
    assert rates == [1.0, 0.5, pytest.approx(1 / 3), 0.25, 0.25, 0.25]
    torch.testing.assert_close(bcn.running_var, ref.var.float(), rtol=1e-5, atol=1e-6)
    # the first step copies the batch statistics: no bias from the (0, 1) initialization
    fresh = BCN(8, num_groups=2)
    x = make_input((1, 8, 6, 6))
    fresh(x)
    torch.testing.assert_close(fresh.running_mean, reference_batch_stats(x)[0])
    torch.testing.assert_close(fresh.running_var, reference_batch_stats(x)[1])


def test_no_warmup_and_frozen_estimates():
    bcn = BCN(8, num_groups=2, momentum=0.1, average_warmup=False)
    assert float(bcn.update_rate()) == pytest.approx(0.1)
    x = make_input((1, 8, 5, 5))
    bcn(x)
    torch.testing.assert_close(bcn.running_mean, 0.1 * reference_batch_stats(x)[0])
    frozen = randomize(BCN(8, num_groups=2, momentum=0.0))
    frozen.num_batches_tracked.zero_()  # frozen even where the warm-up would start
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen(x)
    for key in ('running_mean', 'running_var'):
        assert torch.equal(frozen.state_dict()[key], before[key]), key


def test_momentum_is_a_device_value():
    bcn = randomize(BCN(8, num_groups=2, momentum=0.1))
    bcn.momentum = 0.3
    assert bcn.momentum == 0.3 and float(bcn.update_rate()) == pytest.approx(0.3)
    assert 'rate_config' not in bcn.state_dict()
    assert bcn.double().rate_config.dtype == torch.float64
    with pytest.raises(ValueError, match='-0.5'):
        bcn.momentum = -0.5


def test_population_variance_form_of_the_estimates():
    """Micro mode's variance update is the second moment about the previous mean estimate."""
    bcn = randomize(BCN(8, num_groups=2, momentum=0.2))
    old_mean, old_var = bcn.running_mean.double().clone(), bcn.running_var.double().clone()
    x = make_input((1, 8, 5, 5), seed=4).double() + 2.0
    bcn(x.float())
    elements = channel_elements(x)
    expected = 0.8 * old_var + 0.2 * ((elements - old_mean[:, None])**2).mean(1)
    torch.testing.assert_close(bcn.running_var, expected.float())


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('shape,groups', [((4, 8, 5, 5), 4), ((2, 16, 3), 4), ((6, 16), 2)])
def test_batch_mode_is_batchnorm_then_groupnorm(shape, groups, path):
    bcn = BCN(shape[1], num_groups=groups, mode='batch', average_warmup=False,
              training_path=path).train()
    randomize(bcn).num_batches_tracked.zero_()
    bn = nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1])
    gn = nn.GroupNorm(groups, shape[1])
    with torch.no_grad():
        bn.weight.copy_(bcn.bn_weight), bn.bias.copy_(bcn.bn_bias)
        bn.running_mean.copy_(bcn.running_mean), bn.running_var.copy_(bcn.running_var)
        gn.weight.copy_(bcn.weight), gn.bias.copy_(bcn.bias)
    composed = nn.Sequential(bn, gn).train()
    for step in range(3):
        x = make_input(shape, seed=step).requires_grad_()
        twin = x.detach().clone().requires_grad_()
        out, expected = bcn(x), composed(twin)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        weights = make_input(shape, seed=10 + step)
        (out * weights).sum().backward()
        (expected * weights).sum().backward()
        torch.testing.assert_close(x.grad, twin.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bcn.running_mean, bn.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bcn.running_var, bn.running_var, rtol=1e-6, atol=1e-6)
    for ours, theirs in [(bcn.bn_weight, bn.weight), (bcn.bn_bias, bn.bias),
                         (bcn.weight, gn.weight), (bcn.bias, gn.bias)]:
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-4)


def test_checkpoints_of_the_previous_form_load_and_train_on():
    """mmws 0.1 wrote exactly these keys (estimates from the batch-variance form)."""
    old = {'weight': torch.ones(8), 'bias': torch.zeros(8), 'bn_weight': torch.ones(8),
           'bn_bias': torch.zeros(8), 'running_mean': torch.full((8, ), 0.5),
           'running_var': torch.full((8, ), 0.8), 'num_batches_tracked': torch.tensor(500)}
    bcn = BCN(8, num_groups=2)
    bcn.load_state_dict(old, strict=True)
    for step in range(2):
        out = bcn(make_input((1, 8, 5, 5), seed=step).requires_grad_())
        out.sum().backward()
        assert torch.isfinite(out).all()
    assert int(bcn.num_batches_tracked) == 502


def test_loaded_estimates_without_step_counter_are_kept():
    """An old checkpoint without num_batches_tracked: the first fine-tuning step moves the
    estimates at rate r, it does not overwrite them with one image's statistics."""
    source = randomize(BCN(8, num_groups=2, momentum=0.1))
    legacy = {k: v for k, v in source.state_dict().items() if k != 'num_batches_tracked'}
    bcn = BCN(8, num_groups=2, momentum=0.1)
    bcn.load_state_dict(legacy)
    assert float(bcn.update_rate()) == pytest.approx(0.1)
    x = make_input((1, 8, 5, 5))
    bcn(x)
    expected = 0.9 * source.running_mean + 0.1 * reference_batch_stats(x)[0]
    torch.testing.assert_close(bcn.running_mean, expected)


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('shape', [(4, 8, 5, 5), (2, 16, 3), (3, 8, 2, 2, 2)])
@pytest.mark.parametrize('mode', ['batch', 'sync'])
def test_batch_modes_use_batch_statistics(shape, mode, path):
    bcn = randomize(BCN(shape[1], num_groups=4, mode=mode, momentum=0.1,
                        training_path=path)).train()
    x = make_input(shape).requires_grad_()
    out = bcn(x)
    mean, var = reference_batch_stats(x.double())
    expected = reference_bcn(x.double(), mean, var, *(p.double() for p in params_of(bcn)), 4)
    torch.testing.assert_close(out, expected.float(), rtol=1e-4, atol=1e-4)
    # gradients flow through the batch statistics, as in BN
    got = torch.autograd.grad((out * make_input(shape, seed=9)).sum(), (x, *params_of(bcn)))
    ref = torch.autograd.grad((expected * make_input(shape, seed=9).double()).sum(),
                              (x, *params_of(bcn)))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r.float(), rtol=1e-4, atol=1e-4)
    # and the estimates follow them, the variance unbiased (100 steps tracked: rate = r)
    values = x.numel() // shape[1]
    torch.testing.assert_close(bcn.running_var,
                               (0.9 * randomize(BCN(shape[1], 4)).running_var.double() +
                                0.1 * var * values / (values - 1)).float(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('mode', ['micro', 'batch'])
@pytest.mark.parametrize('shape', [(2, 8, 3, 4), (1, 4, 5), (3, 4)])
def test_gradcheck(mode, shape, path):
    # momentum=0: the estimates stay fixed across gradcheck's repeated forwards
    bcn = randomize(BCN(shape[1], num_groups=2, mode=mode, momentum=0.0,
                        training_path=path)).double().train()
    x = make_input(shape, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda inp, *params: bcn(inp), (x, *params_of(bcn)))


@pytest.mark.parametrize('path', PATHS)
def test_micro_gradients_match_reference(path):
    shape = (2, 16, 6, 5)
    bcn = randomize(BCN(16, num_groups=4, training_path=path)).train()
    x = make_input(shape).requires_grad_()
    out = bcn(x)
    mean, var = bcn.running_mean.double(), bcn.running_var.double()  # after this step's update
    x_ref = x.detach().double().requires_grad_()
    params_ref = [p.detach().double().requires_grad_() for p in params_of(bcn)]
    expected = reference_bcn(x_ref, mean, var, *params_ref, 4)
    weights = make_input(shape, seed=7)
    got = torch.autograd.grad((out * weights).sum(), (x, *params_of(bcn)))
    ref = torch.autograd.grad((expected * weights.double()).sum(), (x_ref, *params_ref))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('path', PATHS)
def test_shared_module_applied_twice_before_backward(path):
    """A head applied to every FPN level: each application's backward uses the estimates of
    its own forward, though the buffers moved again before the backward runs."""
    bcn = randomize(BCN(8, num_groups=2, momentum=0.3, training_path=path)).train()
    inputs = [make_input((1, 8, 6, 6), seed=1), make_input((1, 8, 3, 3), seed=2)]
    leaves = [x.clone().requires_grad_() for x in inputs]
    outputs, estimates = [], []
    for x in leaves:
        outputs.append(bcn(x))
        estimates.append((bcn.running_mean.double().clone(), bcn.running_var.double().clone()))
    weights = [make_input(x.shape, seed=5 + i) for i, x in enumerate(inputs)]
    sum((out * w).sum() for out, w in zip(outputs, weights)).backward()
    params = [p.detach().double() for p in params_of(bcn)]
    for x, leaf, (mean, var), w in zip(inputs, leaves, estimates, weights):
        x_ref = x.double().requires_grad_()
        (reference_bcn(x_ref, mean, var, *params, 2) * w.double()).sum().backward()
        torch.testing.assert_close(leaf.grad, x_ref.grad.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('mode', ['micro', 'batch'])
@pytest.mark.parametrize('path', PATHS)
def test_channels_last_matches_contiguous(path, mode):
    bcn = randomize(BCN(32, num_groups=8, mode=mode, training_path=path)).train()
    twin = copy.deepcopy(bcn)
    x = make_input((2, 32, 6, 7))
    x_cl = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    x = x.requires_grad_()
    out, out_cl = bcn(x), twin(x_cl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out)
    weights = make_input((2, 32, 6, 7), seed=3)
    (out * weights).sum().backward()
    (out_cl * weights).sum().backward()
    torch.testing.assert_close(x_cl.grad, x.grad, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(params_of(twin), params_of(bcn)):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(twin.running_var, bcn.running_var)


@pytest.mark.parametrize('path', PATHS)
def test_saves_only_the_input_for_backward(path):
    bcn = BCN(64, num_groups=32, training_path=path).train()
    x = make_input((1, 64, 32, 32)).requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        bcn(x)
    full_size = [t for t in saved if t.numel() == x.numel()]
    # the few-operator path (small maps) keeps BN(x) too instead of recomputing it
    assert len({t.data_ptr() for t in full_size}) == (1 if path == 'two_pass' else 2)
    assert all(t.numel() <= 64 * 2 for t in saved if t.numel() != x.numel())


def test_state_dict_keys_and_round_trip():
    bcn = randomize(BCN(16, num_groups=4))
    assert set(bcn.state_dict()) == {
        'weight', 'bias', 'bn_weight', 'bn_bias', 'running_mean', 'running_var',
        'num_batches_tracked'
    }
    for key in ('weight', 'bias', 'bn_weight', 'bn_bias', 'running_mean', 'running_var'):
        assert bcn.state_dict()[key].shape == (16, )
    other = BCN(16, num_groups=4)
    other.load_state_dict(bcn.state_dict(), strict=True)
    x = make_input((2, 16, 5, 5))
    torch.testing.assert_close(other.eval()(x), bcn.eval()(x))
    legacy = {k: v for k, v in bcn.state_dict().items() if k != 'num_batches_tracked'}
    BCN(16, num_groups=4).load_state_dict(legacy, strict=True)
    # the skip counter is a diagnostic of the run, not part of a checkpoint
    bcn.num_batches_seen.fill_(3)
    assert int(bcn.num_batches_skipped) == 3
    assert not {'num_batches_seen', 'num_batches_clean',
                'num_batches_skipped'} & set(bcn.state_dict())
    other.num_batches_seen.fill_(5)
    other.load_state_dict(bcn.state_dict(), strict=True)
    assert int(other.num_batches_skipped) == 0


def test_empty_input_leaves_estimates_untouched():
    bcn = randomize(BCN(16, num_groups=4)).train()
    before = {k: v.clone() for k, v in bcn.state_dict().items()}
    x = torch.randn(0, 16, 7, 7, requires_grad=True)
    out = bcn(x)
    assert out.shape == (0, 16, 7, 7)
    out.sum().backward()
    for key, value in bcn.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert BCN(16, num_groups=4, mode='batch')(torch.randn(0, 16)).shape == (0, 16)


def test_single_value_per_channel():
    x = torch.randn(1, 8, 1, 1)
    out = BCN(8, num_groups=2)(x)  # micro mode: fine (ASPP image pool at 1 image/GPU)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r'more than 1 value per channel.*\(1, 8, 1, 1\)'):
        BCN(8, num_groups=2, mode='batch')(x)
    BCN(8, num_groups=2, mode='batch').eval()(x)  # eval uses the estimates


def test_constant_input_is_finite():
    bcn = BCN(8, num_groups=2).train()
    x = torch.full((1, 8, 4, 4), 3.0, requires_grad=True)
    out = bcn(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('mode', ['micro', 'batch'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_training_equals_float32(dtype, mode, path):
    """An autocast step normalizes the fp16/bf16 activation in float32: the result (output,
    gradients, estimates) of the float32 layer on the rounded input."""
    bcn = randomize(BCN(16, num_groups=4, mode=mode, training_path=path)).train()
    twin = copy.deepcopy(bcn)
    x = make_input((2, 16, 5, 5)).to(dtype)
    x_half, x_float = x.clone().requires_grad_(), x.float().requires_grad_()
    weights = make_input((2, 16, 5, 5), seed=4)
    with torch.autocast('cpu', dtype=dtype):
        out = bcn(x_half)
    expected = twin(x_float)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert x_half.grad.dtype == dtype
    torch.testing.assert_close(x_half.grad, x_float.grad.to(dtype))
    for ours, theirs in zip(params_of(bcn), params_of(twin)):
        torch.testing.assert_close(ours.grad, theirs.grad)
    torch.testing.assert_close(bcn.running_var, twin.running_var)


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_lower_precision_input_outside_autocast(dtype, training):
    """As nn.GroupNorm: a float32 layer takes an fp16/bf16 input, normalizes it in float32 and
    returns the input's dtype."""
    bcn = randomize(BCN(16, num_groups=4)).train(training)
    twin = copy.deepcopy(bcn)
    x = make_input((2, 16, 5, 5)).to(dtype).requires_grad_()
    out = bcn(x)
    assert out.dtype == dtype
    x_float = x.detach().float().requires_grad_()
    expected = twin(x_float)
    torch.testing.assert_close(out, expected.to(dtype))
    if training:
        out.float().sum().backward()
        expected.sum().backward()
        assert x.grad.dtype == dtype
        torch.testing.assert_close(x.grad, x_float.grad.to(dtype))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_runs_in_float32(dtype):
    bcn = randomize(BCN(16, num_groups=4)).eval()
    x = make_input((2, 16, 5, 5))
    with torch.autocast('cpu', dtype=dtype):
        out = bcn(x.to(dtype))
    assert out.dtype == torch.float32
    expected = reference_bcn(x.to(dtype).double(), bcn.running_mean.double(),
                             bcn.running_var.double(), *(p.double() for p in params_of(bcn)), 4)
    torch.testing.assert_close(out, expected.float(), rtol=1e-4, atol=1e-4)


def test_bfloat16_module():
    bcn = BCN(16, num_groups=4).to(torch.bfloat16)
    out = bcn(make_input((2, 16, 5, 5), dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match='num_features=30, num_groups=32'):
        BCN(30)
    with pytest.raises(ValueError, match='1.5'):
        BCN(32, momentum=1.5)
    with pytest.raises(ValueError, match="'bogus'"):
        BCN(32, mode='bogus')
    with pytest.raises(ValueError, match=r'\(2, 16, 4, 4\)'):
        BCN(32)(torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match="training_path.*'fast'"):
        BCN(32, training_path='fast')


def test_is_a_group_norm_not_a_batch_norm():
    from torch.nn.modules.batchnorm import _BatchNorm
    bcn = BCN(64)
    assert isinstance(bcn, nn.GroupNorm) and not isinstance(bcn, _BatchNorm)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(bcn))
    assert converted[0] is bcn


def test_trace_uses_reference_composition():
    bcn = randomize(BCN(16, num_groups=4)).eval()
    x = make_input((1, 16, 5, 5))
    traced = torch.jit.trace(bcn, x)
    torch.testing.assert_close(traced(x), bcn(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match='eval'):
        torch.jit.trace(bcn.train(), x)


def reference_steps(shape, mode, steps, momentum=0.3, groups=4):
    """Outputs, gradients (input, four affines) and estimates of ``steps`` training steps of a
    float64 BCN written from the equations (:mod:`reference`), on the inputs of
    :func:`step_inputs`."""
    ref = ReferenceEstimates(shape[1], momentum, form='est_bn' if mode == 'micro' else
                             'unbiased')
    params = [p.detach().double() for p in params_of(randomize(BCN(shape[1], groups)))]
    ref.mean, ref.var, ref.steps = params_of_estimates(shape[1])
    results = []
    for x, weights in step_inputs(shape, steps):
        x = x.double().requires_grad_()
        leaves = [p.clone().requires_grad_() for p in params]
        if mode == 'micro':
            ref.update(channel_elements(x.detach()))
            mean, var = ref.mean, ref.var
        else:
            mean, var = reference_batch_stats(x)
            ref.update(channel_elements(x.detach()))
        out = reference_bcn(x, mean, var, *leaves, groups)
        grads = torch.autograd.grad((out * weights.double()).sum(), [x, *leaves])
        results.append([out.detach(), *grads, ref.mean.clone(), ref.var.clone()])
    return results, ref.steps


def params_of_estimates(channels):
    bcn = randomize(BCN(channels, 4))
    return bcn.running_mean.double().clone(), bcn.running_var.double().clone(), 100


def step_inputs(shape, steps):
    return [(make_input(shape, seed=step), make_input(shape, seed=50 + step))
            for step in range(steps)]


def layer_steps(bcn, shape, steps, dtype=torch.float64, memory_format=None):
    results = []
    for x, weights in step_inputs(shape, steps):
        x = x.to(dtype)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        x.requires_grad_()
        out = bcn(x)
        grads = torch.autograd.grad((out * weights.to(dtype)).sum(), [x, *params_of(bcn)])
        results.append([out.detach(), *grads, bcn.running_mean.clone(),
                        bcn.running_var.clone()])
    return results


@pytest.mark.parametrize('shape', [(2, 8, 5, 7), (1, 16, 4, 4), (3, 8, 6), (1, 8, 1, 1)])
@pytest.mark.parametrize('mode', ['micro', 'batch', 'sync'])
def test_paths_equal_the_float64_reference_and_each_other(mode, shape):
    """Four float64 training steps: outputs, the input and all four parameter gradients, the
    estimates and the step counter, against the equations and between the paths."""
    if mode != 'micro' and shape[0] * math.prod(shape[2:]) < 2:
        pytest.skip('batch statistics need 2 values per channel')
    steps = 4
    expected, expected_steps = reference_steps(shape, mode, steps)
    per_path = {}
    for path in PATHS:
        bcn = randomize(BCN(shape[1], num_groups=4, mode=mode, momentum=0.3,
                            training_path=path)).double().train()
        per_path[path] = layer_steps(bcn, shape, steps)
        assert int(bcn.num_batches_tracked) == expected_steps
        for step, (got, want) in enumerate(zip(per_path[path], expected)):
            for index, (a, b) in enumerate(zip(got, want)):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10,
                                           msg=lambda m: f'{path} step {step} tensor {index}: {m}')
    for a_step, b_step in zip(*per_path.values()):
        for a, b in zip(a_step, b_step):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('mode', ['micro', 'batch'])
def test_paths_agree_in_float32_channels_last(mode):
    layers = {path: randomize(BCN(32, num_groups=8, mode=mode, training_path=path)).train()
              for path in PATHS}
    results = {path: layer_steps(layer, (2, 32, 6, 7), 3, torch.float32,
                                 torch.channels_last) for path, layer in layers.items()}
    for a_step, b_step in zip(*results.values()):
        for a, b in zip(a_step, b_step):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_auto_path_by_size():
    bcn = BCN(64, num_groups=32).train()
    large = torch.randn(2, 64, 64, 64)  # 2^19 elements
    assert bcn._path(torch.randn(2, 64, 32, 32)) == 'few_ops'
    assert bcn._path(torch.randn(1, 64, 90, 90)) == 'few_ops'
    assert bcn._path(large) == 'two_pass'
    assert bcn._path(large.contiguous(memory_format=torch.channels_last)) == 'two_pass'
    assert bcn._path(torch.randn(0, 64, 64, 64)) == 'few_ops'
    assert bcn._path(torch.randn(512, 64, 7, 7)) == 'two_pass'  # a RoI head's 512 RoIs
    assert bcn._path(torch.randn(32, 64, 7, 7)) == 'few_ops'
    assert BCN(64, training_path='two_pass')._path(torch.randn(2, 64, 4, 4)) == 'two_pass'
    assert BCN(64, training_path='few_ops')._path(large) == 'few_ops'


def test_two_pass_allocates_one_input_sized_tensor_as_group_norm():
    """The output pass overwrites the statistics pass's output (CPU): a training forward
    allocates one tensor of the input's size, as nn.GroupNorm's does."""
    from torch.profiler import ProfilerActivity, profile
    x = torch.randn(2, 64, 64, 64)

    def input_sized_allocations(layer):
        layer(x)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            layer(x)
        return sum(event.cpu_memory_usage >= x.nbytes and not (
            event.cpu_parent and event.cpu_parent.cpu_memory_usage >= x.nbytes)
                   for event in prof.events())

    assert input_sized_allocations(nn.GroupNorm(32, 64)) == 1
    assert input_sized_allocations(BCN(64, training_path='two_pass').train()) == 1


def test_half_sums_are_contiguous_rows():
    """The per-(sample, channel) coefficients reach the CPU batch-norm kernels contiguous
    (strided ones take its slow path)."""
    from mmws.models.functional import _half_sums, point_basis
    points = torch.randn(3, 8, 2)
    shift, spread = _half_sums(points, point_basis())
    assert shift.is_contiguous() and spread.is_contiguous()
    torch.testing.assert_close(shift, points.mean(-1))
    torch.testing.assert_close(spread, (points[..., 0] - points[..., 1]) / 2)


def test_two_pass_float32_accuracy_on_spread_channel_means():
    """Channel means 100× their spread, 2×256×64²: the two-pass path's float32 error (output,
    input gradient; max abs against float64) within 1.5× the few-operator path's."""
    shape = (2, 256, 64, 64)
    gen = torch.Generator().manual_seed(0)
    means = 100 * torch.randn(1, shape[1], 1, 1, generator=gen)
    x = torch.randn(shape, generator=gen) + means
    weights = torch.randn(shape, generator=gen)
    errors = {}
    reference = randomize(BCN(shape[1], num_groups=32, training_path='few_ops')).double()
    reference.running_mean.copy_(means.flatten())
    x64 = x.double().requires_grad_()
    out64 = reference.train()(x64)
    grad64, = torch.autograd.grad((out64 * weights.double()).sum(), x64)
    for path in PATHS:
        bcn = randomize(BCN(shape[1], num_groups=32, training_path=path))
        bcn.running_mean.copy_(means.flatten())
        x32 = x.clone().requires_grad_()
        out = bcn.train()(x32)
        grad, = torch.autograd.grad((out * weights).sum(), x32)
        errors[path] = (float((out.double() - out64).abs().max()),
                        float((grad.double() - grad64).abs().max()))
    for few, two in zip(errors['few_ops'], errors['two_pass']):
        assert two <= 1.5 * few, errors


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('mode', ['micro', 'batch', 'sync'])
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_batch_leaves_estimates_and_counter(bad, mode, path):
    bcn = randomize(BCN(16, num_groups=4, mode=mode, momentum=0.3, training_path=path))
    bcn.train()
    before = copy.deepcopy(bcn)
    x = make_input((2, 16, 5, 5))
    x[1, 3, 2, 2] = bad  # one value in channel 3
    bcn(x)
    assert torch.isfinite(bcn.running_mean).all() and torch.isfinite(bcn.running_var).all()
    assert bcn.running_mean[3] == before.running_mean[3]
    assert bcn.running_var[3] == before.running_var[3]
    # the other channels moved, as in a clean step
    clean = copy.deepcopy(before)
    clean(torch.where(torch.isfinite(x), x, torch.zeros(())))
    others = [c for c in range(16) if c != 3]
    torch.testing.assert_close(bcn.running_mean[others], clean.running_mean[others])
    torch.testing.assert_close(bcn.running_var[others], clean.running_var[others])
    assert int(bcn.num_batches_tracked) == 100 and int(bcn.num_batches_skipped) == 1
    out = bcn(make_input((2, 16, 5, 5), seed=3).requires_grad_())
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert int(bcn.num_batches_tracked) == 101 and int(bcn.num_batches_skipped) == 1


def test_skipped_steps_warn_once_per_layer_at_eval():
    bcn = BCN(8, num_groups=2).train()
    x = make_input((1, 8, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        bcn.eval()  # nothing skipped: no warning
    bcn.train()(torch.full((1, 8, 4, 4), float('nan')))
    with pytest.warns(RuntimeWarning, match='1 training step.*non-finite'):
        bcn.eval()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        bcn.train()(x * float('inf'))
        bcn.eval()
        bcn.eval()(x)


@pytest.mark.parametrize('path', PATHS)
def test_output_takes_an_in_place_activation(path):
    """BCN → ReLU(inplace=True), as every ConvModule builds it."""
    bcn = randomize(BCN(16, num_groups=4, training_path=path)).train()
    reference = copy.deepcopy(bcn)
    x = make_input((2, 16, 5, 5)).requires_grad_()
    twin = x.detach().clone().requires_grad_()
    out = nn.ReLU(inplace=True)(bcn(x))
    expected = reference(twin).relu()
    (out * make_input(out.shape, seed=3)).sum().backward()
    (expected * make_input(out.shape, seed=3)).sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, twin.grad)
