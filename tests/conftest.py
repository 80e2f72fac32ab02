"""Test isolation: mmengine keeps the current default scope in a process-wide registry of
``DefaultScope`` instances; a test that builds a Runner would otherwise leave its scope to the
next test."""
import pytest
from mmengine.registry import DefaultScope


@pytest.fixture(autouse=True)
def _reset_default_scope():
    yield
    DefaultScope._instance_dict.clear()
