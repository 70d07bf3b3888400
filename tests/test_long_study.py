"""The long study's committed models (results/cifar10/long/weights/) and the script that commits them (bench/long_study.py).

Every committed weights folder matches the SHA-256 its results file records, rebuilds with `load_trained` alone, is the
epoch it says, and predicts what it was trained to hide better than predicting nothing (on the embedded photos at the
study's 16 x 16, which need no data set). The sync script is run on a real seconds-long run in a temporary folder.
"""
import importlib.util, json
from pathlib import Path

import pytest
import torch

from pmae.core import sha256_file, write_json
from pmae.export import load_trained
from pmae.pmae import PMAE
from pmae.train import PretrainConfig, load_training_data, predict_nothing_loss, pretrain

ROOT = Path(__file__).resolve().parents[1]
LONG = ROOT / 'results' / 'cifar10' / 'long'
COMMITTED = sorted(f for f in LONG.glob('*.json') if 'weights' in json.loads(f.read_text()))
spec = importlib.util.spec_from_file_location('long_study', ROOT / 'bench' / 'long_study.py')
long_study = importlib.util.module_from_spec(spec); spec.loader.exec_module(long_study)


@pytest.fixture(scope='module')
def photos16() -> torch.Tensor:
    "The embedded photos' held-out patches at the study's 16 x 16, uint8 (N, 3, 16, 16)."
    return load_training_data(PretrainConfig(dataset='photos', image_size=16)).eval.images[:256]


def test_the_study_has_committed_models():
    assert len(COMMITTED) >= 2, f"expected the long study's MAE_std and PMAE_ocl results with weights in {LONG}"


@pytest.mark.parametrize('path', COMMITTED, ids=lambda p: p.stem)
def test_committed_weights_are_the_recorded_files(path):
    result = json.loads(path.read_text())
    folder = LONG / result['weights']['folder']
    assert {f: sha256_file(folder / f) for f in result['weights']['sha256']} == result['weights']['sha256']
    assert json.loads((folder / 'model.json').read_text())['epoch'] == result['weights']['epoch'] >= result['epochs']


@pytest.mark.parametrize('path', COMMITTED, ids=lambda p: p.stem)
def test_committed_model_predicts_better_than_nothing(path, photos16):
    result = json.loads(path.read_text())
    model = load_trained(LONG / result['weights']['folder'])
    assert model.config.image_shape == (3, 16, 16) and isinstance(model, PMAE) == (result['method'] == 'pmae')
    mask = model.draw_masks(len(photos16), torch.Generator().manual_seed(0))
    with torch.no_grad(): loss = float(model(photos16, mask).loss)
    assert loss < 0.9 * predict_nothing_loss(model, photos16, mask=mask), path.stem


@pytest.fixture(scope='module')
def tiny_study(tmp_path_factory):
    "A study's folders holding one real run (micro PMAE, one epoch on the photos) and its results file."
    root = tmp_path_factory.mktemp('study')
    runs, results = root / 'runs' / 'cifar10' / 'long', root / 'results' / 'cifar10' / 'long'
    cfg = PretrainConfig(dataset='photos', model='micro', method='pmae', ratio=0.1, image_size=16, patch_size=4, batch_size=64,
                         limit=128, epochs=1, warmup_epochs=0, device='cpu', out=str(runs / 'pmae_0.1'))
    pretrain(cfg, verbose=False)
    write_json(dict(job='pmae_0.1', epochs=1, curve=dict(points=[dict(epoch=1, fast=30.0, knn=25.0)]),
                    pretrain=dict(config=dict(out=str(runs / 'pmae_0.1')))), results / 'pmae_0.1.json')
    (runs / 'mae_std').mkdir()                                                   # a run that has written nothing yet
    return root


def test_sync_copies_results_and_weights(tiny_study, tmp_path):
    root = tiny_study
    r = long_study.sync_run(root / 'runs' / 'cifar10' / 'long' / 'pmae_0.1', root / 'results' / 'cifar10' / 'long', tmp_path)
    saved = json.loads((tmp_path / 'pmae_0.1.json').read_text())
    assert saved == r and saved['weights']['epoch'] == 1 and saved['weights']['folder'] == 'weights/pmae_0.1'
    assert sorted(saved['weights']['sha256']) == ['decoder.safetensors', 'encoder.safetensors', 'model.json', 'pca.safetensors']
    assert not (tmp_path / 'resume').exists()
    assert saved['pretrain']['config']['out'] == 'runs/cifar10/long/pmae_0.1' and str(root) not in json.dumps(saved)   # no machine path
    assert long_study.sync_run(root / 'runs' / 'cifar10' / 'long' / 'mae_std', root / 'results' / 'cifar10' / 'long', tmp_path) is None


def test_sync_keeps_the_resumable_state_when_asked(tiny_study, tmp_path):
    run = tiny_study / 'runs' / 'cifar10' / 'long' / 'pmae_0.1'
    long_study.sync_run(run, tiny_study / 'results' / 'cifar10' / 'long', tmp_path, resume=True)
    for name in ('checkpoint.pt', 'pca.pt', 'config.json', 'metrics.jsonl'):
        assert sha256_file(tmp_path / 'resume' / 'pmae_0.1' / name) == sha256_file(run / name), name


def test_a_sub_study_lands_in_its_own_folder(tiny_study, tmp_path):
    import subprocess, sys
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'long_study.py'), '--runs', str(tiny_study / 'runs'), '--results',
                        str(tiny_study / 'results'), '--out', str(tmp_path), '--study', 'diagnosis'],
                       capture_output=True, text=True, timeout=300, env={**__import__('os').environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / 'cifar10' / 'long' / 'diagnosis' / 'pmae_0.1.json').is_file()
    assert not (tmp_path / 'cifar10' / 'long' / 'pmae_0.1.json').exists()          # never where readers of long/*.json look
    assert r.stdout.startswith('pmae_0.1: results at epoch 1')                       # a run without a checkpoint is not listed


def test_results_alone_without_weights(tiny_study, tmp_path):
    run = tiny_study / 'runs' / 'cifar10' / 'long' / 'pmae_0.1'
    r = long_study.sync_run(run, tiny_study / 'results' / 'cifar10' / 'long', tmp_path, weights=False)
    assert 'weights' not in r and not (tmp_path / 'weights').exists()
    assert json.loads((tmp_path / 'pmae_0.1.json').read_text()) == r and r['curve']['points'][0]['fast'] == 30.0


def test_results_alone_keep_the_weights_committed_before(tiny_study, tmp_path):
    "`--no-weights` after a sync with weights: the new results keep the record of the weights still in the folder, and drop it once they are gone."
    import shutil
    run, results = tiny_study / 'runs' / 'cifar10' / 'long' / 'pmae_0.1', tiny_study / 'results' / 'cifar10' / 'long'
    first = long_study.sync_run(run, results, tmp_path)
    again = long_study.sync_run(run, results, tmp_path, weights=False)
    assert again['weights'] == first['weights'] and json.loads((tmp_path / 'pmae_0.1.json').read_text())['weights'] == first['weights']
    shutil.rmtree(tmp_path / 'weights')
    assert 'weights' not in long_study.sync_run(run, results, tmp_path, weights=False)


def test_weights_without_the_basis_keep_its_fingerprint_and_refit(tmp_path):
    "`--no-basis`: no pca.safetensors in the folder or the recorded files; load_trained says how to fit it again, and the refit loads."
    import os, subprocess, sys
    from pmae.export import refit_basis
    runs = tmp_path / 'runs' / 'cifar10' / 'long'                     # a PMAE trained in a one-thread process, as the long runs are
    r = subprocess.run([sys.executable, '-m', 'pmae.cli', 'pretrain', '--quiet', '--dataset', 'photos', '--model', 'micro', '--method', 'pmae',
                        '--ratio', '0.1', '--epochs', '1', '--warmup-epochs', '0', '--device', 'cpu', '--image-size', '16', '--patch-size', '4',
                        '--batch-size', '64', '--limit', '128', '--out', str(runs / 'pmae_0.1')],
                       env={**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    write_json(dict(job='pmae_0.1', epochs=1, curve=dict(points=[dict(epoch=1, fast=30.0, knn=25.0)]),
                    pretrain=dict(config=dict(out=str(runs / 'pmae_0.1')))), tmp_path / 'results' / 'cifar10' / 'long' / 'pmae_0.1.json')
    r = long_study.sync_run(runs / 'pmae_0.1', tmp_path / 'results' / 'cifar10' / 'long', tmp_path / 'out', basis=False)
    folder = tmp_path / 'out' / r['weights']['folder']
    assert sorted(r['weights']['sha256']) == ['decoder.safetensors', 'encoder.safetensors', 'model.json'] and not (folder / 'pca.safetensors').exists()
    assert json.loads((folder / 'model.json').read_text())['basis_sha256']
    with pytest.raises(FileNotFoundError, match='pmae refit-basis'): load_trained(folder)
    refit_basis(folder)
    assert isinstance(load_trained(folder), PMAE)
