"""The GPU session command (bench/gpu_session.py), rehearsed end to end on the CPU: the micro model, a stand-in CIFAR-10,
a budget of minutes. Stopped after a stage and run again, it skips what is done and finishes; it leaves results with
provenance, small probe-able encoders, a one-page summary and an archive of what a window can bring back."""
import json, os, re, subprocess, sys, tarfile
from pathlib import Path

import pytest
import torch

from pmae.results import check_result

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'bench' / 'gpu_session.py'
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
STAGES = ('record', 'suite', 'throughput', 'concurrency', 'plan', 'jobs', 'encoders', 'summary')
JOBS = ('mae_std', 'pmae_0.1')


def session(*args, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='module')
def rehearsal(tmp_path_factory):
    "The session run twice: first stopped after the throughput stage, then to the end."
    out = tmp_path_factory.mktemp('session')
    common = ['--rehearsal', '--minutes', 3, '--out', out, '--data-root', out / 'no-data-here']
    return out, session('run', *common, '--until', 'throughput'), session('run', *common)


def test_stops_after_a_stage_and_continues_where_it_stopped(rehearsal):
    out, first, second = rehearsal
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert 'stopping after throughput' in first.stdout and '[concurrency]' not in first.stdout
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for stage in STAGES[:3]: assert f"[{stage}] done already" in second.stdout
    stages = json.loads((out / 'stages.json').read_text())
    assert [stages[s]['status'] for s in STAGES] == ['done'] * len(STAGES)


def test_records_the_machine_the_suite_and_the_throughput(rehearsal):
    out = rehearsal[0]
    record = json.loads((out / 'session.json').read_text())
    assert record['torch'] == torch.__version__ and record['rehearsal'] and record['device'].startswith('cpu')
    assert re.fullmatch(r'[0-9a-f]{40}(\+dirty)?', record['commit']) or record['commit'].startswith('unknown'), record['commit']
    stages = json.loads((out / 'stages.json').read_text())
    suite = stages['suite']['info']
    assert (suite['passed'], suite['failed'], suite['compile_ok']) == (0, [], False) and suite['skipped'] > 10   # no CUDA here
    assert set(stages['throughput']['info']['fast_images_per_s']) == {'mae_std', 'pmae'}
    plan = stages['plan']['info']
    assert plan['epochs'] >= 1 and plan['schedule_epochs'] == 4 and plan['n_train'] == 512


def test_results_have_provenance_and_the_paper_probes(rehearsal):
    out = rehearsal[0]
    plan = json.loads((out / 'stages.json').read_text())['plan']['info']
    for tag in JOBS:
        result = check_result(json.loads((out / 'results' / 'cifar10' / 'smoke' / f'{tag}.json').read_text()), tag)
        assert (result['epochs'], result['schedule_epochs']) == (plan['epochs'], 4)
        assert set(result['probes']) == {'linear', 'knn'} and {'best_acc', 'final_acc', 'best_epoch'} <= set(result['probes']['linear'])
        assert result['provenance']['data_copy'].startswith('stand-in')


def test_encoders_are_small_and_can_be_probed_elsewhere(rehearsal, tmp_path):
    out = rehearsal[0]
    for tag in JOBS: assert (out / 'encoders' / f'{tag}_encoder_bf16.pt').stat().st_size < 16 * 2**20
    encoder = tmp_path / 'received.pt'
    encoder.write_bytes((out / 'encoders' / 'pmae_0.1_encoder_bf16.pt').read_bytes())
    r = subprocess.run([sys.executable, '-m', 'pmae.cli', 'probe', str(encoder), '--kind', 'fast', '--epochs', '2', '--device', 'cpu'],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and 'fast probe of' in r.stdout, r.stderr[-2000:]


def test_summary_status_and_pack(rehearsal, tmp_path):
    out = rehearsal[0]
    summary = (out / 'summary.md').read_text()
    for text in ('# GPU session (CPU rehearsal)', '**GPU suite:**', '| 32 | pmae | fast |', 'MAE_std', 'PMAE_ocl', 'kNN'):
        assert text in summary, text
    status = session('status', '--out', out)
    assert status.returncode == 0 and 'summary      done' in status.stdout
    packed = session('pack', '--out', out, '--to', tmp_path / 'back')
    assert packed.returncode == 0, packed.stderr
    with tarfile.open(tmp_path / 'back' / 'session.tar.gz') as tar: names = set(tar.getnames())
    assert {'summary.md', 'session.json', 'stages.json', 'throughput.json', 'results/cifar10/smoke/pmae_0.1.json'} <= names
    assert not any(n.endswith('.pt') for n in names)
    assert sorted(p.name for p in (tmp_path / 'back').glob('*.pt')) == [f'{t}_encoder_bf16.pt' for t in JOBS]
