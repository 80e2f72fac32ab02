"""Shared test set-up.

* Test isolation: mmengine keeps the current default scope in a process-wide registry of
  ``DefaultScope`` instances; a test that builds a Runner would otherwise leave its scope to the
  next test.
* ``demo_data_factory``: makes demo data sets (tools/make_demo_data.py) of a given size in fresh
  temporary directories.
"""
import os.path as osp
import sys

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
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    import make_demo_data

    def make(name, train_per_class, val_per_class, det_train=1, det_val=1):
        out = tmp_path_factory.mktemp(name) / 'demo'
        make_demo_data.generate(str(out), size=128, train_per_class=train_per_class,
                                val_per_class=val_per_class, det_train=det_train,
                                det_val=det_val, seed=0, verbose=False)
        return str(out)

    return make
