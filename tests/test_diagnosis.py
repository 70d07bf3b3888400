"""bench/diagnosis.py (chapter 21): what component masks hide at 16 and 32 pixels, on a stand-in CIFAR-10 in the real
on-disk format, and a run's snapshots probed on [CLS] (read back from its run) and on the patch tokens' mean, the paper's
linear probe included."""
import importlib.util, json, os, subprocess, sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from pmae.core import write_json
from pmae.data import load_photos_data, write_cifar10_pickles
from pmae.probe import probe_json_path
from pmae.reproduce import BUDGETS, Job, data_root, job_config, run_job, snapshots
from pmae.train import load_training_data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'bench' / 'diagnosis.py'


spec = importlib.util.spec_from_file_location('diagnosis_bench', SCRIPT)
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)     # bench/diagnosis.py as a module


def test_hidden_sets_of_both_sizes(tmp_path):
    write_cifar10_pickles(load_photos_data(size=32), tmp_path / 'data')                     # torchvision's layout, photos inside
    r = subprocess.run([sys.executable, str(SCRIPT), 'hidden', '--data-root', str(tmp_path / 'data'), '--draws', '200'], cwd=tmp_path,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads((tmp_path / 'results' / 'cifar10' / 'long' / 'diagnosis' / 'hidden_sets.json').read_text())
    assert [len(out['spectra'][str(s)]) for s in out['sizes']] == [768, 3072] and len(out['rows']) == 2 * 3 * 2
    assert all(row['variance_p90'] <= 100 * row['ratio'] + 1e-9 for row in out['rows'] if row['cut'] == 'as_run')
    assert all(row['empty'] == 0 for row in out['rows'] if row['cut'] == 'closest') and out['provenance']['commit']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A one-epoch MAE run on the stand-in, in a budget called 'long' whose curve is epoch 1, probed as the long study probes."
    tmp = tmp_path_factory.mktemp('diag')
    budget = replace(BUDGETS['smoke'], name='long', epochs=1, curve=(1,), probes=('fast', 'knn'), linear_at=(1,), probe_epochs=2)
    root = data_root('cifar10', 'smoke', tmp / 'none', tmp)
    run_job('cifar10', Job('mae_std'), budget, root=root, runs=tmp / 'runs', results=tmp / 'results', device='cpu', verbose=False)
    return tmp, budget, root, tmp / 'runs' / 'cifar10' / 'long' / 'mae_std'


def test_pooling_reads_the_runs_cls_probes_and_adds_the_mean(run):
    _, budget, _, folder = run
    snap = snapshots(folder)[1]
    saved, linear = (json.loads(probe_json_path(snap, k).read_text()) for k in ('fast', 'linear'))
    rows = bench.snapshot_rows(folder, 'long', budget, 'MAE_std', linear=True)
    assert [r['pool'] for r in rows] == ['cls', 'mean'] and rows[0]['fast'] == saved['accuracy']      # [CLS]: the run's own probe
    assert rows[0]['linear_best'] == linear['best_acc'] and json.loads(probe_json_path(snap, 'linear', 'mean').read_text())['config']['pool'] == 'mean'
    assert probe_json_path(snap, 'fast', 'mean').is_file() and rows[1]['fast'] != rows[0]['fast']


@pytest.fixture
def local(run, monkeypatch):
    "The run's budget and its stand-in images in place of the long study's, for the script's measurements."
    tmp, budget, root, _ = run
    monkeypatch.setattr(bench, 'get_budget', lambda name: budget)
    monkeypatch.setattr(bench, 'training_images', lambda size, r, *where: load_training_data(job_config('cifar10', Job('mae_std'), budget, r)))
    return tmp, root


def test_cls_use_of_every_curve_snapshot(local):
    tmp, root = local
    bench.cls(SimpleNamespace(data_root=str(root), runs=str(tmp / 'runs'), study_runs='', out=str(tmp / 'out')))
    rows = json.loads((tmp / 'out' / 'cifar10' / 'long' / 'diagnosis' / 'cls_use.json').read_text())['rows']
    assert [(r['job'], r['epoch']) for r in rows] == [('mae_std', 1)] and 0 < rows[0]['ratio'] and rows[0]['swapped'] != rows[0]['ratio']


def test_cls_use_keeps_the_rows_of_a_run_whose_folder_is_gone(local):
    "A second read merges: the rows of a run no longer on this machine stay, a point read again is replaced."
    tmp, root = local
    args = SimpleNamespace(data_root=str(root), runs=str(tmp / 'runs'), study_runs='', out=str(tmp / 'merge'))
    path = tmp / 'merge' / 'cifar10' / 'long' / 'diagnosis' / 'cls_use.json'
    gone = dict(study='long', job='pmae_0.1', row='PMAE_ocl', epoch=1, ratio=0.5, swapped=0.5)
    write_json(dict(rows=[gone, dict(gone, job='mae_std', ratio=-1.0)]), path)
    rows = bench.cls(args)['rows']
    assert [(r['job'], r['epoch']) for r in rows] == [('mae_std', 1), ('pmae_0.1', 1)] and rows[1] == gone and rows[0]['ratio'] > 0
    assert json.loads(path.read_text())['rows'] == rows


def test_pooling_reread_without_linear_keeps_the_linear_rows(local):
    tmp, root = local
    args = lambda linear: SimpleNamespace(data_root=str(root), runs=str(tmp / 'runs'), study_runs='', out=str(tmp / 'pool'), linear=linear)
    first = bench.pooling(args(True))['rows']
    again = bench.pooling(args(False))['rows']
    assert [r['linear_best'] for r in again] == [r['linear_best'] for r in first] and len(again) == len(first) == 2


def test_cls_use_of_a_decoder_without_cls_is_not_applicable(local):
    "A run whose decoder is not given [CLS] gets its loss ratio and no swap; the readings go to the study's folder."
    tmp, root = local
    budget = bench.get_budget('long')
    run_job('cifar10', Job('mae_std', decoder_cls=False), budget, root=root, runs=tmp / 'nocls', results=tmp / 'results', device='cpu', verbose=False)
    bench.cls(SimpleNamespace(data_root=str(root), runs='', study_runs=str(tmp / 'nocls'), out=str(tmp / 'out'), dataset='cifar10',
                              budget='long', study='scale'))
    rows = json.loads((tmp / 'out' / 'cifar10' / 'long' / 'scale' / 'cls_use.json').read_text())['rows']
    assert [(r['study'], r['job'], r['swapped'], r['applicable']) for r in rows] == [('scale', 'mae_std_nodeccls', None, False)]
    assert 0 < rows[0]['ratio']
