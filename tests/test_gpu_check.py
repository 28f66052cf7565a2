"""``benchmarks/gpu_check.py`` runs on the CPU (``--device cpu --quick``) without MMEngine,
mmcv, mmdet, mmseg or torchvision (as on the GPU machine, which has no MMEngine), checks every
BCN mode/path and ConvWS form, and its comparisons fail on a wrong layer. Times are never
asserted."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'gpu_check.py'
BLOCKED = ('mmengine', 'mmcv', 'mmdet', 'mmseg', 'torchvision')
# Runs in a fresh interpreter: a meta-path finder makes the blocked packages unimportable,
# proves it, then runs the script or the snippet that follows.
PRELUDE = textwrap.dedent(f"""
    import importlib.util, runpy, sys
    BLOCKED = {BLOCKED!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.partition('.')[0] in BLOCKED:
                raise ImportError(f'{{name}} is blocked for this test')
            return None

    sys.meta_path.insert(0, Blocker())
    for name in BLOCKED:
        try:
            __import__(name)
        except ImportError:
            continue
        sys.exit(f'{{name}} was importable despite the blocker')
    """)


def run_python(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    process = subprocess.run([sys.executable, '-c', PRELUDE + textwrap.dedent(code)],
                             capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, process.stderr[-3000:]
    return process


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check') / 'gpu_check.json'
    run_python(f"""
        sys.argv = [{str(SCRIPT)!r}, '--device', 'cpu', '--quick', '--out', {str(out)!r}]
        runpy.run_path(sys.argv[0], run_name='__main__')
        """)
    return json.loads(out.read_text())


def test_runs_without_mmengine_and_passes(report):
    assert report['pass'] is True
    assert report['machine']['device'] == 'cpu'
    # The layers came from this checkout, not from an installed mmws.
    assert report['mmws_layers_from'] == str(SCRIPT.parents[1] / 'mmws' / 'models')
    assert set(report['sections']) == {'signatures', 'reference', 'kernels', 'timing',
                                       'resnet50', 'compile'}


def test_operator_signatures_checked(report):
    signatures = report['sections']['signatures']
    assert signatures['pass'] is True
    assert {'native_group_norm', 'native_batch_norm_backward', '_foreach_lerp_.List'} <= set(
        signatures['schemas'])
    assert all(call['pass'] for call in signatures['calls'].values())


def test_every_mode_path_form_precision_and_layout_checked(report):
    reference = report['sections']['reference']
    assert reference['pass'] is True
    precisions = {'float32', 'float16', 'bfloat16'} - set(reference['autocast_skipped'])
    assert {'float32', 'bfloat16'} <= precisions
    layouts = {'contiguous', 'channels_last'}
    expected_bcn = {f'{mode}/{path}/{p}/{layout}' for mode in ('micro', 'batch')
                    for path in ('few_ops', 'two_pass') for p in precisions for layout in layouts}
    expected_bcn |= {f'sync/{path}/float32/contiguous' for path in ('few_ops', 'two_pass')}
    assert set(reference['bcn']) == expected_bcn
    for key, check in reference['bcn'].items():
        assert len(check['steps']) == 3, key
        assert check['estimates']['num_batches_tracked'] == 3, key
        assert set(check['steps'][0]['errors']) == {'output', 'input_grad', 'weight_grad',
                                                   'bias_grad', 'bn_weight_grad',
                                                   'bn_bias_grad'}, key
    expected_conv = {f'unbiased={u}/eps_inside_sqrt={i}/{p}/{layout}' for u in (True, False)
                     for i in (False, True) for p in precisions for layout in layouts}
    assert set(reference['conv_ws']) == expected_conv


def test_cuda_only_parts_and_missing_torchvision_are_skipped_with_reasons(report):
    sections = report['sections']
    assert 'torchvision' in sections['resnet50']['skipped']
    assert 'CUDA' in sections['kernels']['skipped']
    counts = sections['kernels']['counts']
    assert {'GroupNorm', 'BatchNorm2d', 'BCN micro few_ops', 'BCN batch two_pass', 'Conv2d',
            'ConvWS'} <= set(counts)
    assert all(c['count'] > 0 and c['unit'] == 'outermost_aten_ops' for c in counts.values())
    for shape in sections['timing']['shapes'].values():
        assert shape['norm']['GroupNorm']['ratio_to_GroupNorm'] == 1.0
        assert set(shape['conv']) == {'Conv2d', 'ConvWS'}


def test_compiled_bcn_checked_over_three_shapes(report):
    compiled = report['sections']['compile']
    assert compiled['pass'] is True and compiled['fullgraph'] is True
    assert set(compiled['modes']) == {'micro/few_ops', 'micro/two_pass', 'batch/few_ops',
                                      'batch/two_pass'}
    assert all(len(mode['steps']) == 3 for mode in compiled['modes'].values())


def test_checks_fail_on_a_wrong_layer():
    """The comparisons bite: the reference made wrong by a small amount fails them."""
    process = run_python(f"""
        import json
        spec = importlib.util.spec_from_file_location('gpu_check', {str(SCRIPT)!r})
        check = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(check)
        layers = check.load_layers()
        cpu = check.torch.device('cpu')
        scaled = check.reference_bcn_step
        check.reference_bcn_step = lambda *args: scaled(*args) * (1 + 1e-3)
        bcn = check.check_bcn(layers, cpu, 'micro', 'two_pass', 'float32', False,
                              (2, 8, 4, 4), 2)
        # The other variance (1/n for 1/(n-1)): a 1/(2n) relative change, n = 72 here.
        standardize = check.reference_standardize
        check.reference_standardize = lambda w, eps, unbiased, inside: standardize(
            w, eps, not unbiased, inside)
        conv = check.check_conv_ws(layers, cpu, True, False, 'float32', False, (2, 8, 5, 5), 4)
        print(json.dumps({{'bcn': bcn['pass'], 'conv_ws': conv['pass']}}))
        """)
    assert json.loads(process.stdout.splitlines()[-1]) == {'bcn': False, 'conv_ws': False}


def test_flat_kernel_variant_switches_and_checks():
    """Where a device does not take the flat kernels (CUDA today), the check adds the
    ``two_pass_flat`` variants, which run the two-pass path on them: simulated on the CPU by
    taking the CPU off ``FLAT_KERNEL_DEVICES``."""
    process = run_python(f"""
        import json
        spec = importlib.util.spec_from_file_location('gpu_check', {str(SCRIPT)!r})
        check = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(check)
        layers = check.load_layers()
        cpu, functional = check.torch.device('cpu'), layers.functional
        functional.FLAT_KERNEL_DEVICES = ()
        x = check.torch.randn(2, 32, 4, 4)
        result = {{'paths': check.bcn_paths(layers, cpu), 'plain': functional._flat_kernels(x)}}
        with check.flat_kernels_on(layers, cpu):
            result['inside'] = functional._flat_kernels(x)
            result['check'] = check.check_bcn(layers, cpu, 'batch', 'two_pass', 'float32',
                                              False, (2, 8, 4, 4), 2)['pass']
        result['after'] = functional._flat_kernels(x)
        factories = check.layer_factories(layers, 32, cpu)
        layer = factories['BCN micro two_pass_flat']()
        with layer.gpu_check_context():
            result['factory'] = functional._flat_kernels(x)
        check.fwd_bwd(layer, x.requires_grad_(), check.torch.ones_like(x))
        print(json.dumps(result))
        """)
    assert json.loads(process.stdout.splitlines()[-1]) == {
        'paths': ['few_ops', 'two_pass', 'two_pass_flat'], 'plain': False, 'inside': True,
        'check': True, 'after': False, 'factory': True}
