"""Measurements of trained runs' snapshots and of masks (chapter 21, "Why PMAE stalls here"), on real data.

`hidden`: the PCA bases of CIFAR-10's training set at the long study's 16x16 and at the paper's 32x32: each spectrum,
how steep it is (`pmae.diagnosis.variance_shares`), and what component masks at 10%, 20% and 40% of the variance hide
under both cuts (`pmae.diagnosis.hidden_sets`) -> results/cifar10/long/diagnosis/hidden_sets.json.

`pooling`: the fast probe and kNN (swept to the budget's k_max, read three ways) of every curve-point snapshot of a
study's runs (`--runs`: the budget's own, e.g. the long study; `--study-runs`: a sub-study's), on the [CLS] token and on
the patch tokens' mean. A [CLS] probe the run itself wrote is read back, not redone; a snapshot its run has not probed yet
is left for later. With `--linear`, the paper's linear probe as well, at the points where the run ran it on [CLS]. Rows
merge into results/<data set>/<budget>/<study>/pooling.json (a point probed again replaces its row; the rows of a run whose
folder is gone are kept).

`cls`: what the decoder of every curve-point snapshot reads from the [CLS] token (`pmae.diagnosis.cls_use`: the held-out
pretext loss over predicting nothing's, as trained and with each image's [CLS] swapped for another's)
-> results/<data set>/<budget>/<study>/cls_use.json, merged the same way. A run whose decoder is not given [CLS]
(`decoder_cls=false`) gets its loss ratio and no swap: the test does not apply to it.

`--dataset`, `--budget` and `--study` (default cifar10, long, diagnosis: chapter 21's tables) say which runs and where the
readings go: e.g. `--study scale` for issue 40's encoder sizes, `--dataset tinyimagenet --budget long32 --study readings`.

All write under `--out` (default `results`; from a worktree, give a folder outside it, so that a second run does not find
the first one's file as a change to the commit it records), and record the long study's provenance: the commit (run from a worktree of a clean commit), the data copy without
machine paths, the device. Run one thread each beside the long runs (`OMP_NUM_THREADS=1`).

    python bench/diagnosis.py hidden --data-root data
    python bench/diagnosis.py pooling --data-root data --runs ~/long/runs [--study-runs ~/long/diag-runs] [--linear]
    python bench/diagnosis.py cls --data-root data --runs ~/long/runs [--study-runs ~/long/diag-runs]
    python bench/diagnosis.py pooling --data-root data --study scale --study-runs ~/scale/runs --linear
    python bench/diagnosis.py cls --data-root data --dataset tinyimagenet --budget long32 --study readings --runs ~/tiny/runs
"""
import argparse, datetime, json, sys, time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # this checkout's pmae (a worktree's), not an installed one: the provenance names its commit

import torch

from pmae.core import device_name, loaded_commit, write_json
from pmae.diagnosis import cls_use, hidden_sets, variance_shares
from pmae.masking import CUTS
from pmae.mae import POOLS
from pmae.pca import fit_pca
from pmae.probe import probe_json_path
from pmae.reproduce import Job, data_copy, get_budget, job_config, knn_views, probe_config, snapshot_probe, snapshots
from pmae.train import load_model, load_training_data

COMMITTED = Path('results')                                       # the checkout's results: where the rows' names come from


def where(args) -> tuple[str, str, str]:
    "The data set, budget and study a command reads and writes (chapter 21's by default)."
    return getattr(args, 'dataset', 'cifar10'), getattr(args, 'budget', 'long'), getattr(args, 'study', 'diagnosis')


def out_path(args, name: str) -> Path:
    "Where measurement `name` goes: `<--out>/<data set>/<budget>/<study>/<name>.json`."
    return Path(args.out).expanduser() / Path(*where(args)) / f'{name}.json'
RATIOS, SIZES = (0.1, 0.2, 0.4), (16, 32)


def provenance(ds, root, t0: float, budget: str = 'long') -> dict:
    "A study's provenance block for a measurement on `ds` read from `root`."
    return dict(commit=loaded_commit(), dataset=ds.name, data_copy=data_copy(ds, root), budget=budget, device=device_name('cpu'),
                threads=torch.get_num_threads(), torch=torch.__version__, wall_s=round(time.time() - t0, 1),
                finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))


def training_images(size: int, root: str, dataset: str = 'cifar10', budget: str = 'long'):
    "A data set as a budget reads it, at `size` (0: the budget's; CIFAR-10 at 32: the native images)."
    cfg = job_config(dataset, Job('mae_std'), get_budget(budget), root)
    return load_training_data(replace(cfg, image_size=0 if size == 32 and dataset == 'cifar10' else size or cfg.image_size))


def hidden(args) -> dict:
    "Spectra, their steepness and what the masks hide, at 16x16 and 32x32."
    t0, out = time.time(), dict(sizes=list(SIZES), spectra={}, shares={}, rows=[])
    for size in SIZES:
        ds = training_images(size, args.data_root)
        basis = fit_pca(ds.train.images, source=f"cifar10 train ({len(ds.train)} images) at {size}x{size}")
        out['spectra'][str(size)] = [float(f'{v:.4g}') for v in basis.ratios.tolist()]
        out['shares'][str(size)] = variance_shares(basis.ratios)
        out['rows'] += [dict(hidden_sets(basis.ratios, r, args.draws, cut), image_size=size) for r in RATIOS for cut in CUTS]
        print(f"{size}x{size}: {basis.n_components} components, top 10 hold {out['shares'][str(size)]['top10']:.1f}%")
    write_json(out | dict(provenance=provenance(ds, args.data_root, t0)), out_path(args, 'hidden_sets'))
    return out


def row_of(study: str, job: str, dataset: str = 'cifar10', budget: str = 'long') -> str:
    "The row name a run's committed results file gives it (its job tag until it has one)."
    path = COMMITTED / dataset / budget / ('' if study == budget else study) / f'{job}.json'
    return json.loads(path.read_text())['row'] if path.is_file() else job


def snapshot_rows(run: Path, study: str, b, row: str, linear: bool = False) -> list[dict]:
    "Both poolings of each curve-point snapshot of `run` whose [CLS] probes its run already wrote (with `linear`, the paper's linear probe too where the run ran it)."
    rows = []
    for epoch, snap in snapshots(run).items():
        if epoch not in b.curve or not all(probe_json_path(snap, k).is_file() for k in ('fast', 'knn')): continue
        for pool in POOLS:
            point = dict(study=study, job=run.name, row=row, epoch=epoch, pool=pool)
            for kind in ('fast', 'knn'):
                r = snapshot_probe(snap, probe_config(b, kind, 'cpu', pool))
                point[kind] = r['accuracy']
                if kind == 'knn': point.update(knn_views(r['sweep']))
            if linear and epoch in b.linear_at and probe_json_path(snap, 'linear').is_file():   # selects on the test set, as the paper does
                r = snapshot_probe(snap, probe_config(b, 'linear', 'cpu', pool))
                point.update(linear_best=r['best_acc'], linear_best_epoch=r['best_epoch'], linear_final=r['final_acc'])
            point['checkpoint_sha256'] = r['checkpoint_sha256']
            rows.append(point)
            print(f"{study} {run.name} epoch {epoch} {pool}: fast {point['fast']:.1f}, kNN {point['knn']:.1f} (2..100: {point['knn_wide']:.1f})")
    return rows


def pooling(args) -> dict:
    "Fast probe and kNN on [CLS] and on the patch tokens' mean at every probed curve point, merged into pooling.json."
    (dataset, budget, _), path = where(args), out_path(args, 'pooling')
    t0, b = time.time(), get_budget(budget)
    new = [row for study, run in run_folders(args) for row in snapshot_rows(run, study, b, row_of(study, run.name, dataset, budget), args.linear)]
    rows = merged_rows(path, new, ('study', 'job', 'epoch', 'pool'))      # a re-read without --linear keeps the linear probe read before
    ds = training_images(0, args.data_root, dataset, budget)
    write_json(dict(rows=rows, provenance=provenance(ds, args.data_root, t0, budget)), path)
    return dict(rows=rows)


def merged_rows(path: Path, new: list[dict], key: tuple) -> list[dict]:
    "The rows of the readings file at `path` updated by `new`, sorted by `key`; rows of runs whose folders are gone are kept."
    old = json.loads(path.read_text())['rows'] if path.is_file() else []
    merged, k = {}, lambda r: tuple(r[f] for f in key)
    for r in old + new: merged[k(r)] = merged.get(k(r), {}) | r
    return sorted(merged.values(), key=k)


def run_folders(args):
    "(study, run folder) of every run under the budget's own runs folder and the sub-study's."
    dataset, budget, study = where(args)
    for label, root in ((budget, args.runs), (study, args.study_runs)):
        if not root: continue
        folder = Path(root).expanduser() / dataset / budget
        yield from ((label, run) for run in sorted(p for p in folder.iterdir() if (p / 'config.json').is_file()))


def cls(args) -> dict:
    "What each curve-point snapshot's decoder reads from [CLS]: `cls_use` on the 2,048 held-out images the curves score the task on."
    (dataset, budget, _), t0 = where(args), time.time()
    b, ds = get_budget(budget), training_images(0, args.data_root, dataset, budget)
    held = ds.eval.images[:2048]                                   # (2048, 3, H, W): as `learning_curve`'s pretext losses
    rows = [dict(study=study, job=run.name, row=row_of(study, run.name, dataset, budget), epoch=epoch, **decoder_reads(load_model(snap), held))
            for study, run in run_folders(args) for epoch, snap in snapshots(run).items() if epoch in b.curve]
    for r in rows: print(f"{r['study']} {r['job']} epoch {r['epoch']}: loss/nothing {r['ratio']:.3f}, [CLS] swapped " +
                         (f"{r['swapped']:.3f}" if r['swapped'] is not None else 'not applicable (the decoder is not given [CLS])'))
    rows = merged_rows(out_path(args, 'cls_use'), rows, ('study', 'job', 'epoch'))
    write_json(dict(rows=rows, provenance=provenance(ds, args.data_root, t0, budget)), out_path(args, 'cls_use'))
    return dict(rows=rows)


def decoder_reads(model, held) -> dict:
    "`cls_use` of `model` on `held`; for a decoder that is not given [CLS], its loss ratio alone (swapping [CLS] cannot change it)."
    if getattr(model, 'decoder_cls', True): return cls_use(model, held)
    return dict(cls_use(model, held), swapped=None, applicable=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('what', choices=('hidden', 'pooling', 'cls'))
    ap.add_argument('--data-root', default='data')
    ap.add_argument('--dataset', default='cifar10', help="pooling, cls: the runs' data set")
    ap.add_argument('--budget', default='long', help="pooling, cls: the runs' budget (long32: Tiny ImageNet's)")
    ap.add_argument('--study', default='diagnosis', help="the folder under results/<data set>/<budget>/ the readings go to, and the sub-study's label")
    ap.add_argument('--out', default='results', help="the results folder to write (and merge) cifar10/long/diagnosis/ in; outside a worktree, "
                                                     "so that a second run does not find the first one's file as a change to the code's commit")
    ap.add_argument('--draws', type=int, default=20_000, help='hidden: masks drawn per ratio and cut')
    ap.add_argument('--runs', default='', help="pooling, cls: the budget's own study's runs folder (runs/<data set>/<budget>/<job>/ inside)")
    ap.add_argument('--study-runs', '--diag-runs', dest='study_runs', default='', help="pooling, cls: the sub-study's runs folder")
    ap.add_argument('--linear', action='store_true', help="pooling: also the paper's linear probe (~15 CPU minutes a point) where the run ran it on [CLS]")
    args = ap.parse_args()
    {'hidden': hidden, 'pooling': pooling, 'cls': cls}[args.what](args)


if __name__ == '__main__':
    main()
