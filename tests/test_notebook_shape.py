"""bench/notebook_shape.py, the measure behind the book's shape figures, on notebooks built here with known counts."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_module():
    spec = importlib.util.spec_from_file_location('notebook_shape', ROOT / 'bench' / 'notebook_shape.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell(kind: str, text: str) -> dict: return {'cell_type': kind, 'source': text.splitlines(keepends=True)}

CELLS = [cell('markdown', '# A chapter'),
         cell('code', '#| export\ndef f(x):\n\n    return x\n'),               # 2 lines of code: blank line and directive not counted
         cell('code', '#| export\ng = 1\nh = 2\ni = 3\n'),                    # 3 lines, directly after another export cell
         cell('code', 'test_eq(f(1), 1); test_close(g, 1)\nassert h == 2\ntest_fail(lambda: f())\n'),   # 4 assertions
         cell('code', 'test_eq(f(2), 2)\nmy_test_value = 3\n'),               # 1 assertion; a name containing 'test' is none
         cell('markdown', 'assert assert assert assert'),                     # markdown is never a test cell
         cell('code', 'plot()') | {'outputs': [{'data': {'text/plain': 'fig'}}, {'data': {'image/png': 'iVBOR'}}]}]   # the first picture


def test_counts_of_a_built_notebook():
    shape = load_module().shape(CELLS)
    assert shape == dict(cells=7, export=2, back_to_back=1, longest=3, heavy_tests=1, first_picture=6)


def test_the_table_has_a_row_per_chapter_and_a_total():
    lines = load_module().table({'01_a': CELLS, '02_b': CELLS[:2]}).splitlines()
    assert lines[2:] == ['| 01_a | 7 | 2 | 1 | 3 | 1 | 6 |', '| 02_b | 2 | 1 | 0 | 2 | 0 | - |', '| all | 9 | 3 | 1 | 3 | 1 | |']
