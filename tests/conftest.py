"""Shared test set-up.

* Test isolation: mmengine keeps the current default scope in a process-wide registry of
  ``DefaultScope`` instances; a test that builds a Runner would otherwise leave its scope to the
  next test.
* ``demo_data_factory``: makes demo data sets (``greenmim_mm.datasets.demo_data``) of a given
  size in fresh temporary directories.
* ``load_tool``: imports a command-line entry point ``tools/<name>.py`` by its path (``tools/`` is
  not a package and is not put on ``sys.path``).
"""
import importlib.util
import os.path as osp

import pytest
from mmengine.registry import DefaultScope

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')


@pytest.fixture(autouse=True)
def _reset_default_scope():
    yield
    DefaultScope._instance_dict.clear()


@pytest.fixture(scope='session')
def demo_data_factory(tmp_path_factory):
    """``make(name, train_per_class, val_per_class, det_train=1, det_val=1)`` -> path (str) of a
    128-px, seed-0 demo data set made under a new temporary dir ``name``."""
    from greenmim_mm.datasets import demo_data

    def make(name, train_per_class, val_per_class, det_train=1, det_val=1):
        out = tmp_path_factory.mktemp(name) / 'demo'
        demo_data.generate(str(out), size=128, train_per_class=train_per_class,
                                val_per_class=val_per_class, det_train=det_train,
                                det_val=det_val, seed=0, verbose=False)
        return str(out)

    return make


@pytest.fixture(scope='session')
def load_tool():
    """``load(name)`` -> the module ``tools/<name>.py`` (its ``__main__`` block not run)."""
    def load(name):
        spec = importlib.util.spec_from_file_location(f'greenmim_mm_tool_{name}',
                                                      osp.join(TOOLS, f'{name}.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
