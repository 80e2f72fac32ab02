"""The package layout (docs/design.md, "Layout"): the checkpoint, converter and tool-support
subpackages import one another one way only, each checkpoint/converter module imports on its own
in a fresh interpreter, and no file names a module path the re-layout removed."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'greenmim_mm'
SUBPACKAGES = ('checkpoint', 'converters', 'apis')
# module paths moved by the re-layout (pre-1.0: no aliases are kept; docs/development.md)
OLD_MODULES = ('checkpoint_format', 'checkpoint_loading', 'checkpoint_numpy', 'checkpoint_scan',
               'fileio', 'launch', 'cli_args', 'visualization', 'localmim_visualization')


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(path: Path) -> set:
    """Every greenmim_mm module ``path`` imports, at any depth of the file (function-level lazy
    imports included), relative imports resolved; ``from P import name`` counts as P.name when
    that is a module, else as P."""
    me = module_name(path)
    package = me if path.name == '__init__.py' else me.rpartition('.')[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = '.'.join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f'{base}.{alias.name}'
                found.add(sub if module_path(sub) else base)
    return {m for m in found if m.split('.')[0] == 'greenmim_mm'}


def module_path(name: str):
    """The file of module ``name`` in this checkout, None if it is not one."""
    base = REPO.joinpath(*name.split('.'))
    for candidate in (base.with_suffix('.py'), base / '__init__.py'):
        if candidate.is_file():
            return candidate
    return None


def graph_of(subpackage: str) -> dict:
    """module -> the modules of the same subpackage it imports (itself excluded)."""
    files = sorted((PACKAGE / subpackage).glob('*.py'))
    names = {module_name(f) for f in files}
    return {module_name(f): sorted((imported_modules(f) & names) - {module_name(f)})
            for f in files}


def find_cycle(graph: dict):
    """A list of modules forming a cycle, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 'done'
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_function_level_cycle(tmp_path):
    """The graph walker sees lazy imports inside functions (the old checkpoint_format <->
    checkpoint_loading cycle was one) and the cycle search reports them."""
    a = tmp_path / 'a.py'
    a.write_text('def f():\n    from .b import x\n')
    tree = ast.parse(a.read_text())
    lazy = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert lazy and lazy[0].module == 'b' and lazy[0].level == 1
    assert find_cycle({'a': ['b'], 'b': ['a']}) == ['a', 'b', 'a']
    assert find_cycle({'a': ['b'], 'b': ['c'], 'c': []}) is None


def test_graph_sees_the_checkpoint_dependencies():
    graph = graph_of('checkpoint')
    assert graph['greenmim_mm.checkpoint.loading'] == [
        'greenmim_mm.checkpoint.numpy_values', 'greenmim_mm.checkpoint.plain_format',
        'greenmim_mm.checkpoint.scan']
    assert 'greenmim_mm.checkpoint.loading' in graph['greenmim_mm.checkpoint.upgrade']


@pytest.mark.parametrize('subpackage', SUBPACKAGES)
def test_subpackage_imports_are_acyclic(subpackage):
    graph = graph_of(subpackage)
    assert len(graph) >= 4, graph
    assert find_cycle(graph) is None, f'import cycle: {" -> ".join(find_cycle(graph))}'


def test_checkpoint_subpackage_depends_on_nothing_else_in_the_package():
    """The safe loader sits at the bottom: models, engine, converters and tools import it, it
    imports none of them."""
    for path in (PACKAGE / 'checkpoint').glob('*.py'):
        outside = {m for m in imported_modules(path)
                   if not m.startswith('greenmim_mm.checkpoint')}
        assert not outside, f'{path.name} imports {sorted(outside)}'


def test_no_cycle_between_the_checkpoint_or_converters_and_the_rest():
    """Between the package's parts too (``greenmim_mm.<part>``): e.g. converters -> checkpoint,
    engine -> checkpoint, never back."""
    def part(module):
        return '.'.join(module.split('.')[:2])

    graph = {}
    for path in PACKAGE.rglob('*.py'):
        if '.mim' not in path.parts:
            me = part(module_name(path))
            graph.setdefault(me, set()).update(
                part(m) for m in imported_modules(path) if part(m) not in (me, 'greenmim_mm'))
    for start in ('greenmim_mm.checkpoint', 'greenmim_mm.converters'):
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        assert start not in seen, f'{start} imports a part that imports it back'


ISOLATED = """
import importlib, sys, types
for name in ('greenmim_mm', 'greenmim_mm.{sub}'):  # stand-ins: their __init__ does not run
    stub = types.ModuleType(name)
    stub.__path__ = [{root!r} + '/' + name.replace('.', '/')]
    sys.modules[name] = stub
module = importlib.import_module('greenmim_mm.{sub}.{name}')
print(sorted(m for m in sys.modules if m.startswith('greenmim_mm.')))
"""


@pytest.mark.parametrize('subpackage, name', [
    (sub, path.stem) for sub in ('checkpoint', 'converters')
    for path in sorted((PACKAGE / sub).glob('*.py')) if path.name != '__init__.py'])
def test_module_imports_alone_in_a_fresh_interpreter(subpackage, name):
    """Each module imported first and alone (neither greenmim_mm's nor its subpackage's
    ``__init__`` runs before it): an import-order cycle fails here with a partially initialised
    module; the modules it pulled in are exactly what its own imports name, transitively."""
    code = ISOLATED.format(sub=subpackage, name=name, root=str(REPO))
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = set(eval(run.stdout.strip().splitlines()[-1]))
    graph = graph_of(subpackage)
    expected, todo = set(), [f'greenmim_mm.{subpackage}.{name}']
    while todo:
        module = todo.pop()
        if module not in expected:
            expected.add(module)
            todo += [m for m in graph.get(module, ()) if not m.endswith(f'.{subpackage}')]
    assert loaded == expected | {f'greenmim_mm.{subpackage}'}


def test_no_file_names_a_removed_module_path():
    """Imports, docstrings and docs name the new paths (greenmim_mm.checkpoint.loading, ...)."""
    pattern = re.compile(r'greenmim_mm[./](%s)\b(?!/)' % '|'.join(OLD_MODULES))
    stale = []
    for path in [*REPO.glob('*.md'), *REPO.glob('*.py'), *REPO.joinpath('docs').glob('*.md'),
                 *REPO.joinpath('configs').rglob('*.py'), *REPO.joinpath('tools').rglob('*.py'),
                 *REPO.joinpath('tests').rglob('*.py'), *PACKAGE.rglob('*.py')]:
        if '.mim' in path.parts or path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
            if pattern.search(line):
                stale.append(f'{path.relative_to(REPO)}:{number}: {line.strip()[:100]}')
    assert not stale, '\n'.join(stale[:20])


def design_tree() -> set:
    """The repository paths the layout tree of docs/design.md names (one line per module,
    two spaces of indentation per folder level; ``a.py, b.py`` names two)."""
    text = (REPO / 'docs' / 'design.md').read_text()
    fence = re.search(r'## Layout\n.*?```\n(.*?)```', text, re.S).group(1)
    paths, parents = set(), []
    for line in fence.splitlines():
        depth = (len(line) - len(line.lstrip(' '))) // 2
        names = re.match(r'((?:[\w.]+/?, )*[\w.]+/?)', line.strip()).group(1).split(', ')
        parents = parents[:depth]
        for name in names:
            paths.add('/'.join(parents + [name.rstrip('/')]))
        if names[-1].endswith('/'):
            parents.append(names[-1].rstrip('/'))
    return paths


def test_design_layout_tree_names_real_modules_and_every_regrouped_one():
    named = design_tree()
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f'docs/design.md names what does not exist: {missing}'
    required = [p for p in PACKAGE.glob('*.py')] + [
        p for sub in SUBPACKAGES for p in (PACKAGE / sub).glob('*.py') if p.name != '__init__.py']
    unnamed = sorted(str(p.relative_to(REPO)) for p in required
                     if str(p.relative_to(REPO)) not in named)
    assert not unnamed, f'docs/design.md, "Layout": add a line for {unnamed}'


def test_no_allow_listed_name_is_a_module_path_of_ours():
    """What makes moving modules safe for saved files: the safe loader's allow-list names only
    numpy's, mmengine's and Python's globals (mapped to our inert records), so no checkpoint
    names a greenmim_mm module path that a move could break."""
    from greenmim_mm.checkpoint.loading import safe_globals
    names = [entry[1] if isinstance(entry, tuple) else f'{entry.__module__}.{entry.__qualname__}'
             for entry in safe_globals()]
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in names
    assert not [n for n in names if n.split('.')[0] == 'greenmim_mm'], names


def ops_importers() -> dict:
    """``ops/<file>.py`` -> the modules outside ``greenmim_mm/ops`` importing from it (paths
    under ``greenmim_mm/``); a name imported from the ``ops`` package counts for the ops file
    that defines it."""
    defined = {}
    for path in (PACKAGE / 'ops').glob('*.py'):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node]
            defined.update({getattr(t, 'name', getattr(t, 'id', None)): path.name
                            for t in targets})
    for node in ast.parse((PACKAGE / 'ops' / '__init__.py').read_text()).body:
        if isinstance(node, ast.ImportFrom):  # 'DEFAULT_MODE as DEFAULT_SPARSE_CONV'
            defined.update({a.asname: f'{node.module}.py' for a in node.names if a.asname})
    users = {}
    for path in PACKAGE.rglob('*.py'):
        if 'ops' in path.relative_to(PACKAGE).parts[:1] or '.mim' in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or '').startswith(
                    'greenmim_mm.ops'):
                parts = node.module.split('.')
                files = ([f'{parts[2]}.py'] if len(parts) > 2 else
                         [defined[a.name] for a in node.names])
                for name in files:
                    users.setdefault(f'ops/{name}', set()).add(
                        str(path.relative_to(PACKAGE)))
    return users


def test_design_ops_table_names_every_caller_outside_ops():
    """docs/design.md's ``ops/`` table: a newcomer sees which backbones, algorithms and necks
    call each piece of the sparse trick; the column is exactly what the imports say."""
    text = (REPO / 'docs' / 'design.md').read_text()
    rows = re.findall(r'^\| `(ops/\w+\.py)` \|.*\|(.*)\|\s*$', text, re.M)
    assert len(rows) == len(list((PACKAGE / 'ops').glob('*.py'))) - 1, rows
    cited = {module: set(re.findall(r'`(models/[\w/]+\.py)`', cell)) for module, cell in rows}
    actual = ops_importers()
    for module in cited:
        assert cited[module] == actual.get(module, set()), (module, cited[module],
                                                            actual.get(module))
    assert set(actual) <= set(cited), sorted(set(actual) - set(cited))


def test_design_layout_arrows_are_the_imports():
    """The ``<- a, b`` of a checkpoint or converter module in docs/design.md's tree are exactly
    its greenmim_mm imports (same subpackage by module name, others as ``checkpoint.x``;
    ``all above``: every module listed before it), and each points to a line above it."""
    fence = re.search(r'## Layout\n.*?```\n(.*?)```', (REPO / 'docs' / 'design.md').read_text(),
                      re.S).group(1)
    for sub in ('checkpoint', 'converters'):
        block = re.search(rf'^  {sub}/.*?\n((?:    .*\n)+)', fence, re.M).group(1)
        listed = []
        for line in block.splitlines():
            name = line.split()[0][:-len('.py')]
            cited = line.rpartition('<-')[2].split(',') if '<-' in line else []
            cited = {c.strip() for c in cited}
            if 'all above' in cited:
                cited = (cited - {'all above'}) | set(listed)
            actual = {m.split('.')[-1] if m.startswith(f'greenmim_mm.{sub}.')
                      else m.split('.', 1)[1]
                      for m in imported_modules(PACKAGE / sub / f'{name}.py')}
            assert cited == actual, (sub, name, sorted(cited), sorted(actual))
            assert {c for c in cited if '.' not in c} <= set(listed), (sub, name, listed)
            listed.append(name)
        assert sorted(listed) == sorted(p.stem for p in (PACKAGE / sub).glob('*.py')
                                        if p.name != '__init__.py')
