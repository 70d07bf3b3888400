"""Shrink the PNG figures committed in notebooks: each becomes a 256-colour palette PNG (the figures are plots and
small image grids, where a palette is indistinguishable from full colour at 72 dpi), kept only where it is smaller.
The tracked tree must stay under 10 MiB (a GPU machine takes it with the CIFAR-10 copy within 64 MiB), and the
figures are most of it. `make render` runs this after re-rendering; run it on any notebook you render by hand.

    python bench/shrink_figures.py nbs/*.ipynb
"""
import argparse, base64, io, json
from pathlib import Path

from PIL import Image


def shrink_png(data: bytes) -> bytes:
    "`data` as an optimised 256-colour palette PNG, or unchanged if it is already a palette image or that is not smaller."
    img = Image.open(io.BytesIO(data))
    if img.mode == 'P': return data
    rgb = img.convert('RGBA' if 'A' in img.getbands() else 'RGB')
    quantized = rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE if rgb.mode == 'RGBA' else Image.Quantize.MEDIANCUT)
    out = io.BytesIO(); quantized.save(out, format='PNG', optimize=True)
    return out.getvalue() if out.tell() < len(data) else data


def shrink_notebook(path: Path) -> tuple[int, int]:
    "Shrink every PNG output of the notebook at `path` in place; the bytes of its PNGs before and after."
    nb = json.loads(path.read_text()); before = after = 0
    for cell in nb['cells']:
        for out in cell.get('outputs', []):
            png = out.get('data', {}).get('image/png')
            if png is None: continue
            raw = base64.b64decode(''.join(png) if isinstance(png, list) else png)
            small = shrink_png(raw); before += len(raw); after += len(small)
            if small is not raw: out['data']['image/png'] = base64.b64encode(small).decode() + '\n'
    if after < before: path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    return before, after


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('notebooks', nargs='+', type=Path)
    total = [0, 0]
    for p in ap.parse_args().notebooks:
        b, a = shrink_notebook(p); total[0] += b; total[1] += a
        if b: print(f"{p.name}: {b / 1024:.0f} KiB -> {a / 1024:.0f} KiB")
    print(f"all: {total[0] / 2**20:.2f} MiB -> {total[1] / 2**20:.2f} MiB of PNG")
