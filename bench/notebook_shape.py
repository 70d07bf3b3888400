"""The shape of the book, per chapter: cells, export cells, export cells directly followed by another export cell, the
longest export cell (lines of code, directives and blank lines not counted), test cells with more than three assertions, and
the index of the first cell whose committed output is a picture (where a chapter's idea is first seen; '-' for none).

    python bench/notebook_shape.py                 # the notebooks in nbs/ as they are
    python bench/notebook_shape.py --rev 9609b93   # as they were at a commit (read with git, nothing checked out)

Prints a Markdown table; asserts nothing."""
import argparse, json, re, subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSERTION = re.compile(r'(?<![\w.])(test_\w+\(|test\(|assert\s)')   # fastcore's test_eq/test_close/test_fail/..., test(), assert


def source(cell: dict) -> str: return ''.join(cell['source'])

def is_export(cell: dict) -> bool:
    "A code cell whose first line is an nbdev `#| export` (or `#| exports`) directive."
    return cell['cell_type'] == 'code' and re.match(r'\s*#\|\s*exports?\b', source(cell)) is not None

def code_lines(cell: dict) -> int:
    "Lines of a cell that hold code or comments: blank lines and `#|` directives not counted."
    return sum(1 for line in source(cell).splitlines() if line.strip() and not line.strip().startswith('#|'))

def shape(cells: list[dict]) -> dict:
    "The counts of one notebook's cells."
    export = [is_export(c) for c in cells]
    tests = [c for c, e in zip(cells, export) if c['cell_type'] == 'code' and not e]
    return dict(cells=len(cells), export=sum(export), back_to_back=sum(a and b for a, b in zip(export, export[1:])),
                longest=max((code_lines(c) for c, e in zip(cells, export) if e), default=0),
                heavy_tests=sum(len(ASSERTION.findall(source(c))) > 3 for c in tests), first_picture=first_picture(cells))

def first_picture(cells: list[dict]) -> int | None:
    "Index of the first cell with an image among its committed outputs (None if no cell has one)."
    return next((i for i, c in enumerate(cells) if any('image/png' in o.get('data', {}) for o in c.get('outputs', []))), None)

def notebooks(rev: str | None) -> dict[str, list[dict]]:
    "Each chapter's cells by name, from nbs/ or from commit `rev`."
    if rev is None: return {p.stem: json.loads(p.read_text())['cells'] for p in sorted((ROOT / 'nbs').glob('*.ipynb'))}
    git = lambda *args: subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = [n for n in git('ls-tree', '--name-only', rev, 'nbs/').split() if n.endswith('.ipynb')]
    return {Path(n).stem: json.loads(git('show', f'{rev}:{n}'))['cells'] for n in sorted(names)}

def table(chapters: dict[str, list[dict]]) -> str:
    "The Markdown table, one row per chapter and a total."
    rows = {name: shape(cells) for name, cells in chapters.items()}
    lines = ['| chapter | cells | export cells | export cells directly followed by another | longest export cell (lines) | test cells with > 3 assertions | first picture (cell) |',
             '|---|---:|---:|---:|---:|---:|---:|']
    pic = lambda r: '-' if r['first_picture'] is None else r['first_picture']
    lines += [f"| {n} | {r['cells']} | {r['export']} | {r['back_to_back']} | {r['longest']} | {r['heavy_tests']} | {pic(r)} |" for n, r in rows.items()]
    total = lambda k: sum(r[k] for r in rows.values())
    lines.append(f"| all | {total('cells')} | {total('export')} | {total('back_to_back')} | "
                 f"{max((r['longest'] for r in rows.values()), default=0)} | {total('heavy_tests')} | |")
    return '\n'.join(lines)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rev', help='a git commit to read the notebooks from (default: nbs/ as it is)')
    print(table(notebooks(parser.parse_args().rev)))
