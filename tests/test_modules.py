"""The package's shape: no module of pmae imports another that imports it back (directly or through others), counting
imports inside functions too, and every module imports on its own."""
import ast, importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / 'pmae'
MODULES = sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_'))


def imported_modules(name: str) -> set:
    "The pmae modules that module `name` imports anywhere in its source (top level or inside functions)."
    found = set()
    for node in ast.walk(ast.parse((PKG / f'{name}.py').read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 1: found.add(node.module.split('.')[0])
            elif node.module.startswith('pmae.'): found.add(node.module.split('.')[1])
            elif node.module == 'pmae' or (node.level == 1 and not node.module):
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split('.')[1] for a in node.names if a.name.startswith('pmae.')}
    return found & set(MODULES)


def reachable(name: str, graph: dict) -> set:
    "Every module `name` reaches by following imports."
    seen, todo = set(), [name]
    while todo:
        for m in graph[todo.pop()] - seen: seen.add(m); todo.append(m)
    return seen


def test_the_import_graph_is_read_from_the_source():
    graph = {m: imported_modules(m) for m in MODULES}
    assert graph['core'] == set() and {'core', 'learner', 'mae', 'pca'} <= graph['train'] | reachable('train', graph)
    assert 'reproduce' in graph['results'] and 'core' in graph['pca']


def test_no_two_modules_import_each_other():
    graph = {m: imported_modules(m) for m in MODULES}
    cycles = sorted(m for m in MODULES if m in reachable(m, graph))
    assert cycles == [], f"modules on an import cycle: {cycles}; " + '; '.join(f"{m} imports {sorted(graph[m])}" for m in cycles)


def test_the_cycle_check_can_fail():
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}
    assert [m for m in graph if m in reachable(m, graph)] == ['a', 'b', 'c']


@pytest.mark.parametrize('name', MODULES)
def test_each_module_imports_on_its_own(name):
    importlib.import_module(f'pmae.{name}')
