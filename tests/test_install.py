"""Installing greenmim_mm as a user would: sdist -> wheel built from the sdist -> installed into a
fresh virtual environment layered over the project environment (no network, --no-deps), then
``mim train greenmim_mm <demo config>`` (2 iterations) and ``mim search greenmim_mm`` from another
directory; and the editable install (PEP 660) with ``mim train`` / ``mim run``.

``tools/env.sh`` puts this clone first on PYTHONPATH (the per-clone layer) and keeps its
egg-info; the installed package must be what runs, so every command here runs with a clean
PYTHONPATH from a directory outside the clone, and the test checks which files were used."""
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = 'greenmim_swin-nano_demo_128px.py'
pytestmark = pytest.mark.skipif(
    not Path(sys.executable).with_name('mim').exists(), reason='openmim not installed')
# openmim is installed with --no-deps on purpose (requirements/mim.txt): its only pip-check line
KNOWN_PIP_CHECK = ('openmim 0.3.9 requires opendatalab, which is not installed.',)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'PYTHONHOME')}
    env.update(OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **extra)
    return env


def run(cmd, cwd, timeout=900, **env):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(**env),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (cmd, result.stdout[-3000:], result.stderr[-3000:])
    return result


def source_copy(dest: Path) -> Path:
    """The clone's files without build outputs or its git-ignored per-clone egg-info."""
    ignore = shutil.ignore_patterns('.git', '*.egg-info', '__pycache__', '*.pyc', 'work_dirs',
                                    'data', 'build', 'dist', '.egg-info.*')
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def layered_venv(path: Path) -> Path:
    """A venv without packages of its own whose sys.path ends with this environment's
    site-packages (a .pth line): installs land in the venv, everything else comes from here."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(path)], check=True)
    python = path / 'bin' / 'python'
    site = subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, '_project_env.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    return python


def pip_install(python, *args, cwd):
    return run([python, '-m', 'pip', 'install', '--disable-pip-version-check', '--no-deps',
                '--no-index', '--no-build-isolation', '-q', *args], cwd=cwd)


@pytest.fixture(scope='module')
def demo_data(demo_data_factory):
    return Path(demo_data_factory('install_data', 2, 1))


@pytest.fixture(scope='module')
def sdist_and_wheel(tmp_path_factory):
    """PEP 517 builds without isolation (nothing downloaded): sdist, then the wheel from it."""
    work = tmp_path_factory.mktemp('build')
    src = source_copy(work / 'src')
    dist = work / 'dist'
    dist.mkdir()
    build = ('import sys; from setuptools import build_meta as b; '
             'print(getattr(b, sys.argv[1])(sys.argv[2]))')
    name = run([sys.executable, '-c', build, 'build_sdist', dist], cwd=src).stdout.split()[-1]
    sdist = dist / name
    with tarfile.open(sdist) as tar:
        tar.extractall(work / 'unpacked', filter='data')
    unpacked = next((work / 'unpacked').iterdir())
    name = run([sys.executable, '-c', build, 'build_wheel', dist], cwd=unpacked).stdout.split()[-1]
    return sdist, dist / name


def test_sdist_carries_configs_tools_and_licence(sdist_and_wheel):
    sdist, _ = sdist_and_wheel
    names = {n.split('/', 1)[1] for n in tarfile.open(sdist).getnames() if '/' in n}
    for path in ('LICENSE', 'MANIFEST.in', 'pyproject.toml', 'model-index.yml', 'setup.py',
                 f'configs/pretrain/{DEMO}', 'configs/pretrain/metafile.yml', 'tools/train.py',
                 'tools/_light.py', 'greenmim_mm/apis/cli_args.py', 'docs/install.md'):
        assert path in names, path
    assert not any(n.startswith('greenmim_mm/.mim') for n in names)  # symlinks stay out


def test_wheel_from_sdist_carries_dot_mim_and_declares_dependencies(sdist_and_wheel):
    _, wheel = sdist_and_wheel
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    for path in (f'configs/pretrain/{DEMO}', 'configs/pretrain/metafile.yml', 'tools/train.py',
                 'tools/_light.py', 'tools/convert_checkpoint.py', 'model-index.yml'):
        assert f'greenmim_mm/.mim/{path}' in names, path
    for module in ('checkpoint/loading.py', 'converters/dispatch.py', 'apis/cli_args.py'):
        assert f'greenmim_mm/{module}' in names, module  # the subpackages (find_packages)
    metadata = archive.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    requires = [line.split(': ', 1)[1] for line in metadata.splitlines()
                if line.startswith('Requires-Dist: ')]
    for dist in ('torch', 'mmengine', 'mmcv', 'mmpretrain', 'scipy', 'numpy'):
        assert any(r.startswith(dist) and 'extra ==' not in r for r in requires), dist
    assert not any('==' in r.split(';')[0] for r in requires), 'ranges, not exact pins'
    for extra in ('det', 'seg', 'detectron2', 'tests'):
        assert f'Provides-Extra: {extra}' in metadata
    assert 'License: Apache-2.0' in metadata


def check_pip(python, cwd):
    result = subprocess.run([str(python), '-m', 'pip', 'check', '--disable-pip-version-check'],
                            cwd=cwd, env=clean_env(), capture_output=True, text=True)
    problems = [line for line in result.stdout.splitlines() if line not in KNOWN_PIP_CHECK]
    assert not problems, problems


def mim_train_demo(python, data, cwd):
    work = cwd / 'work'
    result = run([python, '-m', 'mim', 'train', 'greenmim_mm', DEMO, '--work-dir', work,
                  '--cfg-options', f'train_dataloader.dataset.data_root={data}/',
                  'train_cfg.max_epochs=1', 'train_dataloader.batch_size=5'], cwd=cwd)
    log = result.stdout + result.stderr
    assert (work / 'epoch_1.pth').is_file(), log[-3000:]
    assert 'Epoch(train) [1][2/2]' in log, log[-3000:]  # 10 images, batch 5: 2 iterations
    return log


def test_wheel_installed_over_the_environment_trains_and_searches_through_mim(
        sdist_and_wheel, demo_data, tmp_path):
    _, wheel = sdist_and_wheel
    python = layered_venv(tmp_path / 'venv')
    pip_install(python, wheel, cwd=tmp_path)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    where = run([python, '-c', 'import greenmim_mm; print(greenmim_mm.__file__)'], cwd=elsewhere)
    installed = Path(where.stdout.strip()).parent
    assert installed.is_relative_to(tmp_path / 'venv'), installed
    check_pip(python, elsewhere)
    log = mim_train_demo(python, demo_data, elsewhere)
    assert f'{installed}/.mim/tools/train.py' in log and str(REPO) not in log.split('\n')[0]
    found = run([python, '-m', 'mim', 'search', 'greenmim_mm', '--valid-config'], cwd=elsewhere)
    assert "'greenmim_swin-nano_demo_128px'" in found.stdout
    assert "'official_greenmim_swin-base-w7_in1k-224px'" in found.stdout
    print(log[-600:], found.stdout[-400:])


def test_editable_install_works_with_mim_train_and_mim_run(demo_data, tmp_path):
    src = source_copy(tmp_path / 'clone')
    python = layered_venv(tmp_path / 'venv')
    pip_install(python, '-e', src, cwd=tmp_path)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    where = run([python, '-c', 'import greenmim_mm; print(greenmim_mm.__file__)'], cwd=elsewhere)
    assert Path(where.stdout.strip()).resolve() == (src / 'greenmim_mm' / '__init__.py').resolve()
    check_pip(python, elsewhere)
    log = mim_train_demo(python, demo_data, elsewhere)
    assert f'{src}/greenmim_mm/.mim/tools/train.py' in log
    converted = run([python, '-m', 'mim', 'run', 'greenmim_mm', 'convert_checkpoint', '--src',
                     'greenmim_mm', elsewhere / 'work' / 'epoch_1.pth', elsewhere / 'out.pth'],
                    cwd=elsewhere)
    assert 'saved' in converted.stdout and (elsewhere / 'out.pth').is_file()
