"""`torch.compile` on the CPU: the training step of every method compiles into one graph, with no graph break, and
compiles nothing more after its first step (torch._dynamo's counters over 20 steps of `pretrain`, two epochs).

The counters come from dynamo, which is the same whatever backend lowers the graph, so most cases use the debugging
backend `aot_eager` (`PMAE_COMPILE_BACKEND`, chapter 04) to stay fast; `mae_rd`, whose number of visible patches changes
from batch to batch, also runs under the real inductor backend, the one a GPU run uses."""
import pytest
import torch
from torch._dynamo.utils import counters

from pmae.train import PretrainConfig, pretrain, read_checkpoint

CASES = {'mae_std': {}, 'mae_rd': {}, 'pmae': {}, 'pmae_rd': {}, 'pmae per-sample': dict(per_sample=True),
         'pmae_rd per-sample': dict(per_sample=True), 'mae_rd, an epoch of draws at once': dict(draw_steps=0),
         'pmae, an epoch of draws at once': dict(draw_steps=0)}


def compiled_run(tmp_path, monkeypatch, method: str, backend: str = 'aot_eager', steps: int = 20, **options) -> dict:
    "`steps` compiled steps of a tiny run (10 steps an epoch): what dynamo compiled, and the run's summary."
    monkeypatch.setenv('PMAE_COMPILE_BACKEND', backend)
    torch._dynamo.reset(); counters.clear()
    cfg = PretrainConfig(dataset='photos', model='micro', method=method, epochs=3, batch_size=16, limit=160, warmup_epochs=1,
                         compile=True, device='cpu', log_every=5, out=str(tmp_path / 'run'), **options)
    summary = pretrain(cfg, stop_after=steps, verbose=False)
    return dict(summary=summary, graphs=counters['stats']['unique_graphs'], breaks=sum(counters['graph_break'].values()),
                break_reasons=dict(counters['graph_break']))


@pytest.mark.parametrize('case', CASES)
def test_every_method_compiles_to_one_graph_without_breaks(tmp_path, monkeypatch, case):
    method = case.split()[0].rstrip(',')
    r = compiled_run(tmp_path, monkeypatch, method, **CASES[case])
    assert r['summary']['step'] == 20 and r['summary']['final_epoch_loss'] == r['summary']['final_epoch_loss']
    assert r['breaks'] == 0, r['break_reasons']
    assert r['graphs'] == 1, f"{r['graphs']} graphs compiled over 20 steps"


def test_compiled_mae_rd_under_inductor(tmp_path, monkeypatch):
    r = compiled_run(tmp_path, monkeypatch, 'mae_rd', backend='inductor', steps=6)
    assert (r['breaks'], r['graphs']) == (0, 1), r


def test_compiled_and_eager_steps_agree(tmp_path, monkeypatch):
    "Compilation changes how the step runs, not what it computes: the same weights after 4 steps, up to rounding."
    monkeypatch.setenv('PMAE_COMPILE_BACKEND', 'aot_eager')
    runs = {}
    for compiled in (False, True):
        cfg = PretrainConfig(dataset='photos', model='micro', method='mae_rd', epochs=1, batch_size=16, limit=64, warmup_epochs=0,
                             compile=compiled, device='cpu', out=str(tmp_path / str(compiled)))
        pretrain(cfg, verbose=False)
        runs[compiled] = read_checkpoint(cfg.run_dir / 'checkpoint.pt')['model']
    for k in runs[False]: torch.testing.assert_close(runs[True][k], runs[False][k], rtol=1e-4, atol=1e-5, msg=k)
