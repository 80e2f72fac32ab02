"""greenmim_mm: efficient masked-image-modeling pre-training for hierarchical ViTs (OpenMMLab plugin).

The installed package carries ``configs/`` and ``tools/`` in ``greenmim_mm/.mim`` (as mmpretrain and
mmdet do) so that ``mim train greenmim_mm CONFIG`` finds them. In the source tree ``greenmim_mm/.mim``
holds relative symlinks to the top-level folders (used by develop installs, see ``tools/env.sh``);
``build_py`` copies the real files into wheels and sdists.
"""
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    ns = {}
    with open(os.path.join(HERE, 'greenmim_mm', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


class BuildPyWithMim(build_py):
    """Copy ``configs/`` and ``tools/`` into ``greenmim_mm/.mim`` of the build tree."""

    def run(self):
        super().run()
        for name in ('configs', 'tools'):
            dst = os.path.join(self.build_lib, 'greenmim_mm', '.mim', name)
            if os.path.islink(dst) or os.path.isfile(dst):
                os.remove(dst)
            elif os.path.isdir(dst):
                shutil.rmtree(dst)
            shutil.copytree(os.path.join(HERE, name), dst,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


setup(
    name='greenmim_mm',
    version=read_version(),
    description='GreenMIM / LocalMIM masked-image-modeling pre-training for hierarchical '
                'vision transformers, as an OpenMMLab (mmpretrain/mmdet) plugin',
    long_description=open(os.path.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['greenmim_mm', 'greenmim_mm.*']),
    cmdclass={'build_py': BuildPyWithMim},
    zip_safe=False,
    license='Apache-2.0',
)
