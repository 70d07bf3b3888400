"""The long study's bookkeeping at every stop: each run's results and latest weights, copied into the checkout.

The long study's runs (`pmae reproduce cifar10 --budget long`) train for hours in run folders outside the checkout,
from a worktree of a clean commit, and write their results JSON there at every curve point. This copies, for every
run that has written one, its results JSON into `results/cifar10/long/` and its latest weights (encoder and decoder
in fp16 safetensors, PMAE's PCA basis, `model.json`: `pmae.export.save_trained`) into
`results/cifar10/long/weights/<job>/`, recording the weights' epoch and SHA-256 in the JSON. With `--resume` it also
keeps each run's full resumable state under `results/cifar10/long/resume/<job>/` (for a machine that loses its home
folder between sessions). A sub-study's runs, kept in their own `--runs` and `--results` folders, go with
`--study diagnosis` to `results/cifar10/long/diagnosis/`, where readers of `results/<data set>/<budget>/*.json` do not look;
`--no-weights` copies the results alone (a sub-study's runs are measured, not shown, and their weights would be binary churn;
the record of weights committed earlier, still in the folder, is kept).
`--no-basis` keeps a PMAE's weights without its PCA basis (18 MiB at 32x32, too large to commit): `model.json` keeps the
basis's fingerprint and `pmae refit-basis <folder> --data-root DATA` fits it again (chapter 12).

    python bench/long_study.py --runs ~/long/runs --results ~/long/results [--out results] [--resume]
    python bench/long_study.py --runs ~/long/diag-runs --results ~/long/diag-results --study diagnosis --no-weights
    python bench/long_study.py --runs ~/tiny/runs --results ~/tiny/results --dataset tinyimagenet --budget long32 --no-basis
"""
import argparse, hashlib, json, shutil
from pathlib import Path

import safetensors.torch
import torch

from pmae.core import write_json
from pmae.export import save_trained

RESUME_FILES = ('checkpoint.pt', 'pca.pt', 'config.json', 'metrics.jsonl')   # what resuming a run needs


def same_safetensors(a: bytes, b: bytes) -> bool:
    "Whether two safetensors files hold the same tensors and metadata (the metadata's order varies from one write to the next)."
    ta, tb = safetensors.torch.load(a), safetensors.torch.load(b)
    meta = lambda raw: json.loads(raw[8:8 + int.from_bytes(raw[:8], 'little')]).get('__metadata__')
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta) and meta(a) == meta(b)


def sync_run(run: Path, results: Path, dest: Path, resume: bool = False, weights: bool = True, basis: bool = True) -> dict | None:
    "Copy one run's results JSON and (with `weights`) its latest weights into `dest`; None when the run has written no results yet."
    src, ckpt = results / f'{run.name}.json', run / 'checkpoint.pt'
    if not (src.is_file() and ckpt.is_file()): return None
    result = json.loads(src.read_text())
    if weights: result |= {'weights': copy_weights(run, ckpt, dest, basis)}
    else: result |= kept_weights(dest, run.name)                # the weights committed earlier stay described
    config = result.get('pretrain', {}).get('config', {})
    if 'out' in config: config['out'] = str(Path('runs') / Path(config['out']).relative_to(run.parents[2]))   # no machine path
    write_json(result, dest / f'{run.name}.json')
    if resume:
        keep = dest / 'resume' / run.name
        keep.mkdir(parents=True, exist_ok=True)
        for name in RESUME_FILES:
            if (run / name).is_file(): shutil.copy2(run / name, keep / name)
    return result


def kept_weights(dest: Path, job: str) -> dict:
    "The `weights` record of the results already in `dest` whose folder is still there (empty when none): `--no-weights` keeps it."
    old = dest / f'{job}.json'
    kept = json.loads(old.read_text()).get('weights') if old.is_file() else None
    return {'weights': kept} if kept and (dest / kept['folder']).is_dir() else {}


def copy_weights(run: Path, ckpt: Path, dest: Path, keep_basis: bool = True) -> dict:
    "Save a run's latest weights under `dest/weights/<job>/` (without a PMAE's basis unless `keep_basis`); epoch, folder, SHA-256s."
    basis = dest / 'weights' / run.name / 'pca.safetensors'
    before = basis.read_bytes() if basis.is_file() and keep_basis else None
    files = save_trained(ckpt, dest / 'weights' / run.name)
    if not keep_basis and basis.is_file():                    # model.json keeps its fingerprint; `pmae refit-basis` fits it again
        basis.unlink(); files.pop(basis.name)
    if before is not None and basis.is_file() and same_safetensors(before, basis.read_bytes()):   # unchanged: no new bytes to commit
        basis.write_bytes(before); files[basis.name] = hashlib.sha256(before).hexdigest()
    epoch = json.loads((dest / 'weights' / run.name / 'model.json').read_text())['epoch']
    return dict(epoch=epoch, folder=f'weights/{run.name}', sha256=files)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', required=True, help='the runs folder the study writes (runs/<dataset>/<budget>/<job>/ inside)')
    ap.add_argument('--results', required=True, help="the results folder the study's runs write")
    ap.add_argument('--out', default='results', help="the checkout's results folder")
    ap.add_argument('--dataset', default='cifar10'); ap.add_argument('--budget', default='long')
    ap.add_argument('--study', default='', help="a sub-study's folder in the checkout under the budget's, e.g. 'diagnosis' (its runs in their own --runs/--results)")
    ap.add_argument('--resume', action='store_true', help="also keep each run's resumable state under resume/<job>/")
    ap.add_argument('--no-weights', dest='weights', action='store_false', help="copy the results alone, not the latest weights")
    ap.add_argument('--no-basis', dest='basis', action='store_false', help="keep a PMAE's weights without its PCA basis (model.json has its fingerprint)")
    args = ap.parse_args()
    sub = Path(args.dataset) / args.budget                      # where `pmae reproduce --runs/--results` put them
    runs, results, dest = Path(args.runs).expanduser() / sub, Path(args.results).expanduser() / sub, Path(args.out) / sub / args.study
    for run in sorted(p for p in runs.iterdir() if (p / 'checkpoint.pt').is_file()):
        r = sync_run(run, results, dest, args.resume, args.weights, args.basis)
        if r is None: print(f"{run.name}: no results yet"); continue
        last = r['curve']['points'][-1]
        print(f"{run.name}: results at epoch {r['epochs']} (fast {last['fast']:.1f}, kNN {last['knn']:.1f})" +
              (f", weights at epoch {r['weights']['epoch']} -> {dest / r['weights']['folder']}" if 'weights' in r else ''))


if __name__ == '__main__':
    main()
