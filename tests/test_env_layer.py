"""tools/env.sh: the shared environment holds third-party packages only; each clone is a per-clone
layer, so two clones running at once (and the processes they start) import their own code.

Issue 9 point 4: before, ``env.sh`` installed the calling clone in develop mode into the shared
environment, so torchrun workers of clone A imported clone B's code after B's ``env.sh`` ran.
"""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = Path(sys.prefix)                      # tests run inside tools/env.sh's environment
HOME_DIR = ENV.parent.parent                # <GREENMIM_MM_HOME>/envs/<hash>

# Printed by every process: where it finds greenmim_mm, and where mim finds the package.
PROBE = ("import importlib.util, os; from mim.utils import get_installed_path; "
         "print('PROBE', os.environ.get('RANK', '-'), "
         "importlib.util.find_spec('greenmim_mm').origin, get_installed_path('greenmim_mm'))")


def _clone(dst: Path) -> Path:
    subprocess.run(['git', 'clone', '-q', str(REPO), str(dst)], check=True)
    return dst


def _probe_lines(out: str) -> list:
    return [line.split()[1:] for line in out.splitlines() if line.startswith('PROBE ')]


def test_shared_environment_holds_no_clone():
    """No develop install (egg-link, easy-install.pth line) of any clone in the shared env."""
    site = Path(sysconfig.get_paths()['purelib'])
    assert not (site / 'greenmim-mm.egg-link').exists()
    pth = site / 'easy-install.pth'
    lines = pth.read_text().split() if pth.exists() else []
    assert not [p for p in lines if (Path(p) / 'greenmim_mm').is_dir()], lines


def test_two_clones_at_once_each_import_their_own_code(tmp_path):
    """Both clones' env.sh run at the same time, each starting torchrun workers and asking mim
    for the package; every process finds its own clone's package and ``.mim`` configs."""
    clones = [_clone(tmp_path / name) for name in ('a', 'b')]
    script = 'probe.py'
    runs = []
    for clone in clones:
        (clone / script).write_text(PROBE.replace('; ', '\n') + '\n')
        cmd = ['bash', 'tools/env.sh', 'python', '-m', 'torch.distributed.run', '--standalone',
               '--nproc_per_node', '2', script]
        runs.append(subprocess.Popen(cmd, cwd=clone, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True))
    for clone, run in zip(clones, runs):
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, out[-3000:]
        found = _probe_lines(out)
        assert sorted(rank for rank, _, _ in found) == ['0', '1'], out[-3000:]
        for _, origin, installed in found:
            assert origin == str(clone / 'greenmim_mm' / '__init__.py')
            assert installed == str(clone / 'greenmim_mm')
            assert (Path(installed) / '.mim' / 'configs' / 'pretrain').is_dir()


@pytest.fixture
def read_only_home(tmp_path):
    """The real, complete GREENMIM_MM_HOME bind-mounted read-only (as a prebuilt environment on a
    read-only mount would be)."""
    mnt = tmp_path / 'ro_home'
    mnt.mkdir()
    mounted = subprocess.run(['mount', '--bind', '-o', 'ro', str(HOME_DIR), str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f'cannot bind-mount read-only here: {mounted.stderr.strip()}')
    try:
        yield mnt
    finally:
        subprocess.run(['umount', str(mnt)], check=True)


def test_read_only_prebuilt_environment_is_usable(read_only_home):
    assert not os.access(read_only_home / 'envs', os.W_OK) or subprocess.run(
        ['touch', str(read_only_home / 'envs' / '.probe')]).returncode != 0
    env = dict(os.environ, GREENMIM_MM_HOME=str(read_only_home))
    run = subprocess.run(['bash', 'tools/env.sh', 'python', '-c', PROBE], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    [(_, origin, _)] = _probe_lines(run.stdout)
    assert origin == str(REPO / 'greenmim_mm' / '__init__.py')


def test_unwritable_home_without_environment_is_refused_clearly(tmp_path):
    """No environment there and no way to create it: one error naming the variable and the cause."""
    home = '/proc/greenmim_mm_home'          # mkdir fails there even for root
    env = dict(os.environ, GREENMIM_MM_HOME=home)
    run = subprocess.run(['bash', 'tools/env.sh', 'true'], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    err = run.stderr.strip()
    assert f'GREENMIM_MM_HOME={home} is not writable' in err, err
    assert 'missing or incomplete' in err, err
