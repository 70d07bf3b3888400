"""Probes (chapters 09, 09a and 09b): kNN against scikit-learn, configuration errors, and `run_probe` end to end.

Everything runs on a `micro` PMAE pre-trained for one epoch on the embedded photo patches at
16 × 16 pixels (about 3 s on a CPU), written to a temporary folder.
"""
import json
from dataclasses import fields

import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from pmae.probe import (RECIPES, ProbeConfig, ProbeSource, feature_cache_path, knn_predict, knn_sweep, probe_data, probe_json_path,
                        run_probe, train_probe)
from pmae.train import PretrainConfig, pretrain
from pmae.core import PRECISIONS, ConfigError, sha256_file


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp('probe_run')
    cfg = PretrainConfig(dataset='photos', model='micro', image_size=16, patch_size=4, epochs=1, batch_size=256,
                         warmup_epochs=0, out=str(out))
    return pretrain(cfg, verbose=False)['checkpoint']


# --- kNN ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('seed', [0, 1])
def test_knn_matches_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    x, y, q = torch.randn(400, 6, generator=g), torch.randint(0, 4, (400,), generator=g), torch.randn(150, 6, generator=g)
    ks = list(range(1, 20))
    ours = knn_predict(x, y, q, ks, chunk=37)                                # (19, 150), chunks of odd size
    for k, pred in zip(ks, ours):
        ref = KNeighborsClassifier(n_neighbors=k).fit(x.double().numpy(), y.numpy()).predict(q.double().numpy())
        assert (pred.numpy() == ref).all(), k


def test_knn_vote_tie_goes_to_smallest_class():
    x, y = torch.tensor([[0.], [1.], [2.1], [3.3]]), torch.tensor([2, 0, 1, 1])
    assert knn_predict(x, y, torch.tensor([[0.1]]), [1, 2, 3, 4])[:, 0].tolist() == [2, 0, 0, 1]


def test_knn_sweep_reports_every_k_and_the_best():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 4, generator=g), torch.randint(0, 3, (100,), generator=g)
    r = knn_sweep(x, y, x, y, ks=[1, 2, 3])
    assert [s['k'] for s in r['sweep']] == [1, 2, 3] and (r['best_k'], r['accuracy']) == (1, 100.0)


def test_knn_k_larger_than_training_set():
    with pytest.raises(ValueError, match=r"k = 6 is larger than the 5 training points"):
        knn_predict(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), torch.randn(3, 2), [6])


# --- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize('kw, msg', [
    (dict(kind='svm'), "kind must be one of linear, mlp, knn, finetune, fast; got 'svm'"),
    (dict(epochs=0), "epochs must be at least 1, got 0"),
    (dict(batch_size=0), "batch_size must be at least 1, got 0"),
    (dict(feature_batch=-1), "feature_batch must be at least 1, got -1"),
    (dict(epochs=2.5), "config key 'epochs' must be int, got 2.5"),
    (dict(cache='yes'), "config key 'cache' must be bool, got 'yes'"),
    (dict(base_lr=-1.0), "base_lr must be > 0, got -1.0"),
    (dict(warmup_epochs=-1), "warmup_epochs must be >= 0, got -1"),
    (dict(epochs=3, warmup_epochs=10), "warmup_epochs must be smaller than epochs (3), got 10"),
    (dict(k_min=0), "k_min must be at least 1, got 0"),
    (dict(k_max=1), "k_max must be >= k_min (2), got 1"),
    (dict(precision='half'), "precision must be one of auto, bf16, fp16, fp32; got 'half'"),
    (dict(limit=-5), "limit must be >= -1 (-1: the checkpoint's limit), got -5"),
])
def test_bad_probe_config(kw, msg):
    with pytest.raises(ConfigError) as e: ProbeConfig(**kw)
    assert str(e.value) == msg


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match=r"^unknown config key 'lr' in probe.toml; known keys: augment, base_lr, batch_size"):
        ProbeConfig.from_dict({'kind': 'linear', 'lr': 0.2}, 'probe.toml')
    assert ProbeConfig.from_dict({'kind': 'finetune', 'epochs': 4}).resolved().base_lr == 1e-3


def test_recipes():
    lin, ft = ProbeConfig().resolved(), ProbeConfig('finetune').resolved()
    assert (lin.epochs, lin.base_lr * lin.batch_size / 256, lin.warmup_epochs, lin.weight_decay) == (100, 0.2, 10, 0.0)
    assert (ft.base_lr * ft.batch_size / 256, ft.warmup_epochs, ft.weight_decay) == (2e-3, 5, 0.05)
    assert ProbeConfig('mlp', epochs=30).resolved().warmup_epochs == 3


def test_help_of_each_recipe_option_states_the_recipes_default():
    helps = {f.name: f.metadata['help'] for f in fields(ProbeConfig)}
    for key, value in RECIPES['linear'].items(): assert str(value) in helps[key].split('(default:', 1)[1], (key, helps[key])


def test_every_precision_of_core_is_accepted():
    assert [ProbeConfig(precision=p).precision for p in PRECISIONS] == list(PRECISIONS)


# --- run_probe end to end ---------------------------------------------------------------------------

COMMON = {'kind', 'accuracy', 'dataset', 'eval_split', 'n_train', 'n_test', 'n_classes', 'checkpoint', 'checkpoint_sha256',
          'checkpoint_epoch', 'method', 'encoder', 'source_sha256', 'config', 'device', 'wall_s'}
TRAINED = {'best_acc', 'best_epoch', 'final_acc', 'history', 'batch_size', 'lr', 'steps'}


def read_result(ckpt, kind):
    return json.loads(probe_json_path(ckpt, kind).read_text())


def test_run_probe_knn_and_feature_cache(ckpt):
    r = run_probe(ckpt, ProbeConfig('knn'), verbose=False)
    assert set(r) == COMMON | {'best_k', 'sweep'} and r['kind'] == 'knn'
    assert [s['k'] for s in r['sweep']] == list(range(2, 20)) and 0 <= r['accuracy'] <= 100
    assert r['accuracy'] == max(s['acc'] for s in r['sweep'])
    assert read_result(ckpt, 'knn') == r
    assert (r['checkpoint_sha256'], r['checkpoint_epoch'], r['dataset']) == (sha256_file(ckpt), 1, 'photos')
    assert (r['encoder'], r['source_sha256']) == ('pre-training checkpoint', sha256_file(ckpt))
    caches = [feature_cache_path(ckpt, s) for s in ('train', 'test')]
    stamps = [p.stat().st_mtime_ns for p in caches]
    again = run_probe(ckpt, ProbeConfig('knn'), verbose=False)                  # reads the cache, writes nothing
    assert [p.stat().st_mtime_ns for p in caches] == stamps and again['sweep'] == r['sweep']
    stale = torch.load(caches[1], weights_only=True)
    stale['key']['checkpoint_sha256'] = 'another checkpoint'
    torch.save(stale, caches[1])
    assert run_probe(ckpt, ProbeConfig('knn'), verbose=False)['sweep'] == r['sweep']   # stale cache recomputed
    assert torch.load(caches[1], weights_only=True)['key']['checkpoint_sha256'] == sha256_file(ckpt)


def test_run_probe_fast_is_deterministic(ckpt):
    r1 = run_probe(ckpt, ProbeConfig('fast', epochs=5), verbose=False)
    r2 = run_probe(ckpt, ProbeConfig('fast', epochs=5), verbose=False)
    assert set(r1) == COMMON | TRAINED and r1['kind'] == 'fast'
    assert r1['history'] == r2['history'] and len(r1['history']) == 5
    assert r1['accuracy'] == r1['best_acc'] == max(h['test_acc'] for h in r1['history'])
    assert read_result(ckpt, 'fast') == r2


def test_fast_probe_ignores_augment(ckpt):
    "The fast probe trains on cached features: there are no images to augment."
    plain = run_probe(ckpt, ProbeConfig('fast', epochs=3), verbose=False)
    assert run_probe(ckpt, ProbeConfig('fast', epochs=3, augment=True), verbose=False)['history'] == plain['history']


def test_probe_on_fixed_features_leaves_the_encoder_alone(ckpt):
    "Without augmentation the head trains on fixed features: the encoder is never wrapped in a classifier (which would freeze it)."
    source = ProbeSource.read(ckpt)
    ds, model = probe_data(source, ProbeConfig(limit=512)), source.load()
    r = train_probe(model, ds, ProbeConfig('linear', epochs=1, augment=False))
    assert len(r['history']) == 1 and all(p.requires_grad for p in model.parameters())


def test_run_probe_linear_one_epoch(ckpt):
    r = run_probe(ckpt, ProbeConfig('linear', epochs=1, batch_size=512, limit=2048), verbose=False)
    assert set(r) == COMMON | TRAINED and r['kind'] == 'linear'
    assert (r['n_train'], r['batch_size'], r['steps'], r['lr'], r['best_epoch']) == (2048, 512, 4, 0.2, 1)
    assert r['accuracy'] == r['best_acc'] == r['final_acc'] == r['history'][0]['test_acc']
    assert r['config']['epochs'] == 1 and r['config']['warmup_epochs'] == 0 and r['config']['augment'] is True
    assert read_result(ckpt, 'linear') == r


def test_json_name_for_other_checkpoint_names(tmp_path):
    assert probe_json_path(tmp_path / 'checkpoint.pt', 'knn') == tmp_path / 'probe_knn.json'
    assert probe_json_path(tmp_path / 'epoch_0100.pt', 'knn') == tmp_path / 'epoch_0100_probe_knn.json'


def test_an_exported_folder_keeps_its_results_and_caches_inside(tmp_path):
    assert probe_json_path(tmp_path, 'knn') == tmp_path / 'probe_knn.json'                  # tmp_path is a folder: an export
    assert feature_cache_path(tmp_path, 'test') == tmp_path / 'features_test.pt'
    assert feature_cache_path(tmp_path / 'checkpoint.pt', 'test') == tmp_path / 'checkpoint_features_test.pt'


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no checkpoint at {tmp_path / 'missing.pt'}"):
        run_probe(tmp_path / 'missing.pt', ProbeConfig('knn'), verbose=False)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / 'notes.pt').write_text('hello')
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        run_probe(tmp_path / 'notes.pt', ProbeConfig('fast'), verbose=False)


def test_k_larger_than_training_set(ckpt):
    with pytest.raises(ConfigError, match=r"k_max \(19\) is larger than the 10 training images"):
        run_probe(ckpt, ProbeConfig('knn', limit=10), verbose=False)
