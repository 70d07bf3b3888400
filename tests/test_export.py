"""Export to timm (chapter 12): the exported model's features equal `encode` for `micro` and `vit_tiny`, MAE and PMAE;
timm alone loads it; every bad input gets one line.

The checkpoints are real pre-training runs of seconds on the embedded photos: `micro` at 16 x 16 (256 images, one
epoch) and the paper's `vit_tiny` (ViT-T/8, 12 heads) at 32 x 32 (one step of 8 images).
"""
import json, shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import VisionTransformer

import pmae.export as export
from pmae.export import (CONFIG_FILE, EXPORT_FILES, STATS_FILE, WEIGHTS_FILE, export_encoder, export_sha256, load_timm,
                         max_feature_diff, read_export, timm_args, timm_state_dict)
from pmae.mae import CONFIGS, MaskedAutoencoder, ViTConfig
from pmae.core import atomic_save
from pmae.probe import ProbeConfig, run_probe
from pmae.train import PretrainConfig, load_encoder, load_training_data, pretrain, read_checkpoint
from pmae.core import sha256_file

RUNS = {'micro': dict(image_size=16, patch_size=4, batch_size=128, limit=256), 'vit_tiny': dict(batch_size=8, limit=8)}
KEYS = [(model, method) for model in RUNS for method in ('mae_std', 'pmae')]


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    "One-epoch checkpoints of `micro` and `vit_tiny`, MAE and PMAE."
    root = tmp_path_factory.mktemp('export_runs')
    def run(model, method):
        cfg = PretrainConfig(dataset='photos', model=model, method=method, epochs=1, warmup_epochs=0, device='cpu',
                             out=str(root / f"{model}_{method}"), **RUNS[model])
        return Path(pretrain(cfg, verbose=False)['checkpoint'])
    return {key: run(*key) for key in KEYS}


@pytest.fixture(scope='module')
def exports(ckpts, tmp_path_factory):
    root = tmp_path_factory.mktemp('exports')
    return {key: Path(export_encoder(c, root / '_'.join(key))['out_dir']) for key, c in ckpts.items()}


@pytest.fixture(scope='module')
def originals(ckpts):
    "Each checkpoint's encoder (`load_encoder`) and the first 32 test images (uint8) of the data it was pre-trained on."
    def test_images(c): return load_training_data(PretrainConfig.from_dict(read_checkpoint(c)['config'])).eval.images[:32]
    return {key: (load_encoder(c), test_images(c)) for key, c in ckpts.items()}


# --- the exported model computes the same features -----------------------------------------------------

@pytest.mark.parametrize('key', KEYS, ids=['_'.join(k) for k in KEYS])
def test_exported_features_equal_encode(originals, exports, key):
    (model, images), exported = originals[key], load_timm(exports[key])
    with torch.no_grad(): ours, theirs = model.encode(images), exported(images)
    assert theirs.shape == (len(images), model.config.width) and isinstance(exported.encoder, VisionTransformer)
    assert (theirs - ours).abs().max().item() <= 1e-5
    with torch.no_grad(): assert (exported(images.float() / 255) - ours).abs().max().item() <= 1e-5   # [0, 1] floats too


def test_vit_tiny_is_the_papers_vit_t8_in_timm(exports):
    vit = load_timm(exports['vit_tiny', 'pmae']).encoder
    attn = vit.blocks[0].attn
    assert (vit.embed_dim, len(vit.blocks), attn.num_heads, attn.head_dim) == (192, 12, 12, 16)
    assert (vit.patch_embed.patch_size, vit.patch_embed.img_size, vit.global_pool, vit.num_classes) == ((8, 8), (32, 32), 'token', 0)
    assert (vit.norm.eps, type(vit.fc_norm), type(vit.head)) == (1e-6, torch.nn.Identity, torch.nn.Identity)
    assert vit.blocks[0].mlp.fc1.out_features == 768 and not vit.pos_embed.requires_grad
    assert torch.equal(vit.pos_embed[0, 0], torch.zeros(192))                                  # [CLS] has no position
    assert torch.equal(vit.pos_embed[0, 1:], build_sincos2d_pos_embed([4, 4], 192))            # the fixed 2-D sin-cos table


@pytest.mark.parametrize('key', [('micro', 'pmae'), ('vit_tiny', 'mae_std')], ids=['micro_pmae', 'vit_tiny_mae_std'])
def test_timm_alone_loads_the_folder(originals, exports, key):
    (model, images), folder = originals[key], exports[key]
    config = json.loads((folder / 'config.json').read_text())
    vit = VisionTransformer(**config['model_args']).eval()
    vit.load_state_dict(load_file(folder / 'model.safetensors'))                              # strict
    stats = load_file(folder / config['pmae']['pixel_stats'])
    x = (images.float() / 255 - stats['mean']) / stats['std']
    with torch.no_grad():
        ref = model.encode(images)
        assert (vit(x) - ref).abs().max().item() <= 1e-5
        hub = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        assert (hub(x) - ref).abs().max().item() <= 1e-5


def test_config_records_the_run(ckpts, exports):
    for key, folder in exports.items():
        config, state = read_export(folder), read_checkpoint(ckpts[key])
        p = config['pmae']
        assert config['model_args'] == timm_args(ViTConfig(**state['model_config']))
        assert (p['source_sha256'], p['source_checkpoint'], p['epoch'], p['dataset']) == (sha256_file(ckpts[key]), str(ckpts[key]), 1, 'photos')
        assert (p['masking']['method'], p['masking']['ratio'], p['masking']['hides']) == \
               ((key[1], 0.75, 'patches') if key[1] == 'mae_std' else (key[1], 0.2, 'variance'))
        assert p['config'] == state['config'] and p['model_config'] == state['model_config'] and p['pca_sha256'] == state['pca_sha256']
        stats = load_file(folder / STATS_FILE)
        assert torch.equal(stats['mean'], state['model']['mean']) and torch.equal(stats['std'], state['model']['std'])
        assert sorted(f.name for f in folder.iterdir() if not f.name.startswith(('probe_', 'features_'))) == sorted(EXPORT_FILES)
        assert [f.name for f in folder.parent.iterdir() if f.name.startswith('.')] == []          # no temporary folder left


# --- the check can fail: weights away from identity LayerNorms and zero biases ------------------------

def test_redrawn_weights_and_a_wrong_mapping(ckpts, originals, tmp_path):
    state, g = read_checkpoint(ckpts['micro', 'pmae']), torch.Generator().manual_seed(1)
    state['model'] = {k: torch.randn(v.shape, generator=g) if k.startswith('encoder.') else v for k, v in state['model'].items()}
    redrawn = atomic_save(state, tmp_path / 'redrawn.pt')
    folder = Path(export_encoder(redrawn, tmp_path / 'out')['out_dir'])
    model, exported, images = load_encoder(redrawn), load_timm(folder), originals['micro', 'pmae'][1]
    assert max_feature_diff(model, exported, images) <= 1e-5
    b0 = exported.encoder.blocks[0]
    b0.norm1, b0.norm2 = b0.norm2, b0.norm1
    assert max_feature_diff(model, exported, images) > 1e-2


def test_vit_tiny_mapping_with_random_weights_and_statistics():
    torch.manual_seed(0)
    cfg = CONFIGS['vit_tiny']
    model = MaskedAutoencoder(cfg, mean=torch.rand(cfg.image_shape), std=torch.rand(cfg.image_shape) + 0.5).eval()
    with torch.no_grad():
        for p in model.encoder.parameters(): p.copy_(torch.randn_like(p))
    vit = VisionTransformer(**timm_args(cfg)).eval()
    vit.load_state_dict(timm_state_dict(model))
    images = torch.randint(0, 256, (8, *cfg.image_shape), dtype=torch.uint8)
    with torch.no_grad(): assert (vit(model.normalize(images)) - model.encode(images)).abs().max().item() <= 1e-5


# --- bad input: one line each ---------------------------------------------------------------------------

def test_output_folder_that_exists(ckpts, tmp_path):
    (tmp_path / 'taken').mkdir()
    with pytest.raises(FileExistsError) as e: export_encoder(ckpts['micro', 'mae_std'], tmp_path / 'taken')
    assert str(e.value) == f"{tmp_path / 'taken'} already exists: pmae export writes a new folder (remove it or choose another)"
    assert list((tmp_path / 'taken').iterdir()) == []


def test_not_a_pretraining_checkpoint(ckpts, exports, tmp_path):
    (tmp_path / 'notes.pt').write_text('hello')
    cases = [(ckpts['micro', 'pmae'].parent / 'pca.pt', f"{ckpts['micro', 'pmae'].parent / 'pca.pt'} is not a pmae pre-training checkpoint"),
             (tmp_path / 'missing.pt', f"no checkpoint at {tmp_path / 'missing.pt'}"),
             (tmp_path / 'notes.pt', f"{tmp_path / 'notes.pt'} is not a readable checkpoint"),
             (exports['micro', 'pmae'], f"{exports['micro', 'pmae']} is a folder, not a pre-training checkpoint (e.g. runs/cifar10_pmae/checkpoint.pt)")]
    for path, message in cases:
        with pytest.raises((ValueError, FileNotFoundError)) as e: export_encoder(path, tmp_path / 'out')
        assert str(e.value).startswith(message) and len(str(e.value).splitlines()) == 1, str(e.value)
        assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('gone', EXPORT_FILES)
def test_incomplete_export(exports, tmp_path, gone):
    folder = Path(shutil.copytree(exports['micro', 'mae_std'], tmp_path / 'partial'))
    (folder / gone).unlink()
    with pytest.raises(FileNotFoundError) as e: load_timm(folder)
    assert str(e.value) == f"{folder} is an incomplete export: no {gone} (an export has config.json, model.safetensors, pixel_stats.safetensors)"


def test_other_folders(ckpts, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^no exported encoder at {tmp_path / 'none'}$"): load_timm(tmp_path / 'none')
    run_dir = ckpts['micro', 'mae_std'].parent
    with pytest.raises(ValueError) as e: load_timm(run_dir)
    assert str(e.value) == f"{run_dir} is a pre-training run, not an export: use {run_dir / 'checkpoint.pt'}, or export it with pmae export"
    for f in EXPORT_FILES: (tmp_path / f).write_text('{"architecture": "resnet50"}')
    with pytest.raises(ValueError) as e: read_export(tmp_path)
    assert str(e.value) == f"{tmp_path / CONFIG_FILE} is not the config of a pmae export (no 'pmae' section of format 'pmae-timm-export')"
    (tmp_path / CONFIG_FILE).write_text('{not json')
    with pytest.raises(ValueError, match=f"^{tmp_path / CONFIG_FILE} is not valid JSON: "): read_export(tmp_path)


def test_a_failed_check_writes_nothing(ckpts, tmp_path, monkeypatch):
    monkeypatch.setattr(export, 'max_feature_diff', lambda *a: 0.5)
    with pytest.raises(RuntimeError, match=r"^the exported encoder's features differ from the checkpoint's by 5.00e-01; nothing written$"):
        export_encoder(ckpts['micro', 'pmae'], tmp_path / 'out')
    assert list(tmp_path.iterdir()) == []                                                     # no folder, no temporary folder


# --- the probes read an export -------------------------------------------------------------------------

def test_probe_an_export_like_its_checkpoint(ckpts, exports):
    key = ('micro', 'mae_std')
    r_export = run_probe(exports[key], ProbeConfig('knn'), verbose=False)
    r_ckpt = run_probe(ckpts[key], ProbeConfig('knn'), verbose=False)
    assert (r_export['encoder'], r_ckpt['encoder']) == ('timm export', 'pre-training checkpoint')
    assert r_export['source_sha256'] == r_ckpt['source_sha256'] == r_ckpt['checkpoint_sha256'] == sha256_file(ckpts[key])
    assert r_export['checkpoint_sha256'] == export_sha256(exports[key]) and r_export['checkpoint'] == str(exports[key])
    assert (r_export['checkpoint_epoch'], r_export['method'], r_export['n_train']) == (1, 'mae_std', 256)
    assert r_export['sweep'] == r_ckpt['sweep']                                                # the same features, the same votes
    assert (exports[key] / 'probe_knn.json').is_file() and (exports[key] / 'features_test.pt').is_file()


@pytest.mark.parametrize('kind', ['linear', 'finetune'])
def test_trained_probes_run_on_an_export(exports, kind):
    folder = exports['micro', 'pmae']
    before = load_file(folder / WEIGHTS_FILE)
    r = run_probe(folder, ProbeConfig(kind, epochs=1, batch_size=128, cache=False), verbose=False)
    assert (r['kind'], r['encoder'], r['steps'], len(r['history'])) == (kind, 'timm export', 2, 1) and 0 <= r['accuracy'] <= 100
    assert all(torch.equal(before[k], v) for k, v in load_file(folder / WEIGHTS_FILE).items())   # the folder's weights are never written
