"""The front page `nbs/index.ipynb`: its chapter map names every chapter notebook, and the module each one exports, in the
reader's order (01 onwards, then 00, the engineering core, as reference).

The map is Markdown a reader sees first (two tables); nothing executes it, so this test keeps it true when chapters are
added, renumbered or renamed. It reads the notebooks as JSON and runs nothing.
"""
import json
import re
from pathlib import Path

NBS = Path(__file__).resolve().parents[1] / 'nbs'


def cells(path: Path) -> list[dict]:
    "The cells of notebook `path`, each with its source as one string."
    return [dict(c, source=''.join(c['source'])) for c in json.loads(path.read_text())['cells']]


def default_exp(path: Path) -> str:
    "`pmae.<module>` that notebook `path` exports (its `#| default_exp`), or '–' when it exports nothing."
    for c in cells(path):
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', c['source'], flags=re.M)
        if c['cell_type'] == 'code' and m: return f"pmae.{m.group(1)}"
    return '–'


def chapter_map() -> list[tuple[str, str, str]]:
    "(chapter, notebook file, module) for each row of the front page's chapter table."
    table = next(c['source'] for c in cells(NBS / 'index.ipynb') if c['source'].lstrip().startswith('## The chapters'))
    rows = re.findall(r'^\| (\d\d) \| \[[^\]]+\]\(([^)]+)\) \| `?([^|`]+)`? \|', table, flags=re.M)
    return [(n, f, m.strip()) for n, f, m in rows]


def test_map_lists_every_chapter():
    rows = chapter_map()
    chapters = sorted(p.name for p in NBS.glob('[0-9][0-9]_*.ipynb'))
    assert sorted(f for _, f, _ in rows) == chapters                       # each chapter notebook, each once
    for number, file, _ in rows: assert file.startswith(number + '_'), (number, file)


def test_map_follows_the_readers_path_with_the_core_last():
    "Chapters 01 onwards in order, then chapter 00 (the engineering core) on its own, as reference."
    numbers = [n for n, _, _ in chapter_map()]
    assert numbers == sorted(n for n in numbers if n != '00') + ['00']


def test_map_names_each_chapters_module():
    for _, file, module in chapter_map(): assert module == default_exp(NBS / file), file


def test_index_exports_nothing():
    assert default_exp(NBS / 'index.ipynb') == '–'
    assert not any(re.search(r'^#\|\s*export', c['source'], flags=re.M) for c in cells(NBS / 'index.ipynb'))
