"""Pre-training (chapter 08): resume = uninterrupted for every objective and pipeline, early stops, snapshots,
the NaN stop, and DistributedDataParallel on 2 CPU processes (gloo) against one process."""
import json, os, signal, subprocess, sys, time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import pmae.train as train
from pmae.augment import augment
from pmae.core import sha256_file
from pmae.learner import Callback
from pmae.train import PretrainConfig, TrainingDiverged, load_encoder, pretrain, read_checkpoint, read_metrics

SMALL = dict(dataset='photos', model='micro', epochs=2, batch_size=32, limit=128, warmup_epochs=1, log_every=1, device='cpu')
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}


def weights(run) -> dict: return read_checkpoint(Path(run) / 'checkpoint.pt')['model']


def assert_same_weights(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize('method,pipeline,draw_steps', [('mae_std', 'memory', 1), ('mae_rd', 'memory', 1), ('pmae_rd', 'memory', 1),
                                                        ('pmae', 'loader', 1), ('mae_rd', 'memory', 3), ('pmae_rd', 'memory', 0)])
def test_resume_mid_epoch_equals_uninterrupted(tmp_path, method, pipeline, draw_steps):
    cfg = PretrainConfig(**SMALL, method=method, pipeline=pipeline, workers=0, draw_steps=draw_steps, out=str(tmp_path / 'whole'))
    assert pretrain(cfg, verbose=False)['status'] == 'complete'
    cut = replace(cfg, out=str(tmp_path / 'cut'))
    stopped = pretrain(cut, stop_after=3, verbose=False)                     # 4 steps per epoch: stops inside epoch 1
    assert (stopped['status'], stopped['step'], read_checkpoint(cut.run_dir / 'checkpoint.pt')['batch']) == ('stopped', 3, 3)
    assert pretrain(cut, verbose=False)['step'] == 8
    assert_same_weights(weights(cfg.run_dir), weights(cut.run_dir))
    strip = lambda run: [{k: m[k] for k in ('epoch', 'step', 'loss', 'lr')} for m in read_metrics(run)]
    assert strip(cfg.run_dir) == strip(cut.run_dir)


def test_time_limit_stops_resumably_and_snapshots_are_kept(tmp_path):
    cfg = PretrainConfig(**{**SMALL, 'epochs': 3}, keep_every=1, out=str(tmp_path / 'run'))
    s = pretrain(cfg, time_limit=0.0, verbose=False)                           # the limit is hit after the first step
    assert (s['status'], s['step']) == ('stopped', 1)
    done = pretrain(cfg, verbose=False)
    assert done['status'] == 'complete'
    again = pretrain(cfg, verbose=False)                                       # a finished run: nothing to do, same report
    assert (again['status'], again['step'], again['final_epoch_loss']) == ('complete', done['step'], done['final_epoch_loss'])
    kept = sorted(p.name for p in cfg.run_dir.glob('epoch_*.pt'))
    assert kept == ['epoch_0001.pt', 'epoch_0002.pt', 'epoch_0003.pt']
    assert_same_weights(read_checkpoint(cfg.run_dir / 'epoch_0003.pt')['model'], weights(cfg.run_dir))
    assert load_encoder(cfg.run_dir / 'epoch_0001.pt').encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 64)


class InfiniteLoss(Callback):
    "Makes the run's loss infinite: its loss function, times infinity."
    def before_fit(self, learn):
        good = learn.loss_fn
        learn.loss_fn = lambda net, batch: good(net, batch) * float('inf')


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = PretrainConfig(**SMALL, save_every=1, out=str(tmp_path / 'run'))
    pretrain(replace(cfg, epochs=2), stop_after=4, verbose=False)             # epoch 1, checkpointed
    before = sha256_file(cfg.run_dir / 'checkpoint.pt')
    with pytest.raises(TrainingDiverged, match=r"the loss became inf at epoch 2, step 5: training stopped; the last good checkpoint, .*"
                                                r"checkpoint.pt \(epoch 1\), is untouched"):
        pretrain(cfg, verbose=False, cbs=[InfiniteLoss()])
    assert sha256_file(cfg.run_dir / 'checkpoint.pt') == before


def test_bf16_autocast_and_gradient_clipping_train(tmp_path):
    s = pretrain(PretrainConfig(**SMALL, precision='bf16', clip_grad=0.5, warmup='exponential', out=str(tmp_path / 'r')), verbose=False)
    assert s['status'] == 'complete' and s['final_epoch_loss'] == s['final_epoch_loss']


def cli(*args, cwd=None, timeout=600, torchrun=0):
    "Run `python -m pmae.cli ...` (under torchrun with `torchrun` processes); (returncode, stdout, stderr)."
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={torchrun}'] if torchrun else [sys.executable]
    r = subprocess.run([*launcher, '-m', 'pmae.cli', *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


TINY_ARGS = ['pretrain', '--dataset', 'photos', '--model', 'micro', '--epochs', 2, '--batch-size', 32, '--limit', 128,
             '--warmup-epochs', 1, '--log-every', 2, '--device', 'cpu', '--quiet']


@pytest.mark.parametrize('method', ['pmae', 'mae_std'])
def test_two_gloo_processes_match_one_process(tmp_path, method):
    one = PretrainConfig(**SMALL, method=method, out=str(tmp_path / 'one'))
    pretrain(one, verbose=False)
    rc, out, err = cli(*TINY_ARGS, '--method', method, '--out', tmp_path / 'two', torchrun=2)
    assert rc == 0, err[-2000:]
    assert out.count('pre-trained') == 1                                        # only the main process speaks
    assert read_checkpoint(tmp_path / 'two' / 'checkpoint.pt')['world_size'] == 2
    assert_same_weights(weights(tmp_path / 'one'), weights(tmp_path / 'two'), atol=1e-5)


def test_resume_on_another_number_of_processes(tmp_path):
    rc, out, err = cli(*TINY_ARGS, '--out', tmp_path / 'mixed', '--stop-after', 3, torchrun=2)
    assert rc == 0 and 'stopped after 0/2 epochs (3/8 steps)' in out, err[-2000:]
    rc, out, err = cli(*TINY_ARGS, '--out', tmp_path / 'mixed')                # one process finishes the run
    assert rc == 0, err[-2000:]
    pretrain(PretrainConfig(**SMALL, out=str(tmp_path / 'one')), verbose=False)
    assert_same_weights(weights(tmp_path / 'one'), weights(tmp_path / 'mixed'), atol=1e-5)


def test_sigterm_checkpoints_and_exits_130(tmp_path):
    run = tmp_path / 'long'
    args = [*TINY_ARGS, '--epochs', 10_000, '--out', run]
    p = subprocess.Popen([sys.executable, '-m', 'pmae.cli', *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not (run / 'metrics.jsonl').exists() and time.time() < deadline and p.poll() is None: time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert 'interrupted after' in out and 'run the same command again to resume' in out
    state = read_checkpoint(run / 'checkpoint.pt')
    assert state['step'] >= 4 and state['step'] == read_metrics(run)[-1]['step'] + state['batch']


def test_a_run_at_its_step_limit_takes_no_more_steps(tmp_path):
    cfg = PretrainConfig(**SMALL, out=str(tmp_path / 'run'))
    assert pretrain(cfg, stop_after=6, verbose=False)['step'] == 6
    again = pretrain(cfg, stop_after=6, verbose=False)
    assert (again['status'], again['step']) == ('stopped', 6)
    assert read_checkpoint(cfg.run_dir / 'checkpoint.pt')['step'] == 6


def test_one_torchrun_process_takes_the_distributed_path(tmp_path):
    rc, out, err = cli(*TINY_ARGS, '--out', tmp_path / 'one', torchrun=1)
    assert rc == 0, err[-2000:]
    summary = json.loads((tmp_path / 'one' / 'pretrain.json').read_text())
    assert (summary['backend'], summary['processes']) == ('gloo', 1)
    pretrain(PretrainConfig(**SMALL, out=str(tmp_path / 'plain')), verbose=False)
    assert_same_weights(weights(tmp_path / 'plain'), weights(tmp_path / 'one'), atol=1e-6)


def test_background_and_foreground_checkpoints_are_the_same(tmp_path):
    states = {}
    for background in (True, False):
        cfg = PretrainConfig(**SMALL, background_save=background, save_every=1, keep_every=1, out=str(tmp_path / str(background)))
        pretrain(cfg, verbose=False)
        states[background] = read_checkpoint(cfg.run_dir / 'checkpoint.pt'), read_checkpoint(cfg.run_dir / 'epoch_0001.pt')
    for a, b in zip(states[True], states[False]):
        assert_same_weights(a['model'], b['model'])
        assert {k: a[k] for k in ('epoch', 'batch', 'step')} == {k: b[k] for k in ('epoch', 'batch', 'step')}


def test_tensorboard_gets_the_scalars_and_can_never_stop_a_run(tmp_path, monkeypatch):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = PretrainConfig(**SMALL, out=str(tmp_path / 'logged'))
    pretrain(cfg, verbose=False)
    events = EventAccumulator(str(cfg.run_dir / 'tensorboard')); events.Reload()
    assert {'loss', 'lr', 'images_per_s', 'epoch_s'} <= set(events.Tags()['scalars'])
    assert [e.step for e in events.Scalars('loss')] == [m['step'] for m in read_metrics(cfg.run_dir)] == [4, 8]
    import torch.utils.tensorboard as tb
    class Broken:
        def __init__(self, *a, **k): raise RuntimeError('no space left on device')
    monkeypatch.setattr(tb, 'SummaryWriter', Broken)
    with pytest.warns(UserWarning, match='TensorBoard logging is off: RuntimeError: no space left on device'):
        s = pretrain(replace(cfg, out=str(tmp_path / 'broken')), verbose=False)
    assert s['status'] == 'complete' and len(read_metrics(tmp_path / 'broken')) == 2

@pytest.mark.parametrize('method, norm_pix, ordinary', [('mae_std', False, 5.0), ('mae_std', True, 1.5), ('pmae', False, 20.0)])
def test_a_constant_border_and_a_rarely_lit_pixel_train_with_ordinary_losses(tmp_path, bordered_folder, method, norm_pix, ordinary):
    # With the raw per-pixel std this data set gave MAE `nan` at the first step and PMAE losses of 2,800-4,200 (issue 14);
    # with the floor MAE's loss stays near 3 as run (per-pixel normalised targets, the rarely lit pixel at most 1/floor < 8)
    # and near 1 with norm-pix (a unit-variance target), and PMAE's near 10.
    cfg = PretrainConfig(dataset='folder', data_root=str(bordered_folder), model='micro', patch_size=4, epochs=3, batch_size=128,
                         warmup_epochs=0, method=method, norm_pix=norm_pix, device='cpu', out=str(tmp_path / method))
    assert pretrain(cfg, verbose=False)['status'] == 'complete'
    losses = [m['loss'] for m in read_metrics(cfg.run_dir)]
    print(method, losses)
    assert len(losses) == 3 and all(0 < l < ordinary for l in losses), losses
    model = load_encoder(cfg.run_dir / 'checkpoint.pt')
    floor = float(model.std.min())                                                # never-varying pixels sit at the floor
    batch = augment(train.load_training_data(cfg).train.images[:256], generator=torch.Generator().manual_seed(0))
    z = model.normalize(batch)                                                    # what the encoder reads, (256, 3, 16, 16)
    assert torch.isfinite(z).all() and z.abs().max() <= 1 / floor + 1e-4 and 1 / floor < 8


def test_a_run_saved_before_the_semantics_switches_resumes_only_with_the_semantics_it_ran(tmp_path):
    "A checkpoint whose config predates `cut`, `loss_norm` and `norm_pix` reads as closest / hidden / norm-pix, and resumes only with them."
    from pmae.train import CheckpointMismatchError, LEGACY_SEMANTICS
    cfg = PretrainConfig(**SMALL, method='pmae', out=str(tmp_path / 'old'))
    pretrain(cfg, stop_after=2, verbose=False)
    path = cfg.run_dir / 'checkpoint.pt'
    state = torch.load(path, weights_only=True)
    for k in LEGACY_SEMANTICS: del state['config'][k]                         # as an earlier version wrote it
    torch.save(state, path)
    assert {k: read_checkpoint(path)['config'][k] for k in LEGACY_SEMANTICS} == dict(cut='closest', loss_norm='hidden', norm_pix=True)
    with pytest.raises(CheckpointMismatchError, match=r"cut: 'closest' there, 'as_run' here"): pretrain(cfg, verbose=False)
    assert pretrain(replace(cfg, **LEGACY_SEMANTICS), verbose=False)['status'] == 'complete'


def test_holdout_takes_the_evaluation_split_from_the_training_images():
    "`holdout` splits the training images (never the test split) into a smaller training split and a held-out one."
    from pmae.core import ConfigError
    from pmae.train import load_training_data
    full = load_training_data(PretrainConfig(dataset='photos', device='cpu'))
    ds = load_training_data(PretrainConfig(dataset='photos', holdout=100, device='cpu'))
    assert (len(ds.eval), len(ds.train), ds.eval_split) == (100, len(full.train) - 100, 'held-out train (100)')
    rows = lambda images: {bytes(x.numpy()) for x in images}
    assert len(rows(full.train.images)) == len(full.train)                        # no duplicate images: sets are exact
    assert rows(ds.eval.images) | rows(ds.train.images) == rows(full.train.images)
    assert not rows(ds.eval.images) & rows(ds.train.images) and not rows(ds.eval.images) & rows(full.eval.images)
    with pytest.raises(ConfigError, match=f"holdout must be between 1 and {len(full.train) - 1} training images, got 99999"):
        load_training_data(PretrainConfig(dataset='photos', holdout=99999, device='cpu'))
    with pytest.raises(ConfigError, match="holdout must be >= 0, got -1"): PretrainConfig(dataset='photos', holdout=-1)


def test_hidden_projection_trains_the_same_weights_as_the_full_projection(tmp_path):
    "`hidden_projection` (PMAE's fast path, the default) changes the arithmetic, not the run: the same weights after two epochs."
    cfg = PretrainConfig(**{**SMALL, 'limit': 256}, image_size=8, patch_size=4, method='pmae', hidden_projection=False,
                         out=str(tmp_path / 'full'))                                                 # D = 192 < 256: K = D
    fast = replace(cfg, hidden_projection=True, out=str(tmp_path / 'fast'))
    assert PretrainConfig().hidden_projection                                     # the default: the fastest equal path
    pretrain(cfg, verbose=False); pretrain(fast, verbose=False)
    assert_same_weights(weights(cfg.run_dir), weights(fast.run_dir), atol=1e-4)
    assert read_checkpoint(fast.run_dir / 'checkpoint.pt')['config']['hidden_projection']
