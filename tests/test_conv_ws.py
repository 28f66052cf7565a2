import copy
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from reference import reference_standardize
from torch import nn

from mmws import ConvWS
from mmws.models.functional import standardize_weight

FORMS = [(True, False), (True, True), (False, False), (False, True)]


@pytest.mark.parametrize('unbiased,eps_inside_sqrt', FORMS)
@pytest.mark.parametrize('in_ch,out_ch,kernel,groups', [(3, 8, 3, 1), (8, 16, 1, 1),
                                                        (8, 8, 3, 4), (6, 12, (3, 1), 2)])
def test_forward_matches_reference(unbiased, eps_inside_sqrt, in_ch, out_ch, kernel, groups):
    torch.manual_seed(0)
    conv = ConvWS(in_ch, out_ch, kernel, stride=2, padding=1, dilation=1, groups=groups,
                  unbiased=unbiased, eps_inside_sqrt=eps_inside_sqrt)
    x = torch.randn(2, in_ch, 9, 11)
    expected_weight = reference_standardize(conv.weight.detach(), 1e-5, unbiased,
                                            eps_inside_sqrt)
    expected = F.conv2d(x, expected_weight, conv.bias, 2, 1, 1, groups)
    torch.testing.assert_close(conv.standardized_weight(), expected_weight)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_default_form_is_unbiased_std_plus_eps():
    conv = ConvWS(4, 2, 3)
    assert conv.unbiased and not conv.eps_inside_sqrt and conv.eps == 1e-5
    w = conv.weight.detach()
    expected = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(conv.standardized_weight(), expected)


def test_standardized_filters_have_zero_mean_unit_variance():
    conv = ConvWS(16, 32, 3, eps=0.0)
    w = conv.standardized_weight().flatten(1)
    torch.testing.assert_close(w.mean(1), torch.zeros(32), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.std(1), torch.ones(32), atol=1e-5, rtol=0)


@pytest.mark.parametrize('padding_mode', ['zeros', 'reflect', 'replicate', 'circular'])
def test_padding_modes_and_dilation(padding_mode):
    torch.manual_seed(1)
    conv = ConvWS(4, 8, 3, padding=2, dilation=2, padding_mode=padding_mode)
    plain = nn.Conv2d(4, 8, 3, padding=2, dilation=2, padding_mode=padding_mode)
    plain.weight.data = reference_standardize(conv.weight.detach())
    plain.bias.data = conv.bias.detach().clone()
    x = torch.randn(1, 4, 10, 10)
    torch.testing.assert_close(conv(x), plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('unbiased,eps_inside_sqrt', FORMS)
def test_gradcheck(unbiased, eps_inside_sqrt):
    torch.manual_seed(2)
    conv = ConvWS(4, 6, 3, padding=1, groups=2, unbiased=unbiased,
                  eps_inside_sqrt=eps_inside_sqrt).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)

    def module_forward(inp, weight, bias):
        return conv._conv_forward(
            inp, standardize_weight(weight, 1e-5, unbiased, eps_inside_sqrt), bias)

    def reference_forward(inp, weight, bias):
        return F.conv2d(inp, reference_standardize(weight, 1e-5, unbiased, eps_inside_sqrt),
                        bias, 1, 1, 1, 2)

    params = (x, conv.weight, conv.bias)
    assert torch.autograd.gradcheck(module_forward, params)
    # the module's own forward gives the reference's gradients
    grads = torch.autograd.grad(conv(x).square().sum(), params)
    ref_grads = torch.autograd.grad(reference_forward(*params).square().sum(), params)
    for got, ref in zip(grads, ref_grads):
        torch.testing.assert_close(got, ref)


def test_constant_filter_gives_zeros_and_the_limit_gradient():
    """A constant filter standardizes to zeros (up to the rounding of ``(W - μ) / eps``) and
    gets the exact gradient there, the limit ``(g - mean(g)) / eps`` (so it can leave it)."""
    conv = ConvWS(3, 2, 3, bias=False)
    with torch.no_grad():
        conv.weight[0].fill_(0.7)
        conv.weight[1].zero_()
    weight = conv.standardized_weight()
    assert torch.equal(weight[1], torch.zeros_like(weight[1]))
    rounding = 0.7 / conv.eps * 2**-22  # two float32 roundings of |W| / eps
    assert weight[0].abs().max() <= rounding
    x = torch.randn(1, 3, 6, 6)
    conv(x).square().sum().backward()
    standardized = weight.detach().requires_grad_()
    g, = torch.autograd.grad(F.conv2d(x, standardized).square().sum(), standardized)
    g = g.flatten(1)
    expected = (g - g.mean(1, keepdim=True)) / conv.eps
    torch.testing.assert_close(conv.weight.grad.flatten(1), expected, rtol=1e-3, atol=1e-3)


def test_empty_batch():
    conv = ConvWS(3, 4, 3, padding=1)
    out = conv(torch.randn(0, 3, 7, 7))
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()


def test_plain_conv_checkpoint_loads():
    plain = nn.Conv2d(4, 8, 3, padding=1)
    conv = ConvWS(4, 8, 3, padding=1)
    conv.load_state_dict(plain.state_dict(), strict=True)
    assert set(conv.state_dict()) == {'weight', 'bias'}
    torch.testing.assert_close(conv.weight, plain.weight)


def test_state_dict_round_trip():
    torch.manual_seed(3)
    a, b = ConvWS(4, 8, 3), ConvWS(4, 8, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(a(x), b(x))


def test_eval_cache_is_reused_and_invalidated():
    torch.manual_seed(4)
    conv = ConvWS(4, 8, 3).eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        first = conv(x)
        cached = conv._cached_weight
        conv(x)
        assert conv._cached_weight is cached  # reused while the weight is unchanged

        # in-place change (optimizer step, load_state_dict) invalidates the cache
        other = ConvWS(4, 8, 3)
        conv.load_state_dict(other.state_dict())
        torch.testing.assert_close(conv(x), F.conv2d(x, reference_standardize(other.weight),
                                                     other.bias), rtol=1e-5, atol=1e-5)
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    conv.train()
    conv(x).square().sum().backward()
    opt.step()
    conv.eval()
    with torch.no_grad():
        expected = F.conv2d(x, reference_standardize(conv.weight), conv.bias)
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(conv(x), first)
    # a dtype move invalidates it too
    conv.double()
    with torch.no_grad():
        assert conv(x.double()).dtype == torch.float64


def test_ema_hook_validation_uses_the_averaged_weights():
    """MMEngine's EMAHook swaps the weights through ``.data`` (no version bump) before each
    validation; the loops call ``eval()`` after that swap and ``train()`` after the swap back,
    and both drop the cache, so validation sees the averaged weights and training its own."""
    from mmengine.hooks import EMAHook
    torch.manual_seed(5)
    model = nn.Sequential(ConvWS(3, 4, 3))
    runner = SimpleNamespace(model=model, iter=0, max_iters=10)
    hook = EMAHook(momentum=0.5)
    hook.before_run(runner)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(2, 3, 6, 6)

    def expected_output():
        conv = model[0]
        return F.conv2d(x, reference_standardize(conv.weight.detach()), conv.bias.detach())

    for iteration in range(3):
        model.train()  # as the train loop, every iteration
        optimizer.zero_grad()
        model(x).square().sum().backward()
        optimizer.step()
        runner.iter = iteration
        hook.after_train_iter(runner, iteration)
        source = model[0].weight.detach().clone()
        # validation, as ValLoop.run: before_val_epoch hooks, then model.eval()
        hook.before_val_epoch(runner)
        model.eval()
        if iteration:  # the first update copies the weights; then they differ
            assert not torch.equal(model[0].weight, source)
        with torch.no_grad():
            torch.testing.assert_close(model(x), expected_output(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model(x), expected_output(), rtol=1e-5, atol=1e-5)
        hook.after_val_epoch(runner)
        assert torch.equal(model[0].weight, source)
        model.train()
        torch.testing.assert_close(model(x), expected_output(), rtol=1e-5, atol=1e-5)


def test_no_cache_in_training_or_with_grad():
    conv = ConvWS(4, 8, 3)
    x = torch.randn(1, 4, 8, 8)
    conv(x)
    assert conv._cached_weight is None
    conv.eval()
    out = conv(x)  # grad enabled: weight must still receive gradients
    out.sum().backward()
    assert conv.weight.grad is not None and conv._cached_weight is None


def test_copy_and_pickle_drop_cache():
    conv = ConvWS(4, 8, 3).eval()
    with torch.no_grad():
        conv(torch.randn(1, 4, 5, 5))
    assert conv._cached_weight is not None
    assert copy.deepcopy(conv)._cached_weight is None
    assert pickle.loads(pickle.dumps(conv))._cached_weight is None


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_statistics_in_float32(dtype):
    torch.manual_seed(5)
    conv = ConvWS(8, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(1e-3)  # tiny weights: low precision stats would be visibly off
    x = torch.randn(1, 8, 6, 6)
    with torch.autocast('cpu', dtype=dtype):
        out = conv(x)
    assert out.dtype == dtype
    expected = F.conv2d(x, reference_standardize(conv.weight.detach()), conv.bias, padding=1)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.1)


def test_half_weight_keeps_dtype():
    conv = ConvWS(4, 8, 3).to(torch.bfloat16)
    assert conv.standardized_weight().dtype == torch.bfloat16
    assert conv(torch.randn(1, 4, 5, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_low_precision_module_keeps_exact_unbiased_scale():
    # The held sqrt((n-1)/n) follows the statistics' dtype, re-derived, not cast.
    k = (35 / 36)**0.5
    conv = ConvWS(4, 8, 3).double()
    assert torch.equal(conv.unbiased_row_scale, torch.full((8,), k, dtype=torch.float64))
    conv = ConvWS(4, 8, 3).to(torch.bfloat16)
    assert torch.equal(conv.unbiased_row_scale, torch.full((8,), k))
    got = standardize_weight(conv.weight, conv.eps, True, False, conv.unbiased_row_scale)
    expected = reference_standardize(conv.weight.detach().float())
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='-1'):
        ConvWS(4, 4, 3, eps=-1)
    with pytest.raises(ValueError, match=r'kernel_size=\(3, 0\)'):
        ConvWS(4, 4, (3, 0))


@pytest.mark.parametrize('unbiased', [True, False])
@pytest.mark.parametrize('eps_inside_sqrt', [True, False])
def test_filter_of_one_weight_is_refused_with_working_advice(unbiased, eps_inside_sqrt):
    """A filter of 1 weight standardizes to 0 in every form (the output would be the bias,
    every gradient 0): refused, whatever ``unbiased`` is, with a plain conv as the advice."""
    with pytest.raises(ValueError) as error:
        ConvWS(8, 8, 1, groups=8, unbiased=unbiased, eps_inside_sqrt=eps_inside_sqrt)
    message = str(error.value)
    assert 'at least 2 weights per filter' in message and 'got 1' in message
    assert 'in_channels/groups=1' in message and 'kernel_size=1' in message
    assert 'plain conv' in message and 'unbiased=False' not in message
    # the advice works: the plain conv it writes out builds and runs, and so does mmcv's
    # conv for conv_cfg=None
    from mmcv.cnn import build_conv_layer
    suggested = message.split('`')[1]
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    for plain in (eval(suggested, {'nn': nn}), build_conv_layer(None, 8, 8, 1, groups=8)):
        assert type(plain) is nn.Conv2d and plain.weight.shape == (8, 1, 1, 1)
        plain(x).square().sum().backward()
        assert x.grad.abs().sum() > 0
        x.grad = None


def test_one_weight_depthwise_filter_message_names_its_values():
    with pytest.raises(ValueError) as error:
        ConvWS(6, 12, (1, 1), groups=6)
    message = str(error.value)
    assert 'kernel_size=(1, 1)' in message and '`nn.Conv2d(6, 12, (1, 1), groups=6)`' in message
    ConvWS(6, 12, (2, 1), groups=6)  # two weights per filter: standardizable


@pytest.mark.parametrize('in_ch,out_ch', [(0, 8), (8, 0), (0, 0), (-2, 8)])
def test_no_channels_get_their_own_error(in_ch, out_ch):
    with pytest.raises(ValueError) as error:
        ConvWS(in_ch, out_ch, 3)
    message = str(error.value)
    assert f'in_channels={in_ch}, out_channels={out_ch}' in message
    assert 'at least 1 input and 1 output channel' in message
    assert 'per filter' not in message  # not the advice of a different cause
    # the smallest layer the message allows builds and standardizes
    conv = ConvWS(1, 1, 3)
    conv(torch.randn(1, 1, 4, 4)).sum().backward()
    assert conv.weight.grad.abs().sum() > 0


def test_standardize_weight_refuses_a_filter_of_one_weight():
    with pytest.raises(ValueError, match=r'at least 2 weights per filter, got 1 .*\(8, 1, 1, 1\)'):
        standardize_weight(torch.randn(8, 1, 1, 1))


@pytest.mark.parametrize('unbiased,eps_inside_sqrt', FORMS)
def test_float32_precision_when_the_mean_dwarfs_the_spread(unbiased, eps_inside_sqrt):
    """Filters with mean 1000× their spread: float32 output and gradient stay close to the
    float64 reference (the statistics are one-pass Welford, the backward centres first)."""
    torch.manual_seed(6)
    weight = 1 + 1e-3 * torch.randn(32, 16, 3, 3)
    grad = torch.randn(32, 16, 3, 3, dtype=torch.float64)
    exact = weight.double().requires_grad_()
    expected = reference_standardize(exact, 1e-5, unbiased, eps_inside_sqrt)
    expected_grad, = torch.autograd.grad(expected, exact, grad)
    got_weight = weight.clone().requires_grad_()
    got = standardize_weight(got_weight, 1e-5, unbiased, eps_inside_sqrt)
    got_grad, = torch.autograd.grad(got, got_weight, grad.float())
    assert (got.double() - expected).abs().max() <= 2e-4 * expected.abs().max()
    assert (got_grad.double() - expected_grad).abs().max() <= 1e-4 * expected_grad.abs().max()


@pytest.mark.parametrize('eps_inside_sqrt', [False, True])
def test_training_standardizes_with_group_norm_and_batch_norm_backward(eps_inside_sqrt,
                                                                      monkeypatch):
    """The kernels of the training path (deterministic, so asserted): the row statistics come
    from one ``native_group_norm`` (several times faster on the CPU than ``native_batch_norm``'s
    train mode over the same rows), the gradient from one ``native_batch_norm_backward``."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / 'benchmarks'))
    from common import operator_counts
    conv = ConvWS(16, 16, 3, padding=1, eps_inside_sqrt=eps_inside_sqrt)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    names = operator_counts(lambda: conv(x).sum().backward())['names']
    assert names.get('native_group_norm') == 1 and names.get('native_batch_norm_backward') == 1
    assert 'native_batch_norm' not in names and 'batch_norm' not in names
    assert 'native_group_norm_backward' not in names


def test_benchmark_runs(tmp_path, monkeypatch):
    """``benchmarks/bench_conv_ws.py --quick`` runs end to end and reports every variant."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / 'benchmarks'))
    from bench_conv_ws import CONVS, main
    payload = main(['--quick', '--out', str(tmp_path / 'conv_ws.json')])
    backbone = payload['backbone']
    for phase in ('train', 'eval'):
        assert set(backbone[phase]) == set(CONVS)
        assert backbone[phase]['Conv2d']['ratio']['median'] == 1
        assert all(row['ms'] > 0 for row in backbone[phase].values())
    assert len(backbone['standardization']) == 3
    assert {row['name'] for row in backbone['profile']['mmws ConvWS']}
    assert len(payload['targets']) == 2
    for target in payload['targets']:
        assert target['met'] == (target['value'] <= target['limit'])


@pytest.mark.parametrize('unbiased,eps_inside_sqrt', FORMS)
def test_channels_last_equals_contiguous_without_copies(unbiased, eps_inside_sqrt):
    """A channels_last model (``model.to(memory_format=torch.channels_last)``) standardizes
    its weight in memory order: the same numbers, and a channels_last standardized weight (no
    reorder of the weight, nor of its gradient)."""
    torch.manual_seed(7)
    conv = ConvWS(6, 8, 3, padding=1, unbiased=unbiased, eps_inside_sqrt=eps_inside_sqrt)
    twin = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    assert twin.weight.is_contiguous(memory_format=torch.channels_last)
    standardized = twin.standardized_weight()
    assert standardized.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(standardized, conv.standardized_weight())
    x = torch.randn(2, 6, 7, 7)
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    x = x.requires_grad_()
    weights = torch.randn(2, 8, 7, 7)
    (conv(x) * weights).sum().backward()
    (twin(x_cl) * weights).sum().backward()
    torch.testing.assert_close(x_cl.grad, x.grad)
    torch.testing.assert_close(twin.weight.grad, conv.weight.grad)
    torch.testing.assert_close(twin.bias.grad, conv.bias.grad)
    plain = nn.Conv2d(6, 8, 3, padding=1).to(memory_format=torch.channels_last)
    # no weight copy beyond the convolution's own (the memory-order-blind flatten made 4)
    assert weight_copies(twin, x_cl, weights) == weight_copies(plain, x_cl, weights)


def weight_copies(conv: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> int:
    """Weight-shaped copies in one training step of ``conv``."""
    (conv(x) * weights).sum().backward()
    with torch.profiler.profile(record_shapes=True) as prof:
        (conv(x) * weights).sum().backward()
    return sum(event.name in ('aten::copy_', 'aten::clone')
               and event.input_shapes[:1] == [list(conv.weight.shape)] for event in prof.events())
