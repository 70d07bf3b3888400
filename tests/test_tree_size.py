"""The tracked tree travels to a GPU machine together with the CIFAR-10 copy, within 64 MiB: it must stay under 10 MiB.
Most of it is the figures committed in the notebooks (bench/shrink_figures.py stores them as palette PNGs) and the
trained weights the chapters load."""
import base64, io, json, subprocess
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 10 * 2**20


def tracked() -> list[Path]:
    try: out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError): pytest.skip('not a git checkout')
    return [ROOT / f for f in out.decode().split('\0') if f and (ROOT / f).is_file()]


def test_the_tracked_tree_is_under_10_mib():
    sizes = sorted(((f.stat().st_size, f.relative_to(ROOT)) for f in tracked()), reverse=True)
    total = sum(s for s, _ in sizes)
    assert total <= LIMIT, f"the tracked tree is {total / 2**20:.2f} MiB (limit 10); largest: {sizes[:5]}"


def test_the_shrinker_keeps_the_picture_and_saves_bytes(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location('shrink', ROOT / 'bench' / 'shrink_figures.py')
    shrink = importlib.util.module_from_spec(spec); spec.loader.exec_module(shrink)
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 3), dpi=72); ax.plot(range(10), label='a line'); ax.legend()
    buf = io.BytesIO(); fig.savefig(buf, format='png'); plt.close(fig); png = buf.getvalue()
    nb = {'cells': [{'cell_type': 'code', 'source': [], 'metadata': {}, 'outputs': [{'output_type': 'display_data', 'metadata': {},
          'data': {'image/png': base64.b64encode(png).decode()}}]}], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    path = tmp_path / 'x.ipynb'; path.write_text(json.dumps(nb))
    before, after = shrink.shrink_notebook(path)
    assert before == len(png) and after < before
    small = Image.open(io.BytesIO(base64.b64decode(json.loads(path.read_text())['cells'][0]['outputs'][0]['data']['image/png'])))
    assert small.mode == 'P' and small.size == Image.open(io.BytesIO(png)).size
    assert shrink.shrink_notebook(path) == (after, after)                    # a second pass changes nothing
