"Reproduction runs (chapter 14) and results against the paper (chapter 15): budgets, provenance, the pmae reproduce command."
import json, os, subprocess, sys
from pathlib import Path

import pytest

from pmae.cli import main
from pmae.reproduce import (BUDGETS, PROVENANCE, STAND_IN, BudgetError, Job, check_device, data_root, default_jobs, job_config,
                            reproduce, result_path)
from pmae.results import (PAPER_COLUMNS, PAPER_TABLE, PROBE_NAMES, ProvenanceError, check_result, load_results, paper_results,
                          paper_value, results_rows, table1)

REPO = Path(__file__).resolve().parents[1]


def pmae_cli(*args, cwd=None):
    "`python -m pmae.cli args...` in a new process."
    return subprocess.run([sys.executable, '-m', 'pmae.cli', *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, 'PMAE_DATA': '', 'PMAE_COMPILE_BACKEND': 'aot_eager'}, timeout=900)


def pmae_main(capsys, monkeypatch, *args) -> tuple[int, str]:
    "`pmae args...` in this process, in `pmae_cli`'s environment: (exit code, stderr). No interpreter start-up per call."
    monkeypatch.setenv('PMAE_DATA', ''); monkeypatch.setenv('PMAE_COMPILE_BACKEND', 'aot_eager')
    capsys.readouterr()
    try: code = main([str(a) for a in args])
    except SystemExit as e: code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    "The smoke budget of CIFAR-10 on a stand-in, run once for the module."
    tmp = tmp_path_factory.mktemp('repro')
    res = reproduce('cifar10', 'smoke', [Job('mae_std'), Job('pmae', 0.1)], root=tmp / 'no-data', runs=tmp / 'runs',
                    results=tmp / 'results', verbose=False)
    return tmp, res


def test_smoke_results_carry_provenance(smoke):
    tmp, res = smoke
    assert [r['row'] for r in res] == ['MAE_std', 'PMAE_ocl']
    for r in res:
        saved = json.loads(result_path(tmp / 'results', 'cifar10', 'smoke', Job(r['method'], r['ratio'])).read_text())
        assert check_result(saved) and set(PROVENANCE) <= set(saved['provenance'])
        assert saved['provenance']['data_copy'].startswith('stand-in')
        assert saved['provenance']['n_train'] == BUDGETS['smoke'].limit
        assert saved['epochs'] == 1 and set(saved['probes']) == set(BUDGETS['smoke'].probes)
        assert 0 <= saved['probes']['knn']['accuracy'] <= 100
    assert (tmp / 'runs' / 'stand-ins' / 'cifar10-stand-in' / STAND_IN).exists()
    assert len(load_results(tmp / 'results', budget='smoke')) == 2


def test_smoke_rerun_resumes_to_the_same_numbers(smoke):
    tmp, res = smoke
    again = reproduce('cifar10', 'smoke', [Job('pmae', 0.1)], root=tmp / 'no-data', runs=tmp / 'runs', results=tmp / 'results',
                      verbose=False)[0]
    assert again['pretrain']['steps'] == res[1]['pretrain']['steps']
    timeless = lambda probes: {k: {f: v for f, v in p.items() if f != 'wall_s'} for k, p in probes.items()}
    assert timeless(again['probes']) == timeless(res[1]['probes'])


def test_budgets_and_jobs():
    paper = job_config('tinyimagenet', Job('pmae', 0.2), 'paper')
    assert (paper.model, paper.epochs, paper.batch_size, paper.patch_size, paper.warmup, paper.warmup_epochs) == \
           ('vit_tiny', 800, 512, 0, 'exponential', 40)
    cpu = job_config('bloodmnist', Job('mae_std'), 'cpu')
    assert (cpu.model, cpu.patch_size, cpu.image_size, cpu.limit) == ('micro', 8, 64, 0)
    assert [j.tag for j in default_jobs('cifar10', 'cpu')] == ['mae_std', 'pmae_0.1', 'pmae_0.2']
    assert [j.row('pathmnist') for j in default_jobs('pathmnist', 'paper')] == ['MAE_std', 'MAE_rd', 'PMAE_ocl', 'PMAE r=0.2', 'PMAE_rd']
    with pytest.raises(BudgetError, match='needs a GPU'): check_device('paper', 'cpu')
    check_device('paper', 'cpu', force=True)


def test_only_the_smoke_budget_takes_a_stand_in(tmp_path):
    with pytest.raises(FileNotFoundError, match='Tiny ImageNet|tiny-imagenet'): data_root('tinyimagenet', 'cpu', tmp_path / 'none')
    root = data_root('dermamnist', 'smoke', tmp_path / 'none', tmp_path)
    assert (root / STAND_IN).exists() and (root / 'dermamnist_64.npz').exists()


def test_results_without_provenance_are_refused(tmp_path):
    good = paper_results()[0]
    folder = tmp_path / good['dataset'] / 'cpu'; folder.mkdir(parents=True)
    for key in PROVENANCE:
        f = folder / f'no_{key}.json'
        f.write_text(json.dumps(dict(good, provenance={k: v for k, v in good['provenance'].items() if k != key})))
        with pytest.raises(ProvenanceError, match=f'no_{key}.json: missing provenance.{key}'): load_results(tmp_path)
        f.unlink()
    (folder / 'bare.json').write_text(json.dumps({k: v for k, v in good.items() if k != 'provenance'}))
    with pytest.raises(ProvenanceError, match='bare.json: no provenance'): load_results(tmp_path)
    (folder / 'bare.json').write_text('{not json')
    with pytest.raises(ProvenanceError, match='bare.json: not valid JSON'): load_results(tmp_path)
    with pytest.raises(ProvenanceError, match='provenance says budget'): check_result(dict(good, budget='cpu'))


def test_table_reproduces_the_papers_numbers():
    rows = results_rows(paper_results())
    assert {r['diff'] for r in rows} == {0.0}
    grid = {}
    for r in rows: grid.setdefault((PROBE_NAMES[r['probe']], r['row']), {})[r['dataset']] = r['ours']
    assert {k: tuple(v[c] for c in PAPER_COLUMNS) for k, v in grid.items()} == PAPER_TABLE
    md = table1(rows)
    assert '| linear | PMAE_ocl | paper | 800 | 59.0 (59.0, +0.0) | 22.5 (22.5, +0.0) |' in md
    assert paper_value('fast', 'PMAE r=0.3', 'bloodmnist') == 95.3 and paper_value('mlp', 'MAE_rd', 'cifar10') is None


def test_committed_results_have_provenance():
    for r in load_results(REPO / 'results'):
        assert r['budget'] != 'smoke' and not r['provenance']['data_copy'].startswith('stand-in')
        assert set(r['semantics']) == {'cut', 'loss_norm', 'norm_pix'}


def test_results_written_before_the_switches_are_labelled_with_what_they_ran(tmp_path):
    "A results file without `semantics` ran closest / hidden-mean / norm-pix: its row says so, and it gets no paper number."
    old = json.loads((REPO / 'results' / 'cifar10' / 'cpu' / 'pmae_0.1.json').read_text())
    assert 'semantics' not in old and old['row'] == 'PMAE_ocl'
    for job in ('pmae_0.1', 'mae_std'):
        (tmp_path / 'cifar10' / 'cpu').mkdir(parents=True, exist_ok=True)
        (tmp_path / 'cifar10' / 'cpu' / f'{job}.json').write_text((REPO / 'results' / 'cifar10' / 'cpu' / f'{job}.json').read_text())
    rows = {r['job']: r for r in load_results(tmp_path)}
    assert rows['pmae_0.1']['row'] == 'PMAE_ocl, as written' and rows['mae_std']['row'] == 'MAE_std, norm-pix'
    assert rows['pmae_0.1']['semantics'] == dict(cut='closest', loss_norm='hidden', norm_pix=True)
    assert all(r['paper'] is None for r in results_rows(list(rows.values())))


def test_laptop_budget_runs_the_key_pair_and_the_contrasts_on_one_schedule():
    "The laptop set: MAE_std and PMAE_ocl as run for the whole schedule, the text's PMAE and norm-pix MAE stopped at epoch 40 of it."
    jobs = default_jobs('cifar10', 'laptop')
    assert [(j.row('cifar10'), j.stop_epoch) for j in jobs] == [('MAE_std', 0), ('PMAE_ocl', 0), ('PMAE_ocl, as written', 40),
                                                               ('MAE_std, norm-pix', 40), ('PMAE r=0.2', 40)]
    cfgs = [job_config('cifar10', j, 'laptop') for j in jobs]
    assert {(c.model, c.image_size, c.patch_size, c.epochs, c.batch_size, c.lr, c.keep_every) for c in cfgs} == {('mini', 16, 4, 100, 256, 1e-3, 5)}
    assert [c.semantics() for c in cfgs[2:4]] == [dict(cut='closest', loss_norm='hidden', norm_pix=False),
                                                 dict(cut='as_run', loss_norm='as_run', norm_pix=True)]


def test_a_curve_budget_probes_every_point_and_scores_the_pretext_task(tmp_path):
    "With `curve`, each snapshot on it gets every probe, the pre-training seconds so far, the held-out loss and predict-nothing's."
    from dataclasses import replace
    from pmae.reproduce import run_job
    budget = replace(BUDGETS['smoke'], epochs=2, curve=(1, 2))
    r = run_job('cifar10', Job('pmae', 0.1), budget, root=data_root('cifar10', 'smoke', tmp_path / 'none', tmp_path),
                runs=tmp_path / 'runs', results=tmp_path / 'results', device='cpu', verbose=False)
    points = r['curve']['points']
    assert [p['epoch'] for p in points] == [1, 2] and points[-1]['fast'] == r['probes']['fast']['accuracy']
    assert all(0 < p['wall_s'] and 0 < p['knn'] <= 100 and 0 < p['pretext_loss'] and 0 < p['predict_nothing'] for p in points)
    assert points[0]['wall_s'] < points[1]['wall_s'] and points[0]['predict_nothing'] == points[1]['predict_nothing']


def test_cli_reproduce(tmp_path, capsys, monkeypatch):
    p = pmae_cli('reproduce', 'cifar10', '--budget', 'smoke', '--jobs', 'pmae:0.2,cut=closest,loss_norm=hidden', '--data-root', tmp_path / 'none',
                 '--runs', tmp_path / 'runs', '--results', tmp_path / 'results', '--quiet', '--device', 'cpu',
                 '--compile', '--compile-mode', 'default', '--save-every', 1)
    assert p.returncode == 0, p.stderr
    path = tmp_path / 'results' / 'cifar10' / 'smoke' / 'pmae_0.2_as_written.json'
    assert 'PMAE r=0.2, as written' in p.stdout and str(path) in p.stdout
    saved = json.loads(path.read_text())
    assert saved['semantics'] == dict(cut='closest', loss_norm='hidden', norm_pix=False) and saved['row'] == 'PMAE r=0.2, as written'
    config = saved['pretrain']['config']
    assert (config['compile'], config['compile_mode'], config['save_every'], config['device']) == (True, 'default', 1, 'cpu')
    p = pmae_cli('reproduce', 'cifar10', '--budget', 'paper', '--device', 'cpu', '--runs', tmp_path / 'runs', '--results', tmp_path / 'results')
    assert p.returncode == 2 and "needs a GPU" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr   # the process's exit code
    for args, message in ((('cifar10', '--budget', 'paper', '--device', 'cpu'), "needs a GPU"),         # each bad input, in this process
                          (('cifar10', '--budget', 'cpu', '--data-root', tmp_path / 'none'), 'CIFAR-10 not found'),
                          (('mnist', '--budget', 'smoke'), "unknown data set 'mnist'"),
                          (('cifar10', '--jobs', 'pmae:lots'), "bad job 'pmae:lots'"),
                          (('cifar10', '--jobs', 'pmae:0.1,cut'), "bad job 'pmae:0.1,cut': expected METHOD[:RATIO][,FIELD=VALUE...]"),
                          (('cifar10', '--jobs', 'pmae:0.1,sharpness=2'), "bad job 'pmae:0.1,sharpness=2'"),
                          (('cifar10', '--budget', 'huge'), "invalid choice: 'huge'"),
                          (('cifar10', '--compile-mode', 'fast'), "invalid choice: 'fast'")):
        code, err = pmae_main(capsys, monkeypatch, 'reproduce', *args, '--runs', tmp_path / 'runs', '--results', tmp_path / 'results')
        assert code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err


def test_stop_epoch_ends_the_schedule_early_and_says_so(tmp_path):
    from dataclasses import replace
    from pmae.reproduce import run_job
    from pmae.train import read_checkpoint
    budget = replace(BUDGETS['smoke'], epochs=3, probes=('fast',))                  # a 3-epoch schedule, ended at epoch 2
    kw = dict(root=data_root('cifar10', 'smoke', tmp_path / 'none', tmp_path), runs=tmp_path / 'runs', results=tmp_path / 'results',
              device='cpu', verbose=False, stop_epoch=2)
    first = run_job('cifar10', Job('mae_std'), budget, **kw)
    assert (first['epochs'], first['schedule_epochs'], first['provenance']['epochs']) == (2, 3, 2)
    state = read_checkpoint(tmp_path / 'runs' / 'cifar10' / 'smoke' / 'mae_std' / 'checkpoint.pt')
    assert (state['epoch'], state['batch'], state['config']['epochs']) == (2, 0, 3)
    again = run_job('cifar10', Job('mae_std'), budget, **kw)                       # called again: not one step more
    assert again['pretrain']['steps'] == first['pretrain']['steps'] == 2 * 256 // 64


def test_raw_pixel_yardstick_is_written_once_beside_the_results_and_not_read_as_a_run(tmp_path):
    "A curve budget's raw-pixel probes land in `extra/raw_pixels.json` at the budget's resolution; results tables skip that folder."
    from dataclasses import replace
    from pmae.reproduce import raw_pixel_yardstick
    budget = replace(BUDGETS['smoke'], curve=(1,), image_size=16)
    root = data_root('cifar10', 'smoke', tmp_path / 'none', tmp_path)
    first = raw_pixel_yardstick('cifar10', budget, root, tmp_path / 'results', 'cpu')
    path = tmp_path / 'results' / 'cifar10' / 'smoke' / 'extra' / 'raw_pixels.json'
    assert path.is_file() and first['image_size'] == 16 and set(first['probes']) == {'fast', 'knn'}
    assert all(0 < v <= 100 for v in first['probes'].values()) and first['data_copy'].startswith('stand-in')
    assert raw_pixel_yardstick('cifar10', budget, root, tmp_path / 'results', 'cpu') == first      # read back, not re-measured
    assert load_results(tmp_path / 'results') == []


def test_scale_and_causal_jobs_name_their_model_and_decoder():
    "Issue 40's jobs: a model override and a decoder without [CLS] are in the tag, the row and the run's configuration."
    causal, deep = Job('mae_std', decoder_cls=False, stop_epoch=200), Job('pmae', 0.1, model='mini_deep', seed=1)
    assert (causal.tag, causal.row('cifar10')) == ('mae_std_nodeccls', 'MAE_std, decoder without [CLS]')
    assert (deep.tag, deep.row('cifar10')) == ('pmae_0.1_mini_deep_seed1', 'PMAE_ocl, mini_deep, seed 1')
    cfg = job_config('cifar10', causal, 'long')
    assert (cfg.decoder_cls, cfg.model, job_config('cifar10', deep, 'long').model) == (False, 'mini', 'mini_deep')
    assert Path(job_config('cifar10', deep, 'long').out).name == deep.tag
    with pytest.raises(ValueError, match='decoder_cls=False is an MAE switch'): job_config('cifar10', Job('pmae', 0.1, decoder_cls=False), 'long')


def test_long32_is_the_long_budget_at_32_pixels_with_patch_8():
    cfg = job_config('tinyimagenet', Job('pmae', 0.2), 'long32')
    long = BUDGETS['long']
    assert (cfg.image_size, cfg.patch_size, cfg.model, cfg.epochs, cfg.warmup, cfg.warmup_epochs) == (32, 8, 'mini', 800, 'exponential', 40)
    assert (BUDGETS['long32'].curve, BUDGETS['long32'].linear_at, BUDGETS['long32'].knn_k_max) == (long.curve, long.linear_at, long.knn_k_max)
    assert [j.row('tinyimagenet') for j in default_jobs('tinyimagenet', 'long32')] == ['MAE_std', 'PMAE_ocl']


def test_a_decoder_without_cls_is_rebuilt_by_load_model_and_load_trained(tmp_path):
    "The switch travels with the run: `load_model` (a checkpoint) and `load_trained` (an export) rebuild a decoder that ignores [CLS]."
    import torch
    from pmae.export import load_trained, save_trained
    from pmae.train import PretrainConfig, load_model, pretrain
    cfg = PretrainConfig(dataset='photos', model='micro', method='mae_std', decoder_cls=False, image_size=16, patch_size=4,
                         batch_size=64, limit=128, epochs=1, warmup_epochs=0, device='cpu', out=str(tmp_path / 'run'))
    pretrain(cfg, verbose=False)
    save_trained(tmp_path / 'run' / 'checkpoint.pt', tmp_path / 'export')
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    for model in (load_model(tmp_path / 'run' / 'checkpoint.pt'), load_trained(tmp_path / 'export')):
        assert model.decoder_cls is False
        mask = model.draw_masks(8, torch.Generator().manual_seed(0))
        tokens = model.encoder(model.normalize(images), mask.keep, mask.n_visible)               # (8, 1 + S, 64)
        swapped = torch.cat([tokens[:, :1].roll(1, 0), tokens[:, 1:]], 1)                         # each image gets another's [CLS]
        decode = lambda t: model.decoder(t, mask.restore, mask.n_visible, model.decoder_cls)
        assert torch.equal(decode(tokens), decode(swapped))


def test_cli_parses_the_model_and_decoder_switches():
    from pmae.cli import parse_job
    from pmae.core import ConfigError
    assert parse_job('mae_std,decoder_cls=false,stop_epoch=200') == Job('mae_std', decoder_cls=False, stop_epoch=200)
    assert parse_job('pmae:0.1,model=mini_wide,seed=1') == Job('pmae', 0.1, model='mini_wide', seed=1)
    with pytest.raises(ConfigError, match='fields cut, loss_norm, .*model, decoder_cls'): parse_job('mae_std,decoder=no')
