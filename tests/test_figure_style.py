"""One figure style for the book (chapter 00's `book_style`, `method_color`): every chapter that draws sets it, no text is
set below the legible size, and the methods' colours come from one table."""
import json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb'))
SMALL_FONT = re.compile(r"fontsize\s*=\s*(?:([0-9.]+)|'(xx-small|x-small|small)')")


def code_cells(path: Path) -> list[str]:
    return [''.join(c['source']) for c in json.loads(path.read_text())['cells'] if c['cell_type'] == 'code']


def draws(path: Path) -> bool:
    cells = json.loads(path.read_text())['cells']
    return any('image/png' in o.get('data', {}) for c in cells for o in c.get('outputs', []))


def too_small(text: str) -> list[str]:
    from pmae.core import MIN_TEXT_PX
    return [m.group(0) for m in SMALL_FONT.finditer(text) if m.group(2) or float(m.group(1)) < MIN_TEXT_PX]


@pytest.mark.parametrize('path', [p for p in NOTEBOOKS if draws(p)], ids=lambda p: p.stem)
def test_every_chapter_that_draws_uses_the_book_style(path):
    assert any(re.search(r'\bbook_style\(\)', s) for s in code_cells(path)), f"{path.name} draws figures without book_style()"


def test_no_text_is_set_below_the_legible_size():
    offenders = {p.name: too_small('\n'.join(code_cells(p))) for p in NOTEBOOKS}
    offenders |= {p.name: too_small(p.read_text()) for p in (ROOT / 'pmae').glob('*.py')}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_size_check_catches_small_text():
    assert too_small("ax.legend(fontsize=8); ax.set_title('t', fontsize=10); ax.text(0, 0, 's', fontsize='small')") == ['fontsize=8', "fontsize='small'"]


def test_the_methods_keep_their_colours_across_labels():
    from pmae.core import method_color
    assert method_color('ours PMAE_ocl (linear, long 800 of 800 ep)') == method_color('paper PMAE_ocl (linear)') == method_color('PMAE_ocl, seed 1')
    assert len({method_color(r) for r in ('MAE_std', 'MAE_ocl', 'PMAE_ocl', 'PMAE r=0.4', 'raw pixels')}) == 5
