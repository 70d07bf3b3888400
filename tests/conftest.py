"""Shared pytest set-up, including how nbval and nbdev-clean live together.

`make test` runs `pytest tests nbs --nbval-lax`: besides the tests in this folder, nbval re-runs
the chapter notebooks and compares the output of every cell marked `# NBVAL_CHECK_OUTPUT`
(deterministic printed figures such as explained-variance tables) with the output committed in
the notebook, so the numbers a reader sees cannot rot.

The clash: `nbdev-clean`, which every commit goes through (and `make test` checks), sets each
cell's `execution_count` to null. nbval reads a null count as "this cell was never run": it then
*silently skips* the comparison of a checked cell, and fails every other cell that has outputs
("Unrun reference cell has outputs"). We resolve it at collection time, below, instead of keeping
execution counts in the notebooks (which would make every re-run a diff):

* every collected notebook cell that has committed outputs gets an execution count, so nbval
  treats its outputs as a real reference (and a checked cell with no committed output fails);
* cells carrying an nbdev test flag from `tst_flags` (`#| slow`, `#| gpu`) are skipped, exactly as
  `nbdev-test` skips them;
* notebooks with no checked cell are deselected: `nbdev-test` already runs them as tests, and
  running them a second time would check nothing.

It also holds the fixtures several test files share: `bordered_digits`, a data set like many a
user's (a constant black border, one pixel lit in only a handful of images), and the same data
set written as a folder of PNG files.
"""
import re
import tomllib
from pathlib import Path

import pytest
import torch.nn.functional as F

from pmae.data import ImageDataset, Split, load_digits_data, write_image_folder

ROOT = Path(__file__).resolve().parents[1]
TST_FLAGS = set(tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['nbdev']['tst_flags'].split())


def cell_flags(source: str) -> set:
    "The nbdev directives (`#| name ...`) at the top of a cell's source."
    return {m.group(1) for m in re.finditer(r'^\s*#\|\s*([\w-]+)', source, flags=re.M)}


def pytest_collection_modifyitems(config, items):
    cells = [it for it in items if hasattr(it, 'cell') and hasattr(it, 'options')]   # nbval's notebook cells
    checked_notebooks = {it.path for it in cells if it.options.get('check')}
    deselected = [it for it in cells if it.path not in checked_notebooks]
    for it in cells:
        if it.path not in checked_notebooks: continue
        if it.cell.get('outputs') and it.cell.get('execution_count') is None: it.cell['execution_count'] = 1
        flags = cell_flags(it.cell.get('source', '')) & TST_FLAGS
        if flags: it.add_marker(pytest.mark.skip(reason=f"nbdev test flag: {', '.join(sorted(flags))}"))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [it for it in items if it not in deselected]


@pytest.fixture(scope='session')
def bordered_digits() -> ImageDataset:
    "scikit-learn's digits padded with a black border to 16×16; border pixel (1, 1) is lit in 3 of the 1,438 training images."
    digits = load_digits_data()
    pad = lambda split: Split(F.pad(split.images, (4, 4, 4, 4)), split.labels)   # (N, 1, 16, 16) uint8
    train, ev = pad(digits.train), pad(digits.eval)
    train.images[:3, 0, 1, 1] = 255
    return ImageDataset('bordered digits', train, ev, digits.classes, 'test', 'digits padded with a black border')


@pytest.fixture(scope='session')
def bordered_folder(tmp_path_factory, bordered_digits):
    "`bordered_digits` written as `train/<class>/NNNN.png` and `test/<class>/NNNN.png`: a folder of grey PNG files."
    return write_image_folder(bordered_digits, tmp_path_factory.mktemp('bordered_digits'))
