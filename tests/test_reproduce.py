"Reproduction runs (chapter 12) and results against the paper (chapter 13): budgets, provenance, the pmae reproduce command."
import json, os, subprocess, sys
from pathlib import Path

import pytest

from pmae.reproduce import (BUDGETS, PROVENANCE, STAND_IN, BudgetError, Job, check_device, data_root, default_jobs, job_config,
                            reproduce, result_path)
from pmae.results import (PAPER_COLUMNS, PAPER_TABLE, PROBE_NAMES, ProvenanceError, check_result, load_results, paper_results,
                          paper_value, results_rows, table1)

REPO = Path(__file__).resolve().parents[1]


def pmae_cli(*args, cwd=None):
    return subprocess.run([sys.executable, '-m', 'pmae.cli', *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, 'PMAE_DATA': '', 'PMAE_COMPILE_BACKEND': 'aot_eager'}, timeout=900)


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


def test_cli_reproduce(tmp_path):
    p = pmae_cli('reproduce', 'cifar10', '--budget', 'smoke', '--jobs', 'pmae:0.2', '--data-root', tmp_path / 'none',
                 '--runs', tmp_path / 'runs', '--results', tmp_path / 'results', '--quiet', '--device', 'cpu',
                 '--compile', '--compile-mode', 'default', '--save-every', 1)
    assert p.returncode == 0, p.stderr
    assert 'PMAE r=0.2' in p.stdout and (tmp_path / 'results' / 'cifar10' / 'smoke' / 'pmae_0.2.json').exists()
    config = json.loads((tmp_path / 'results' / 'cifar10' / 'smoke' / 'pmae_0.2.json').read_text())['pretrain']['config']
    assert (config['compile'], config['compile_mode'], config['save_every'], config['device']) == (True, 'default', 1, 'cpu')
    for args, message in ((('cifar10', '--budget', 'paper', '--device', 'cpu'), "needs a GPU"),
                          (('cifar10', '--budget', 'cpu', '--data-root', tmp_path / 'none'), 'CIFAR-10 not found'),
                          (('mnist', '--budget', 'smoke'), "unknown data set 'mnist'"),
                          (('cifar10', '--jobs', 'pmae:lots'), "bad job 'pmae:lots'"),
                          (('cifar10', '--budget', 'huge'), "invalid choice: 'huge'"),
                          (('cifar10', '--compile-mode', 'fast'), "invalid choice: 'fast'")):
        p = pmae_cli('reproduce', *args, '--runs', tmp_path / 'runs', '--results', tmp_path / 'results')
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


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
