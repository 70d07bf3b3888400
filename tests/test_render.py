"""The chapters whose outputs come from results/ or committed weights: `make render` re-renders them and `make test` runs
them under nbval, where a cell marked NBVAL_CHECK_OUTPUT fails when its committed output no longer matches what results/
gives. These tests keep that net whole: every chapter that reads results is in it, every committed answer in it is
checked, and nothing in it needs a GPU."""
import json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATTERN = re.search(r"^RESULT_CHAPTERS := (.+)$", (ROOT / 'Makefile').read_text(), re.M).group(1).replace('$$', '$')
CHAPTERS = sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if re.match(PATTERN, p.name))
READS_RESULTS = re.compile(r"\.\./results|REPO / 'results'|Path\('\.\.'\) / 'results'")   # the committed results, seen from nbs/


def cells(path: Path) -> list[dict]: return json.loads(path.read_text())['cells']
def source(cell: dict) -> str: return ''.join(cell['source'])


def test_every_chapter_that_reads_results_is_rendered_and_checked():
    reading = {p.name for p in (ROOT / 'nbs').glob('*.ipynb')
               if any(c['cell_type'] == 'code' and READS_RESULTS.search(source(c)) and 'NBVAL_SKIP' not in source(c) for c in cells(p))}
    missing = reading - {p.name for p in CHAPTERS}
    assert not missing, f"chapters that read results/ but are not in the Makefile's RESULT_CHAPTERS: {sorted(missing)}"
    assert {'index.ipynb', '05_mae.ipynb', '06_pmae.ipynb', '10_quickstart.ipynb', '21_stall.ipynb', '23_tinyimagenet.ipynb'} <= {p.name for p in CHAPTERS}


@pytest.mark.parametrize('path', CHAPTERS, ids=lambda p: p.stem)
def test_no_gpu_or_slow_cell_runs_under_nbval(path):
    flagged = [source(c) for c in cells(path) if c['cell_type'] == 'code' and re.search(r'^#\|\s*(gpu|slow)\b', source(c), re.M)]
    assert all('NBVAL_SKIP' in s for s in flagged), f"{path.name}: a #| gpu or #| slow cell without # NBVAL_SKIP"


@pytest.mark.parametrize('path', CHAPTERS, ids=lambda p: p.stem)
def test_checked_cells_carry_their_rendered_output(path):
    "A checked cell without a committed output checks nothing: `make render` must have run since it was written."
    checked = [c for c in cells(path) if c['cell_type'] == 'code' and 'NBVAL_CHECK_OUTPUT' in source(c)]
    assert checked, f"{path.name} reads results but checks none of its outputs"
    assert all(c.get('outputs') for c in checked), f"{path.name}: a NBVAL_CHECK_OUTPUT cell has no committed output (run make render)"
