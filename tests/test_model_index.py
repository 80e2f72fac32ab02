"""model-index.yml and the metafiles (OpenMMLab's format, read by ``mim search``): every config
is listed, every path exists, and the official released checkpoints carry what a user needs
(weights URL, licence, the converter call, the fine-tuning config)."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MIM = Path(sys.executable).with_name('mim')
OFFICIAL_HOSTS = ('https://drive.google.com/file/d/',
                  'https://github.com/Haoqing-Wang/LocalMIM/releases/download/')


def metafiles():
    index = yaml.safe_load((REPO / 'model-index.yml').read_text())
    return [REPO / path for path in index['Import']]


def models():
    out = []
    for path in metafiles():
        out += yaml.safe_load(path.read_text())['Models']
    return out


def shipped_configs():
    configs = set()
    for path in (REPO / 'configs').rglob('*'):
        if path.suffix in ('.py', '.yaml') and '_base_' not in path.parts:
            configs.add(str(path.relative_to(REPO)))
    return configs


def test_every_config_is_listed_once_and_every_listed_path_exists():
    listed = [m['Config'] for m in models() if 'Config' in m and
              not m['Name'].startswith('official_')]
    assert sorted(listed) == sorted(shipped_configs())
    for model in models():
        if 'Config' in model:
            assert (REPO / model['Config']).is_file(), model['Name']
    names = [m['Name'] for m in models()]
    assert len(names) == len(set(names))


def test_collections_link_papers_and_existing_docs():
    for path in metafiles():
        data = yaml.safe_load(path.read_text())
        names = {c['Name'] for c in data['Collections']}
        for collection in data['Collections']:
            assert collection['Paper']['URL'].startswith('https://arxiv.org/abs/')
            assert (REPO / collection['README']).is_file(), collection['README']
        assert {m['In Collection'] for m in data['Models']} <= names


def test_official_checkpoints_say_how_to_convert_and_fine_tune():
    from greenmim_mm.converters import SOURCES, TWINS_SOURCES
    official = [m for m in models() if m['Name'].startswith('official_')]
    assert len(official) == 8  # GreenMIM: 3 Swin; LocalMIM: ViT-B/L, Swin-B pixel/HOG, Swin-L
    for model in official:
        meta = model['Metadata']
        assert model['Weights'].startswith(OFFICIAL_HOSTS), model['Name']
        assert meta['License']
        if 'greenmim' in model['Name']:
            assert meta['License'].startswith('CC-BY-NC 4.0')
        argv = shlex.split(meta['Convert'])
        assert argv[:2] == ['python', 'tools/convert_checkpoint.py'] and argv[-2:] == ['IN.pth', 'OUT.pth']
        assert argv[argv.index('--src') + 1] in SOURCES + TWINS_SOURCES
        fine_tune = meta['Fine-tune Config']
        if fine_tune.startswith('configs/'):
            assert (REPO / fine_tune).is_file(), fine_tune
        else:
            assert 'vit-large' in model['Name']  # no ViT-L fine-tuning config is shipped
    released = {m['Name']: m['Metadata']['Convert'] for m in official}
    assert '--src official-g1 ' in released['official_greenmim_swin-base-w7_in1k-224px']
    assert '--src localmim-official-swin ' in released[
        'official_localmim_swin-base-w7_hog_400e_in1k-224px']


def mim(*args, cwd):
    return subprocess.run([str(MIM), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, COLUMNS='200'))


@pytest.mark.skipif(not MIM.exists(), reason='openmim not installed')
def test_mim_search_lists_every_entry_and_shows_the_released_weights(tmp_path):
    run = mim('search', 'greenmim_mm', '--valid-config', cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    for model in models():
        assert f"'{model['Name']}'" in run.stdout, model['Name']
    name = 'official_greenmim_swin-large-w14_in1k-224px'
    run = mim('search', 'greenmim_mm', '--config', name, '--display-width', '200', cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f'config id: {name}' in run.stdout
    assert 'https://drive.google.com/file/d/1Tw1KeGviVWxbVt3h1TT7BxTX1aLeT-Nm' in run.stdout
    assert '--src official-g1 --stage-windows 14,14,14,7' in run.stdout
    assert 'configs/finetune/greenswin-large-w14_16xb48-amp-100e_in1k-224px.py' in run.stdout
    assert 'cc-by-nc 4.0' in run.stdout  # mim lower-cases text fields
