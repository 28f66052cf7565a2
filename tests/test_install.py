"""tools/install.sh's mmcv decision (CPU ops, CUDA ops, keep) and its final check, without
building anything: the script's functions are sourced, nvcc is a fake on PATH, and a CUDA torch
is faked by a venv whose python reports ``torch.version.cuda``."""
import os
import os.path as osp
import subprocess
import sys
import zipfile

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(REPO, 'tools', 'install.sh')
VENV = osp.dirname(osp.dirname(sys.executable))


def bash(command, **env):
    """Runs ``command`` after sourcing the script (which then installs nothing)."""
    result = subprocess.run(['bash', '-c', f'source {SCRIPT} && {command}'],
                            env=dict(os.environ, VENV=VENV, **env), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize('installed, ops, torch_cuda, nvcc, plan', [
    ('', 'none', '', '', 'build-cpu'),                 # fresh CPU machine (CI)
    ('', 'none', '', '12.1', 'build-cpu'),             # nvcc, but a CPU torch
    ('', 'none', '12.1', '', 'build-cpu'),             # a CUDA torch, but no nvcc
    ('', 'none', '12.1', '12.4', 'build-cuda'),        # fresh GPU machine
    ('2.1.0', 'cpu', '', '12.1', 'keep'),
    ('2.1.0', 'cpu', '12.1', '', 'keep'),              # nothing better can be built
    ('2.1.0', 'cpu', '12.1', '12.1', 'build-cuda'),    # CPU-only ops where CUDA ones can be
    ('2.1.0', 'cuda', '12.1', '12.1', 'keep'),
    ('2.1.0', 'cuda', '12.1', '', 'keep'),             # a working CUDA mmcv, no toolkit
    ('2.1.0', 'none', '', '', 'build-cpu'),            # installed without its ops
    ('2.2.0', 'cuda', '12.1', '12.1', 'build-cuda'),   # another version
    ('', 'none', '12.1', '11.8', 'cuda-mismatch'),
])
def test_mmcv_plan(installed, ops, torch_cuda, nvcc, plan):
    assert bash(f'mmcv_plan "{installed}" {ops} "{torch_cuda}" "{nvcc}"') == plan


def fake_nvcc(directory, release):
    directory.mkdir(parents=True, exist_ok=True)
    nvcc = directory / 'nvcc'
    nvcc.write_text('#!/bin/sh\necho "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                    f'echo "Cuda compilation tools, release {release}, V{release}.105"\n')
    nvcc.chmod(0o755)
    return str(nvcc)


def test_nvcc_is_found_as_torch_finds_it(tmp_path):
    on_path = fake_nvcc(tmp_path / 'path', '12.1')
    in_home = fake_nvcc(tmp_path / 'home' / 'bin', '12.4')
    path = f'{tmp_path / "path"}:{os.environ["PATH"]}'
    env = {key: value for key, value in os.environ.items() if key not in ('CUDA_HOME', 'CUDA_PATH')}
    result = subprocess.run(['bash', '-c', f'source {SCRIPT} && find_nvcc'],
                            env=dict(env, PATH=path), capture_output=True, text=True)
    assert result.stdout.strip() == on_path
    assert bash('find_nvcc', PATH=path, CUDA_HOME=str(tmp_path / 'home')) == in_home
    assert bash('find_nvcc', PATH=path, CUDA_HOME=str(tmp_path)) == ''  # no bin/nvcc there
    assert bash(f'nvcc_release {in_home}') == '12.4'


def plan(venv, tmp_path, release):
    path = f'{osp.dirname(fake_nvcc(tmp_path / "bin", release))}:{os.environ["PATH"]}'
    result = subprocess.run(['bash', SCRIPT, '--plan'], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, VENV=venv, PATH=path,
                                                  CUDA_HOME=''))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_cpu_torch_keeps_the_cpu_build_despite_nvcc(tmp_path):
    # This venv: mmcv 2.1.0 with CPU ops under a CPU torch (CI's path).
    out = plan(VENV, tmp_path, '12.1')
    assert out.startswith('mmcv 2.1.0 (ops: cpu), torch CUDA none, nvcc 12.1')
    assert out.endswith('-> keep')


def test_cuda_torch_and_nvcc_rebuild_mmcv_with_cuda_ops(tmp_path):
    # A venv whose python is this one with torch reporting a CUDA 12.1 build.
    site = tmp_path / 'site'
    site.mkdir()
    site.joinpath('sitecustomize.py').write_text("import torch\ntorch.version.cuda = '12.1'\n")
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    python = venv / 'bin' / 'python'
    python.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    out = plan(str(venv), tmp_path, '12.4')
    assert out.startswith('mmcv 2.1.0 (ops: cpu), torch CUDA 12.1, nvcc 12.4')
    assert out.endswith('-> build-cuda')


def test_final_check_runs_the_ops():
    out = bash('check_install', OMP_NUM_THREADS='1')
    assert out.startswith('[mmws install] ok: torch') and '(ops: cpu)' in out


def test_the_wheel_holds_the_plugin_only(tmp_path):
    """``pip wheel .`` packs ``mmws`` and nothing of the toy lab (projects/toy is its own
    package, installed beside it by make install)."""
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '--quiet', REPO, '-w', str(tmp_path)], check=True, timeout=300,
                   cwd=str(tmp_path))
    (wheel, ) = tmp_path.glob('mmws-*.whl')
    modules = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith('.py')]
    assert modules and all(n.startswith('mmws/') for n in modules), modules
    assert not [n for n in modules if 'toy' in n or 'classifier' in n], modules
    assert 'mmws/models/bcn.py' in modules and 'mmws/hooks/metrics_file.py' in modules


def test_the_toy_project_is_importable_from_anywhere(tmp_path):
    """Configs reach the project through custom_imports without PYTHONPATH, from any
    working directory (make install puts it in the venv)."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run([sys.executable, '-c', 'import mmws_toy; print(mmws_toy.__file__)'],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert osp.join('projects', 'toy', 'mmws_toy') in result.stdout
