"""The Detectron2 extra's build: tools/extras/detectron2/prepare_sdist.py on small fake sdists
(every edit applies exactly, anything unexpected is refused with the file named), and
tools/env.sh's GREENMIM_MM_EXTRAS switch (the default environment stays the default one)."""
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'extras' / 'detectron2' / 'prepare_sdist.py'
spec = importlib.util.spec_from_file_location('prepare_sdist', TOOL)
prepare_sdist = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare_sdist)

SETUP = '''setup(
    package_data={"detectron2.model_zoo": get_model_zoo_configs()},
    ext_modules=get_extensions(),
)
'''
TRANSFORM = 'def __init__(self, src_rect, output_size, interp=Image.LINEAR, fill=0):\n'
MASKS = 'x.astype(np.bool)\ny = np.float32(np.int_(1))\n' + 'np.zeros(1, dtype=np.int)\n' * 17


def make_sdist(path, files):
    with tarfile.open(path, 'w:gz') as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def fake_files(**changes):
    files = {'detectron2_cdo-0.5/setup.py': SETUP,
             'detectron2_cdo-0.5/detectron2/data/transforms/transform.py': TRANSFORM,
             'detectron2_cdo-0.5/detectron2/structures/masks.py': MASKS}
    files.update(changes)
    return {k: v for k, v in files.items() if v is not None}


def test_prepares_a_pure_python_build(tmp_path):
    sdist = make_sdist(tmp_path / 'd2.tar.gz', fake_files())
    root = prepare_sdist.prepare(sdist, tmp_path / 'out')
    setup = (root / 'setup.py').read_text()
    assert 'ext_modules=[],' in setup and 'get_extensions()' not in setup
    assert '"configs/**/*.yaml", "configs/**/*.py"' in setup
    assert 'interp=Image.BILINEAR' in (root / 'detectron2/data/transforms/transform.py').read_text()
    masks = (root / 'detectron2/structures/masks.py').read_text()
    assert masks.startswith('x.astype(bool)\ny = np.float32(np.int_(1))\n')  # np.float32 kept
    assert masks.count('dtype=int)') == 17
    assert (root / 'detectron2/_C.py').read_bytes() == prepare_sdist.STAND_IN.read_bytes()


@pytest.mark.parametrize('changes, match', [
    ({'detectron2_cdo-0.5/setup.py': 'setup(ext_modules=get_extensions())\n'},
     'setup.py: expected exactly one'),
    ({'detectron2_cdo-0.5/detectron2/data/transforms/transform.py': TRANSFORM * 2},
     'transform.py: expected exactly one'),
    ({'detectron2_cdo-0.5/detectron2/structures/masks.py': MASKS + 'np.bool\n'},
     'expected 18 removed numpy aliases, found 19'),
    ({'detectron2_cdo-0.5/detectron2/layers/csrc/vision.cpp': '//'}, r'has the C\+\+ sources'),
    ({'../evil.py': 'x'}, 'outside the destination|Attempted to extract'),
])
def test_refuses_an_unexpected_sdist(tmp_path, changes, match):
    sdist = make_sdist(tmp_path / 'd2.tar.gz', fake_files(**changes))
    with pytest.raises(SystemExit, match=match):
        prepare_sdist.main([str(sdist), str(tmp_path / 'out')])
    assert not (tmp_path / 'evil.py').exists()


def test_refuses_a_non_empty_output_folder(tmp_path):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'keep.txt').write_text('x')
    with pytest.raises(SystemExit, match='not empty'):
        prepare_sdist.main([str(tmp_path / 'missing.tar.gz'), str(tmp_path / 'out')])
    assert (tmp_path / 'out' / 'keep.txt').read_text() == 'x'


# ------------------------------------------------------------------ tools/env.sh's extras switch
REPO = TOOL.parents[3]
DEFAULT_FILES = [f'requirements/{n}.txt' for n in ('build', 'torch', 'runtime', 'mim', 'tests')]
D2_FILES = ['requirements/detectron2.txt', 'tools/extras/detectron2/_C.py',
            'tools/extras/detectron2/prepare_sdist.py']


def env_hash(files):
    """What tools/env.sh keys an environment by: sha256 of the files' concatenation, 16 hex."""
    return hashlib.sha256(b''.join((REPO / f).read_bytes() for f in files)).hexdigest()[:16]


def run_env_sh(extras, home=None, *args):
    env = dict(os.environ, GREENMIM_MM_EXTRAS=extras)
    if home:
        env['GREENMIM_MM_HOME'] = home
    return subprocess.run(['bash', 'tools/env.sh', *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_without_extras_the_environment_is_the_default_one():
    run = run_env_sh('')
    assert run.returncode == 0, run.stderr
    path = Path(run.stdout.strip())
    assert path.name == env_hash(DEFAULT_FILES)
    assert path == Path(sys.prefix)  # this suite runs in it


def test_the_detectron2_extra_is_a_separate_environment_keyed_by_its_files():
    # An unwritable home stops env.sh before it builds anything; its error names the environment.
    run = run_env_sh('detectron2', '/proc/greenmim_mm_home', 'true')
    assert run.returncode != 0
    assert f'/envs/{env_hash(DEFAULT_FILES + D2_FILES)} is missing' in run.stderr, run.stderr
    again = run_env_sh(' detectron2,detectron2 ', '/proc/greenmim_mm_home', 'true')
    assert f'/envs/{env_hash(DEFAULT_FILES + D2_FILES)} is missing' in again.stderr


def test_unknown_extra_is_refused():
    run = run_env_sh('detectron3', None, 'true')
    assert run.returncode == 1
    assert "unknown extra 'detectron3' in GREENMIM_MM_EXTRAS (known: detectron2)" in run.stderr
