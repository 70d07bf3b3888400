"""The `pmae` command (chapter 13): help, the shipped configs, end-to-end runs of both objectives, every bad input's message."""
import json, shutil, subprocess, sys, tomllib
from dataclasses import fields
from pathlib import Path

import pytest

import pmae.train as train
from pmae.core import sha256_file
from pmae.cli import build_parser, main
from pmae.probe import ProbeConfig
from pmae.train import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = ['--dataset', 'photos', '--image-size', 16, '--model', 'micro', '--patch-size', 4, '--batch-size', 256, '--device', 'cpu']


def run(capsys, *args):
    "`pmae args...` in this process: (exit code, stdout, stderr)."
    try: code = main([str(a) for a in args])
    except SystemExit as e: code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_and_every_option_has_help():
    exe = shutil.which('pmae', path=str(Path(sys.executable).parent))
    assert exe, "the pmae console script is not installed"
    r = subprocess.run([exe, '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and all(c in r.stdout for c in ('pca', 'pretrain', 'probe', 'export', 'demo'))
    sub = {a.dest: a for a in build_parser()._actions if a.dest == 'command'}['command'].choices
    for name, cls in (('pretrain', PretrainConfig), ('probe', ProbeConfig)):
        helps = {a.dest: a.help for a in sub[name]._actions}
        for f in fields(cls):
            assert f.name in helps, f"{name} has no --{f.name}"
            assert len(helps[f.name].split('[default:')[0].strip()) > 3, f"--{f.name} of {name} has no help text"


def test_shipped_configs_are_the_papers_runs():
    files = sorted((ROOT / 'configs').glob('*.toml'))
    names = {f.stem for f in files}
    expected = {f"{d}_{m}" for d in ('cifar10', 'tinyimagenet', 'bloodmnist', 'dermamnist', 'pathmnist')
                for m in ('mae_std', 'mae_rd', 'pmae', 'pmae_rd')}
    assert names == expected
    for f in files:
        cfg = PretrainConfig.from_dict(tomllib.loads(f.read_text()), where=str(f))
        assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.beta2, cfg.warmup_epochs, cfg.warmup) == \
               ('vit_tiny', 800, 512, 3e-4, 0.05, 0.95, 40, 'exponential'), f
        assert cfg.method == f.stem.split('_', 1)[1] and cfg.dataset == f.stem.split('_')[0]
        assert cfg.run_dir == Path('runs') / f.stem
        assert cfg.semantics() == dict(cut='as_run', loss_norm='as_run', norm_pix=False), f   # what the reference code ran
    assert PretrainConfig.from_dict(tomllib.loads((ROOT / 'configs/cifar10_pmae.toml').read_text())).masking().ratio == 0.1


@pytest.mark.parametrize('method', ['mae_std', 'pmae'])
def test_one_epoch_pretrain_and_probes_end_to_end(tmp_path, capsys, method):
    code, out, err = run(capsys, 'pretrain', *SMALL, '--method', method, '--epochs', 1, '--warmup-epochs', 0, '--out', tmp_path, '--quiet')
    assert code == 0, err
    assert out.startswith(f"pre-trained {method} on photos: 1/1 epochs")
    summary = json.loads((tmp_path / 'pretrain.json').read_text())
    assert summary['status'] == 'complete' and summary['config']['method'] == method
    for kind, extra in (('fast', []), ('knn', []), ('linear', ['--epochs', 1, '--batch-size', 256])):
        code, out, err = run(capsys, 'probe', tmp_path / 'checkpoint.pt', '--kind', kind, *extra, '--quiet')
        assert code == 0, err
        result = json.loads((tmp_path / f'probe_{kind}.json').read_text())
        assert out.startswith(f"{kind} probe of {tmp_path / 'checkpoint.pt'}: {result['accuracy']:.2f}%")
        assert 0 <= result['accuracy'] <= 100 and result['method'] == method


def test_export_then_probe_the_export(tmp_path, capsys):
    code, out, err = run(capsys, 'pretrain', *SMALL, '--limit', 512, '--epochs', 1, '--warmup-epochs', 0, '--out', tmp_path / 'run', '--quiet')
    assert code == 0, err
    ckpt, folder = tmp_path / 'run' / 'checkpoint.pt', tmp_path / 'exports' / 'photos_pmae'
    code, out, err = run(capsys, 'export', ckpt, folder)
    assert code == 0, err
    assert out.startswith(f"exported the pmae encoder of {ckpt} (epoch 1) as a timm VisionTransformer -> {folder} (features of 16 random images")
    assert sorted(p.name for p in folder.iterdir()) == ['config.json', 'model.safetensors', 'pixel_stats.safetensors']
    for target in (folder, ckpt):
        code, out, err = run(capsys, 'probe', target, '--kind', 'fast', '--epochs', 5, '--quiet')
        assert code == 0 and out.startswith(f"fast probe of {target}: "), err
    from_export, from_ckpt = (json.loads((d / 'probe_fast.json').read_text()) for d in (folder, tmp_path / 'run'))
    assert (from_export['encoder'], from_export['checkpoint'], from_export['method'], from_export['n_train']) == ('timm export', str(folder), 'pmae', 512)
    assert from_export['source_sha256'] == from_ckpt['checkpoint_sha256'] == sha256_file(ckpt)
    assert from_export['history'] == from_ckpt['history']                      # the same features, the same probe
    code, out, err = run(capsys, 'export', ckpt, folder)
    assert code == 2 and err == f"pmae: error: {folder} already exists: pmae export writes a new folder (remove it or choose another)\n"


def test_pca_command_writes_a_basis_pretrain_can_use(tmp_path, capsys):
    code, out, err = run(capsys, 'pca', '--dataset', 'photos', '--image-size', 16, '--output', tmp_path / 'b.pt')
    assert code == 0 and 'PCA of photos' in out and (tmp_path / 'b.json').exists(), err
    code, out, err = run(capsys, 'pretrain', *SMALL, '--epochs', 1, '--pca', tmp_path / 'b.pt', '--out', tmp_path / 'r', '--quiet')
    assert code == 0, err
    assert train.read_checkpoint(tmp_path / 'r' / 'checkpoint.pt')['pca_sha256'] == sha256_file(tmp_path / 'b.pt')


def test_every_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / 'bad.toml').write_text('dataset = "photos"\nlearning_rate = 0.1\n')
    (tmp_path / 'broken.toml').write_text('dataset = photos\n')
    assert run(capsys, 'pca', '--dataset', 'photos', '--image-size', 8, '--output', tmp_path / 'p8.pt')[0] == 0   # small: D = 192
    assert run(capsys, 'pretrain', *SMALL, '--epochs', 1, '--out', tmp_path / 'run', '--quiet')[0] == 0
    checkpoint = (tmp_path / 'run' / 'checkpoint.pt').read_bytes()
    (tmp_path / 'half.pt').write_bytes(checkpoint[:len(checkpoint) // 2])                      # a copy cut off half-way
    (tmp_path / 'cut').mkdir(); (tmp_path / 'cut' / 'checkpoint.pt').write_bytes(checkpoint[:1000])   # a run folder's, too
    cases = [
        (('pretrain', '--dataset', 'imagenet'), "dataset must be one of digits, photos, cifar10"),
        (('pretrain', '--dataset', 'cifar10', '--data-root', tmp_path / 'none'), "CIFAR-10 not found: expected"),
        (('pretrain', '--dataset', 'cifar10', '--data-root', tmp_path / 'none'), "pass --download to fetch it"),
        (('pretrain', *SMALL, '--pca', tmp_path / 'p8.pt', '--out', tmp_path / 'o'),
         f"the PCA file {tmp_path / 'p8.pt'} was fit on photos train (5834 images) of shape (3, 8, 8), but the photos training images have shape (3, 16, 16)"),
        (('pretrain', *SMALL, '--pca', tmp_path / 'missing.pt'), f"no PCA file at {tmp_path / 'missing.pt'}"),
        (('pretrain', '--ratio', 1.2), "ratio must be strictly between 0 and 1, got 1.2"),
        (('pretrain', '--ratio', -0.1), "ratio must be strictly between 0 and 1, got -0.1"),
        (('pretrain', '--config', tmp_path / 'bad.toml'), f"unknown config key 'learning_rate' in {tmp_path / 'bad.toml'}"),
        (('pretrain', '--config', tmp_path / 'broken.toml'), "is not valid TOML"),
        (('pretrain', '--config', tmp_path / 'nope.toml'), f"no config file at {tmp_path / 'nope.toml'}"),
        (('pretrain', *SMALL, '--model', 'vit_tiny', '--out', tmp_path / 'run'), "is from another model configuration (width: 64 there, 192 here"),
        (('pretrain', *SMALL, '--epochs', 1, '--seed', 1, '--out', tmp_path / 'run'), "was written with other settings (seed: 0 there, 1 here)"),
        (('pretrain', *SMALL, '--batch-size', 100000), "batch_size 100000 is larger than the"),
        (('pretrain', '--method', 'bert'), "method must be one of mae_std, mae_rd, pmae"),
        (('pretrain', '--epoch', 3), "unrecognized arguments: --epoch 3"),
        (('pretrain', '--epochs', 'ten'), "argument --epochs: invalid int value: 'ten'"),
        (('probe', tmp_path / 'nothing.pt', '--kind', 'knn'), f"no checkpoint at {tmp_path / 'nothing.pt'}"),
        (('probe', tmp_path / 'p8.pt', '--kind', 'knn'), "is not a pmae pre-training checkpoint"),
        (('probe', tmp_path / 'half.pt', '--kind', 'knn'), f"{tmp_path / 'half.pt'} is not a readable checkpoint: it is incomplete or damaged"),
        (('pretrain', *SMALL, '--epochs', 1, '--out', tmp_path / 'cut'), f"{tmp_path / 'cut' / 'checkpoint.pt'} is not a readable checkpoint: it is incomplete"),
        (('probe', tmp_path / 'run' / 'checkpoint.pt', '--kind', 'svm'), "kind must be one of linear, mlp, knn, finetune, fast; got 'svm'"),
        (('probe', tmp_path / 'run', '--kind', 'fast'), f"{tmp_path / 'run'} is a pre-training run, not an export: use {tmp_path / 'run' / 'checkpoint.pt'}"),
        (('export', tmp_path / 'p8.pt', tmp_path / 'exp'), f"{tmp_path / 'p8.pt'} is not a pmae pre-training checkpoint"),
        (('export', tmp_path / 'nothing.pt', tmp_path / 'exp'), f"no checkpoint at {tmp_path / 'nothing.pt'}"),
        (('export', tmp_path / 'run' / 'checkpoint.pt', tmp_path / 'run'), f"{tmp_path / 'run'} already exists: pmae export writes a new folder"),
        (('export', tmp_path / 'run' / 'checkpoint.pt'), "the following arguments are required: out_dir"),
        (('frobnicate',), "invalid choice: 'frobnicate'"),
    ]
    for args, message in cases:
        code, out, err = run(capsys, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and 'Traceback' not in err, (args, err)


def test_diverged_run_exits_1_with_the_message(tmp_path, capsys, monkeypatch):
    good = train.pretrain_loss
    monkeypatch.setattr(train, 'pretrain_loss', lambda net, batch: good(net, batch) * float('nan'))
    code, out, err = run(capsys, 'pretrain', *SMALL, '--epochs', 1, '--out', tmp_path, '--quiet')
    assert code == 1 and err.startswith("pmae: the loss became nan in epoch 1: training stopped; no checkpoint had been written yet"), err


def test_demo_runs_offline_and_writes_its_table_figure_and_json(tmp_path, capsys):
    code, out, err = run(capsys, 'demo', '--data', 'photos', '--epochs', 1, '--out', tmp_path)
    assert code == 0, err
    assert '| mae_std | 75% of patches |' in out and '| pmae | 20% of variance |' in out and '| raw pixels |' in out
    result = json.loads((tmp_path / 'demo.json').read_text())
    assert [r['method'] for r in result['rows']] == ['mae_std', 'pmae', 'raw pixels'] and result['epochs'] == 1
    assert (tmp_path / 'quickstart.png').stat().st_size > 10_000


def test_a_folder_of_grey_digits_with_a_black_border_end_to_end(tmp_path, capsys, bordered_folder):
    "A user's image folder (grey PNG files, a constant border, one pixel lit in 3 images): pca, pretrain, probes."
    data = ['--dataset', 'folder', '--data-root', bordered_folder, '--device', 'cpu']
    code, out, err = run(capsys, 'pca', *data, '--output', tmp_path / 'pca.pt')
    assert code == 0 and out.startswith("PCA of folder (1438 images of shape (3, 16, 16))"), err
    accuracies = {}
    for method in ('mae_std', 'pmae'):
        pca = ['--pca', tmp_path / 'pca.pt'] if method == 'pmae' else []          # MAE: its own pixel statistics
        code, out, err = run(capsys, 'pretrain', *data, '--method', method, '--model', 'micro', '--patch-size', 4, '--batch-size', 128,
                             '--epochs', 1, '--warmup-epochs', 0, *pca, '--out', tmp_path / method, '--quiet')
        assert code == 0 and out.startswith(f"pre-trained {method} on folder: 1/1 epochs"), err
        loss = json.loads((tmp_path / method / 'pretrain.json').read_text())['final_epoch_loss']
        assert 0 < loss < 20, loss                                                  # finite and of ordinary size
        for kind in ('fast', 'knn'):
            code, out, err = run(capsys, 'probe', tmp_path / method / 'checkpoint.pt', '--kind', kind, '--quiet')
            assert code == 0, err
            result = json.loads((tmp_path / method / f'probe_{kind}.json').read_text())
            accuracies[method, kind] = result['accuracy']
            assert (result['dataset'], result['n_train'], result['n_test'], result['n_classes']) == ('folder', 1438, 359, 10)
            assert result['accuracy'] > 30, accuracies                              # chance is 10%
