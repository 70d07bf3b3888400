"""The pre-training speed benchmark (bench/pretrain_speed.py), run on the CPU with a tiny model: every row, the
ratios and the JSON provenance; the reference path's PMAE views and loss; a missing `transformers` reported, not fatal."""
import importlib.util, json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'bench' / 'pretrain_speed.py'
TINY = ['--device', 'cpu', '--model', 'micro', '--sizes', '32', '--batch', '8', '--steps', '1', '--warmup', '1', '--no-compile',
        '--limit', '64', '--workers', '0']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
ROWS = [(m, p) for m in ('mae_std', 'pmae') for p in ('fast', 'loader', 'reference')]


def run_bench(tmp_path, *extra, env=ENV) -> tuple[str, dict]:
    "Run the benchmark with tiny settings: its stdout and its JSON."
    out = tmp_path / 'bench.json'
    r = subprocess.run([sys.executable, str(SCRIPT), *TINY, '--json', str(out), *extra], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, json.loads(out.read_text())


def table_rows(stdout: str) -> dict:
    "The Markdown table's rows by (method, path), as lists of cells."
    cells = [[c.strip() for c in line.strip('|').split('|')] for line in stdout.splitlines() if line.startswith('| 32x32 |')]
    return {(c[1], c[2]): c for c in cells}


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return run_bench(tmp_path_factory.mktemp('bench'))


def load_bench_module():
    "bench/pretrain_speed.py as a module (importing it imports no transformers)."
    spec = importlib.util.spec_from_file_location('pretrain_speed', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_has_a_row_for_every_method_and_path(bench):
    stdout, result = bench
    rows = table_rows(stdout)
    assert sorted(rows) == sorted(ROWS)
    for key in [k for k in ROWS if k[1] != 'reference']:
        assert float(rows[key][3].replace(',', '')) > 0, rows[key]                     # images/s
        assert rows[key][5] == 'n/a' and rows[key][8] == 'n/a'                        # no GPU memory, no GPU peak on a CPU
    by_key = {(r['method'], r['path']): r for r in result['rows']}
    assert all(by_key[k]['images_per_s'] > 0 and by_key[k]['gflop_per_step'] > 0 for k in ROWS if k[1] != 'reference')
    assert result['pca'][0]['d'] == 3072 and result['pca'][0]['n'] == 64
    assert 'PCA fit, 32x32 (D = 3072):' in stdout


def test_json_has_provenance_and_ratios_are_printed(bench):
    stdout, result = bench
    assert {'git_commit', 'device', 'torch', 'date', 'command'} <= set(result['provenance'])
    assert result['provenance']['torch'] == torch.__version__ and '--model micro' in result['provenance']['command']
    for method in ('mae_std', 'pmae'):
        assert f"32x32 {method}: fast / reference = " in stdout and 'loader / reference = ' in stdout
    assert {(r['size'], r['method']) for r in result['ratios']} == {(32, 'mae_std'), (32, 'pmae')}
    assert '800 epochs of CIFAR-10 (50,000 images) with fast-path PMAE at 32x32:' in stdout
    assert result['cifar10_800_epochs']['minutes'] > 0


def test_reference_path_runs(bench):
    pytest.importorskip('transformers')
    stdout, result = bench
    for r in result['rows']:
        if r['path'] == 'reference': assert r['images_per_s'] > 0 and r['gflop_per_step'] > 0 and 'ViTMAE' in r['setup'], r
    for r in result['ratios']: assert r['fast_over_reference'] > 0 and r['loader_over_reference'] > 0


def test_missing_transformers_is_a_row_not_a_crash(tmp_path):
    shadow = tmp_path / 'shadow' / 'transformers'
    shadow.mkdir(parents=True)
    (shadow / '__init__.py').write_text("raise ImportError('hidden for this test')\n")
    env = {**ENV, 'PYTHONPATH': os.pathsep.join(filter(None, [str(shadow.parent), ENV.get('PYTHONPATH')]))}
    stdout, result = run_bench(tmp_path, '--paths', 'reference', '--methods', 'pmae', env=env)
    (row,) = result['rows']
    assert 'images_per_s' not in row and 'transformers' in row['error']
    assert 'not run: ImportError: the reference path needs transformers' in table_rows(stdout)[('pmae', 'reference')][9]
    assert 'fast / reference = n/a' in stdout


def test_reference_pmae_input_has_no_energy_in_the_hidden_components():
    from pmae.data import load_dataset
    from pmae.pca import fit_pca
    bench = load_bench_module()
    images = load_dataset('photos').train.images[:200]                                  # (200, 3, 32, 32) uint8
    basis = fit_pca(images)                                                              # 199 components of D = 3072
    x = basis.standardize(images[:16]).view(16, 3, 32, 32)                                # per-pixel normalised
    hidden, visible = bench.reference_component_mask(basis.ratios, 0.2, torch.Generator().manual_seed(0))
    assert abs(float(basis.ratios[hidden].sum()) - 0.2) < float(basis.ratios.max())     # closest prefix to 20% of the variance
    assert sorted(torch.cat([hidden, visible]).tolist()) == list(range(basis.n_components))
    x_vis, v_hid, target = bench.reference_pmae_views(x, basis.components, hidden, visible)
    assert x_vis.shape == x.shape and target.shape == (16, len(hidden))
    assert (x_vis.flatten(1) @ v_hid.T).abs().max() < 1e-4                               # nothing of the hidden components is seen
    torch.testing.assert_close(target, x.flatten(1) @ basis.components[hidden].T)
    assert bench.reference_pmae_loss(x, v_hid, target) < 1e-10                           # the true image: zero loss
    torch.testing.assert_close(bench.reference_pmae_loss(x_vis, v_hid, target), target.pow(2).mean())   # the input alone: all of it


def test_reference_is_the_real_mae_with_its_fixed_positions():
    "transformers 5 leaves ViTMAE's sin-cos positions at zero for a model built from a config; the benchmark writes MAE's own."
    pytest.importorskip('transformers')
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAEDecoder
    from pmae.mae import vit_config
    bench = load_bench_module()
    hf = bench.reference_model(vit_config('micro'), 0.75)                                # 32x32, 8-pixel patches: a 4x4 grid
    enc, dec = hf.vit.embeddings.position_embeddings[0].detach(), hf.decoder.decoder_pos_embed[0].detach()   # (1 + 16, width)
    assert enc.abs().sum() > 0 and dec.abs().sum() > 0 and not enc[0].any() and not dec[0].any()
    torch.testing.assert_close(enc, bench.mae_sincos(4, hf.config.hidden_size))
    standalone = ViTMAEDecoder(hf.config, num_patches=16)                              # transformers' own builder, not zeroed
    torch.testing.assert_close(standalone.decoder_pos_embed[0].detach(), bench.mae_sincos(4, hf.config.decoder_hidden_size))
    torch.testing.assert_close(dec, standalone.decoder_pos_embed[0].detach())
