"""greenmim_mm: efficient masked-image-modeling pre-training for hierarchical ViTs (OpenMMLab plugin).

The installed package carries ``configs/``, ``tools/`` and ``model-index.yml`` in
``greenmim_mm/.mim`` (as mmpretrain and mmdet do) so that ``mim train greenmim_mm CONFIG`` and
``mim search greenmim_mm`` find them. In the source tree ``greenmim_mm/.mim`` holds relative
symlinks to the top-level files (used by editable installs and by ``tools/env.sh``); ``build_py``
copies the real files into wheels, so a wheel built from the sdist (``MANIFEST.in`` ships the
top-level folders) has them too.

Editable installs (``pip install -e .``, PEP 660): mim looks the package up as
``os.path.join(<dist location>, <first line of top_level.txt>)`` (openmim 0.3.9
``get_installed_path``). The editable wheel's dist-info sits in site-packages, where no
``greenmim_mm`` folder exists, so ``EditableWheelForMim`` writes the absolute path of this clone's
package as that first line (``os.path.join`` keeps an absolute second part): mim then finds the
clone's ``.mim`` symlinks and the configs and tools stay live. Regular wheels are unchanged.
"""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

try:  # setuptools >= 64 (PEP 660)
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # pragma: no cover - old setuptools: `setup.py develop` (egg-link) works with mim
    editable_wheel = None

HERE = os.path.dirname(os.path.abspath(__file__))
MIM_FILES = ('configs', 'tools', 'model-index.yml')

# Ranges: the lower bounds are the oldest releases with the APIs we use (torch: the weights-only
# loading API, torch.serialization.safe_globals); upper bounds only where a newer release is known
# to break (mmengine/mmpretrain assert mmengine < 1.0). Tested: see requirements/*.txt and
# docs/install.md. Nothing here downgrades a package a user already has within these ranges.
INSTALL_REQUIRES = [
    'torch>=2.6',
    'torchvision>=0.21',
    'mmengine>=0.10.7,<1.0',
    'mmcv>=2.0.0,<2.4.0',
    'mmpretrain>=1.2.0,<1.3',
    'numpy>=1.24',
    'scipy>=1.10',
]
EXTRAS_REQUIRE = {
    # mmdet 3.3 asserts mmcv < 2.2.0 at import (its wheel does not declare it)
    'det': ['mmdet>=3.3.0,<3.4', 'mmcv>=2.0.0,<2.2.0'],
    # mmseg's model code imports its CLIP tokenizer (ftfy, regex), which it lists only under its
    # `multimodal` extra
    'seg': ['mmsegmentation>=1.2.2,<1.3', 'mmcv>=2.0.0,<2.2.0', 'ftfy>=6', 'regex'],
    # detectron2 itself is not on the registry: install it from source (docs/detectron2.md); these
    # are its runtime dependencies (v0.5's install_requires, in its ranges)
    'detectron2': ['fvcore>=0.1.5,<0.1.6', 'iopath>=0.1.7,<0.1.10', 'omegaconf>=2.1',
                   'hydra-core>=1.1', 'yacs>=0.1.8', 'cloudpickle', 'tensorboard', 'black'],
    'tests': ['pytest>=8', 'timm>=1.0.20,<2', 'mmdet>=3.3.0,<3.4', 'mmcv>=2.0.0,<2.2.0',
              'mmsegmentation>=1.2.2,<1.3', 'ftfy>=6', 'regex'],
}


def read_version():
    ns = {}
    with open(os.path.join(HERE, 'greenmim_mm', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


def read_readme():
    with open(os.path.join(HERE, 'README.md'), encoding='utf-8') as f:
        return f.read()


class BuildPyWithMim(build_py):
    """Copy ``configs/``, ``tools/`` and ``model-index.yml`` into ``greenmim_mm/.mim`` of the build tree."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            return  # editable installs use the source tree's .mim symlinks
        for name in MIM_FILES:
            src = os.path.join(HERE, name)
            dst = os.path.join(self.build_lib, 'greenmim_mm', '.mim', name)
            if os.path.islink(dst) or os.path.isfile(dst):
                os.remove(dst)
            elif os.path.isdir(dst):
                shutil.rmtree(dst)
            if os.path.isdir(src):
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
            else:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)


CMDCLASS = {'build_py': BuildPyWithMim}

if editable_wheel is not None:
    class EditableWheelForMim(editable_wheel):
        """PEP 660 editable wheel whose ``top_level.txt`` leads mim to this clone (module docstring)."""

        def _create_wheel_file(self, bdist_wheel):
            top_level = os.path.join(str(self.dist_info_dir), 'top_level.txt')
            package_dir = os.path.join(HERE, 'greenmim_mm')
            with open(top_level, 'w') as f:
                f.write(f'{package_dir}\ngreenmim_mm\n')
            return super()._create_wheel_file(bdist_wheel)

    CMDCLASS['editable_wheel'] = EditableWheelForMim

setup(
    name='greenmim_mm',
    version=read_version(),
    description='GreenMIM / LocalMIM masked-image-modeling pre-training for hierarchical '
                'vision transformers, as an OpenMMLab (mmpretrain/mmdet) plugin',
    long_description=read_readme(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['greenmim_mm', 'greenmim_mm.*']),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    cmdclass=CMDCLASS,
    zip_safe=False,
    license='Apache-2.0',
)
