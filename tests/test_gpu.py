"""The CUDA paths, on a GPU: bf16 autocast, compiled steps (inductor, CUDA graphs), fused AdamW, CUDA generators, exact
resume, PCA on the GPU, features and every probe, fp16 with a gradient scaler, no host sync in the training loop,
`pmae reproduce` on CUDA and a one-process NCCL run under torchrun.

Every test is marked `gpu` and skipped, with its reason shown (`pytest -ra`), where torch sees no CUDA device. The file
needs only pytest, torch, timm, scikit-learn and the package's own imports (no nbdev or medmnist), so that
`python -m pytest tests/test_gpu.py -ra` runs as is on a bare GPU machine; it takes a few minutes on an H100."""
import json, os, subprocess, sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')    # deterministic cuBLAS, set before CUDA starts
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU; torch sees none')]

from torch._dynamo.utils import counters
from pmae.data import load_dataset
from pmae.learner import Callback
from pmae.mae import MAE, vit_config
from pmae.masking import PatchMasking, mask_at
from pmae.pca import fit_pca
from pmae.pmae import PMAE
from pmae.probe import ProbeConfig, extract_features, run_probe
from pmae.train import (PretrainConfig, build_model, epoch_draws, load_encoder, make_optimizer, pretrain, read_checkpoint)

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(dataset='photos', model='micro', epochs=2, batch_size=32, limit=320, warmup_epochs=1, device='cuda', log_every=5)
ENV = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}


def weights(run) -> dict: return read_checkpoint(Path(run) / 'checkpoint.pt')['model']


@pytest.fixture(scope='module')
def photos():
    return load_dataset('photos')


def test_bf16_forward_and_backward_of_mae_and_pmae(photos):
    images = photos.train.images[:64].cuda()                                       # (64, 3, 32, 32) uint8
    basis = fit_pca(photos.train.images[:512], device='cuda')
    for model in (MAE(vit_config('vit_tiny')), PMAE(vit_config('vit_tiny'), basis)):
        model = model.cuda()
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = model(images, generator=torch.Generator('cuda').manual_seed(0))
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss), type(model).__name__
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), type(model).__name__


@pytest.mark.parametrize('method', ['mae_rd', 'pmae'])
def test_compiled_step_is_one_graph(tmp_path, monkeypatch, method):
    monkeypatch.delenv('PMAE_COMPILE_BACKEND', raising=False)                    # the real backend: inductor
    torch._dynamo.reset(); counters.clear()
    s = pretrain(PretrainConfig(**SMALL, method=method, compile=True, out=str(tmp_path / 'run')), stop_after=12, verbose=False)
    assert s['step'] == 12 and s['final_epoch_loss'] == s['final_epoch_loss']
    assert (sum(counters['graph_break'].values()), counters['stats']['unique_graphs']) == (0, 1), dict(counters['graph_break'])


def test_cuda_graphs_mode_and_tf32_train(tmp_path):
    s = pretrain(PretrainConfig(**SMALL, method='pmae', compile=True, compile_mode='reduce-overhead', tf32=True, draw_steps=0,
                                out=str(tmp_path / 'run')), verbose=False)
    assert s['status'] == 'complete' and torch.isfinite(torch.tensor(s['final_epoch_loss']))
    assert torch.get_float32_matmul_precision() == 'highest'                          # tf32 was set for the run only


def test_fused_adamw(photos):
    cfg = PretrainConfig(**SMALL)
    model = MAE(vit_config('micro')).cuda()
    opt = make_optimizer(cfg, model, 'cuda')
    assert opt.defaults['fused'] is True
    before = [p.detach().clone() for p in model.parameters()]
    model(photos.train.images[:16].cuda()).loss.backward(); opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_cuda_generators_draw_the_same_crops_and_masks_for_the_same_seed():
    model = MAE(vit_config('micro'), PatchMasking(ratio_range=(0.1, 0.9))).cuda()
    draw = lambda seed: list(epoch_draws(model, 64, 5, (32, 32), torch.Generator('cuda').manual_seed(seed), draw_steps=2))
    a, b, c = draw(0), draw(0), draw(1)
    assert a[0][0].device.type == 'cuda' and a[0][1].keep.device.type == 'cuda'
    for (ta, ma), (tb, mb) in zip(a, b):
        assert torch.equal(ta, tb) and all(torch.equal(x, y) for x, y in zip(ma, mb))
    assert not torch.equal(a[0][0], c[0][0])


@pytest.mark.parametrize('method', ['mae_rd', 'pmae'])
def test_stop_and_resume_equals_uninterrupted(tmp_path, method):
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        cfg = PretrainConfig(**SMALL, method=method, base_lr=1e-3, out=str(tmp_path / 'whole'))
        pretrain(cfg, verbose=False)
        cut = replace(cfg, out=str(tmp_path / 'cut'))
        assert pretrain(cut, stop_after=7, verbose=False)['status'] == 'stopped'      # in the middle of epoch 1
        assert pretrain(cut, verbose=False)['step'] == 20
    finally: torch.use_deterministic_algorithms(False)
    a, b = weights(cfg.run_dir), weights(cut.run_dir)
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_pca_on_cuda_equals_the_cpu_fit(photos):
    for images in (photos.train.images[:1000], load_dataset('digits').train.images):   # N < D (Gram route), N > D (covariance)
        cpu, gpu = fit_pca(images), fit_pca(images, device='cuda')
        assert gpu.device.type == 'cuda' and gpu.n_components == cpu.n_components
        torch.testing.assert_close(gpu.ratios.cpu(), cpu.ratios, rtol=1e-4, atol=1e-7)
        top = 10                                                                     # well-separated leading components
        agreement = (gpu.components[:top].cpu().double() * cpu.components[:top].double()).sum(1).abs()
        assert agreement.min() > 1 - 1e-4, agreement
        torch.testing.assert_close(gpu.reconstruct(images[:8].cuda(), 50).cpu(), cpu.reconstruct(images[:8], 50), rtol=1e-3, atol=1e-3)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A tiny PMAE run pre-trained on the GPU."
    cfg = PretrainConfig(**{**SMALL, 'epochs': 1}, method='pmae', out=str(tmp_path_factory.mktemp('gpu') / 'run'))
    pretrain(cfg, verbose=False)
    return cfg.run_dir / 'checkpoint.pt'


def test_features_on_cuda_equal_the_cpu_ones(trained, photos):
    images = photos.eval.images[:64]
    on_gpu = extract_features(load_encoder(trained, 'cuda'), images, device='cuda')
    on_cpu = extract_features(load_encoder(trained, 'cpu'), images, device='cpu')
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('kind', ['fast', 'knn', 'linear', 'mlp', 'finetune'])
def test_every_probe_kind_on_cuda(trained, kind):
    cfg = ProbeConfig(kind, device='cuda', **({} if kind == 'knn' else dict(epochs=2)))
    r = run_probe(trained, cfg, verbose=False)
    assert 0 <= r['accuracy'] <= 100 and torch.cuda.get_device_name() in r['device'], r


def test_fp16_with_a_gradient_scaler(tmp_path):
    s = pretrain(PretrainConfig(**SMALL, method='mae_std', precision='fp16', out=str(tmp_path / 'run')), verbose=False)
    assert s['status'] == 'complete' and torch.isfinite(torch.tensor(s['final_epoch_loss']))
    assert read_checkpoint(tmp_path / 'run' / 'checkpoint.pt')['scaler']['scale'] > 0


class NoHostSync(Callback):
    "From step `start` on, any host-device synchronisation raises (torch's sync debug mode), until the fit stops."
    order = 5
    def __init__(self, start: int): self.start, self.steps = start, 0
    def before_batch(self, learn):
        if learn.step == self.start: torch.cuda.set_sync_debug_mode('error')
    def after_batch(self, learn): self.steps += learn.step >= self.start
    def after_cancel(self, learn): torch.cuda.set_sync_debug_mode('default')
    def after_fit(self, learn): torch.cuda.set_sync_debug_mode('default')


@pytest.mark.parametrize('method', ['mae_rd', 'pmae'])
def test_no_host_sync_between_log_points(tmp_path, method):
    guard = NoHostSync(start=2)
    cfg = PretrainConfig(**{**SMALL, 'log_every': 1000}, method=method, out=str(tmp_path / 'run'))
    s = pretrain(cfg, stop_after=9, verbose=False, cbs=[guard])                       # steps 2..8 of a 10-step epoch, unwatched
    assert s['step'] == 9 and guard.steps == 7


def test_reproduce_smoke_on_cuda(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'pmae.cli', 'reproduce', 'cifar10', '--budget', 'smoke', '--device', 'cuda',
                        '--data-root', tmp_path / 'nothing', '--runs', tmp_path / 'runs', '--results', tmp_path / 'results',
                        '--jobs', 'mae_std', 'pmae:0.1', '--quiet'], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / 'results' / 'cifar10' / 'smoke' / 'pmae_0.1.json').read_text())
    assert result['provenance']['device'] == torch.cuda.get_device_name() and result['probes']['fast']['accuracy'] >= 0


def test_one_process_nccl_run_under_torchrun(tmp_path):
    args = ['pretrain', '--dataset', 'photos', '--model', 'micro', '--epochs', 1, '--batch-size', 32, '--limit', 128,
            '--warmup-epochs', 0, '--device', 'cuda', '--quiet']
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', '-m', 'pmae.cli',
                        *map(str, args), '--out', str(tmp_path / 'ddp')], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / 'ddp' / 'pretrain.json').read_text())
    assert (summary['backend'], summary['processes'], summary['status']) == ('nccl', 1, 'complete')
    plain = pretrain(PretrainConfig(dataset='photos', model='micro', epochs=1, batch_size=32, limit=128, warmup_epochs=0,
                                    device='cuda', out=str(tmp_path / 'plain')), verbose=False)
    a, b = weights(tmp_path / 'plain'), weights(tmp_path / 'ddp')
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)


def test_cls_use_runs_where_the_model_is(photos):
    "Chapter 21's swap test on a model on the GPU (the window's readings): masks and images follow the model; MAE's decoder reads [CLS]."
    from pmae.diagnosis import cls_use
    torch.manual_seed(0)
    model = MAE(vit_config('micro', img_size=32)).cuda().eval()
    use = cls_use(model, photos.eval.images[:64])
    assert 0 < use['ratio'] and use['swapped'] != use['ratio']
