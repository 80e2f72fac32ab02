"""Load one standard-library-only module of greenmim_mm without importing the package.

``import greenmim_mm`` imports torch and the OpenMMLab stack (10-40 s on a loaded CPU machine);
the tools load their argument parsers (``greenmim_mm/apis/cli_args.py``) with :func:`load` first, so
``--help`` and bad arguments are answered at once. The package is located with
``importlib.util.find_spec``, which does not run its ``__init__`` (installed, editable, or a clone
on ``PYTHONPATH`` alike). Not a tool itself: the tools import it as their sibling (``tools/`` is
``sys.path[0]`` when a tool runs as a script, also from ``greenmim_mm/.mim/tools``).
"""
import importlib.util
import os
import sys


def load(name: str):
    """``greenmim_mm/<name>.py`` (``name`` like ``apis/cli_args`` or ``datasets/demo_data``) as a
    stand-alone module, cached in ``sys.modules``. The module must not import the package."""
    key = '_greenmim_mm_light_' + name.replace('/', '_')
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.find_spec('greenmim_mm')
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit('error: the greenmim_mm package is not importable: install it '
                         '(pip install greenmim_mm, or pip install -e . in a clone) or run the '
                         'tool through tools/env.sh')
    path = os.path.join(list(spec.submodule_search_locations)[0], *f'{name}.py'.split('/'))
    module_spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[key] = module
    module_spec.loader.exec_module(module)
    return module
