"""The GPU window's command (bench/gpu_session.py), rehearsed end to end on the CPU: the micro model, a stand-in CIFAR-10,
a budget of minutes. `window` is stopped by SIGTERM while its jobs train, as a call cut at its timeout would be, and its
--to folder is watched all along: it fills as the stages end and never holds more than a lent machine's call brings back.
`finish` then trains and probes what is left and writes the summary; on a machine that kept nothing it fails cleanly."""
import json, os, re, signal, subprocess, sys, tarfile, time
from pathlib import Path

import pytest
import torch

from pmae.cli import main
from pmae.results import check_result

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'bench' / 'gpu_session.py'
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
STAGES = ('record', 'data', 'suite', 'throughput', 'concurrency', 'plan', 'jobs', 'readings', 'encoders', 'suite_rest')
JOBS = ('mae_std', 'pmae_0.1')
MAX_FILES, MAX_MIB, MAX_DEPTH = 8, 16, 2          # what one `run` call brings back from $OUT


def command(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)

def snapshot(folder: Path) -> dict:
    "What a call would bring back from `folder` now: each file's size by relative path, and the archive's members."
    files = {}
    for p in folder.rglob('*') if folder.exists() else []:
        try: files[str(p.relative_to(folder))] = p.stat().st_size
        except FileNotFoundError: pass                                  # a file being replaced
    try:
        with tarfile.open(folder / 'session.tar.gz') as tar: members = frozenset(tar.getnames())
    except (OSError, tarfile.TarError): members = frozenset()
    return dict(t=time.time(), files=files, archive=members)

def within_limits(snap: dict) -> bool:
    files = snap['files']
    return (len(files) <= MAX_FILES and all(size <= MAX_MIB * 2**20 for size in files.values())
            and all(len(Path(name).parts) - 1 <= MAX_DEPTH for name in files))

def epochs_logged(run: Path) -> int:
    return len((run / 'metrics.jsonl').read_text().splitlines()) if (run / 'metrics.jsonl').exists() else 0


@pytest.fixture(scope='module')
def cut(tmp_path_factory):
    "`window` stopped by SIGTERM once both jobs have logged an epoch, with what its --to folder held all along."
    base = tmp_path_factory.mktemp('window')
    session, back, log = base / 'session', base / 'back', base / 'window.log'
    runs = session / 'runs' / 'cifar10' / 'smoke'
    argv = [sys.executable, SCRIPT, 'window', '--rehearsal', '--minutes', 3, '--out', session, '--to', back, '--data-root', base / 'no-data']
    with open(log, 'w') as f: p = subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    seen, signalled, t0 = [], None, time.time()
    while p.poll() is None and time.time() - t0 < 900:
        seen.append(snapshot(back))
        if signalled is None and all(epochs_logged(runs / j) >= 1 for j in JOBS): p.send_signal(signal.SIGTERM); signalled = time.time()
        time.sleep(0.2)
    p.wait(timeout=120)
    seen.append(snapshot(back))
    return dict(session=session, back=back, code=p.returncode, signalled=signalled, seen=seen, log=log.read_text())

@pytest.fixture(scope='module')
def finished(cut):
    "`finish` on the session `window` left, into a new --to folder (each call has its own $OUT)."
    t0, back = time.time(), cut['session'].parent / 'back2'
    r = command('finish', '--minutes', 2, '--out', cut['session'], '--to', back)
    return dict(result=r, back=back, seconds=time.time() - t0, stages=json.loads((cut['session'] / 'stages.json').read_text()))


def test_window_stops_cleanly_on_sigterm_while_its_jobs_train(cut):
    assert cut['signalled'] and cut['code'] == 3, cut['log'][-3000:]
    assert 'stopped by SIGTERM' in cut['log']
    stages = json.loads((cut['session'] / 'stages.json').read_text())
    assert [stages[s]['status'] for s in STAGES[:6]] == ['done'] * 6 and stages['jobs']['status'] == 'interrupted'
    assert 'encoders' not in stages


def test_what_comes_back_fills_as_the_stages_end_and_stays_within_the_limits(cut):
    seen = cut['seen']
    assert all(within_limits(s) for s in seen), next(s['files'] for s in seen if not within_limits(s))
    before = [s['archive'] for s in seen if s['archive'] and s['t'] < cut['signalled']]
    assert 'session.json' in before[0] and not any(n.startswith(('results/', 'throughput')) for n in before[0])
    assert len(set(before)) >= 4 and {'throughput_fast.json', 'throughput_eager.json', 'concurrent_pmae.json'} <= before[-1]
    last = seen[-1]                                                      # what the call stopped by SIGTERM brings back
    assert set(last['files']) == {'session.tar.gz', 'summary.md'}
    assert {f'runs/cifar10/smoke/{j}/metrics.jsonl' for j in JOBS} | {f'job_{j}.log' for j in JOBS} <= last['archive']
    assert not any(n.endswith('.pt') for n in last['archive'])
    assert 'no results yet' in (cut['back'] / 'summary.md').read_text()


def test_records_the_machine_the_suite_the_throughput_and_the_plan(cut):
    record = json.loads((cut['session'] / 'session.json').read_text())
    assert record['torch'] == torch.__version__ and record['rehearsal'] and record['device'].startswith('cpu')
    assert re.fullmatch(r'[0-9a-f]{40}(\+dirty)?', record['commit']) or record['commit'].startswith('unknown'), record['commit']
    info = {s: v.get('info', {}) for s, v in json.loads((cut['session'] / 'stages.json').read_text()).items()}
    assert (info['suite']['passed'], info['suite']['failed'], info['suite']['cut_short']) == (0, [], False) and info['suite']['skipped'] > 10
    assert set(info['throughput']['fast']) == set(info['throughput']['loader']) == {'mae_std', 'pmae'} and not info['throughput']['compile']
    assert info['concurrency']['startup_s'] > 0 and set(info['concurrency']['concurrent']) == {'mae_std', 'pmae'}
    assert info['plan']['epochs'] >= 1 and info['plan']['schedule_epochs'] == 4 and info['plan']['n_train'] == 512


def test_finish_trains_and_probes_what_is_left_and_writes_the_summary(finished, cut):
    r, stages = finished['result'], finished['stages']
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert [stages[s]['status'] for s in STAGES[6:9]] == ['done'] * 3 and stages['suite_rest']['status'] in ('done', 'skipped')
    assert finished['seconds'] < 2 * 60 + 30                            # its own budget, and a little for the last pack
    plan = stages['plan']['info']
    for tag in JOBS:
        result = check_result(json.loads((cut['session'] / 'results' / 'cifar10' / 'smoke' / f'{tag}.json').read_text()), tag)
        assert (result['epochs'], result['schedule_epochs']) == (plan['epochs'], 4)
        assert set(result['probes']) == {'linear', 'knn'} and {'best_acc', 'final_acc', 'best_epoch'} <= set(result['probes']['linear'])
        assert result['provenance']['data_copy'].startswith('stand-in')
    back = snapshot(finished['back'])
    assert within_limits(back) and set(back['files']) == {'session.tar.gz', 'summary.md', *(f'{t}_encoder_bf16.pt' for t in JOBS)}
    assert {'summary.md', 'stages.json', 'session.log', 'results/cifar10/smoke/readings.json', *(f'results/cifar10/smoke/{t}.json' for t in JOBS)} <= back['archive']
    summary = (finished['back'] / 'summary.md').read_text()
    for text in ('# GPU session (CPU rehearsal)', '**GPU suite:**', '| pmae | fast |', '| mae_std | reference |', 'MAE_std', 'PMAE_ocl', 'kNN',
                 '**Readings**', '| fast [CLS] | fast mean |'):
        assert text in summary, text
    assert 'no results yet' not in summary


def test_finish_fails_cleanly_where_the_machine_kept_nothing(tmp_path):
    r = command('finish', '--out', tmp_path / 'gone', '--to', tmp_path / 'back', timeout=300)
    assert r.returncode == 2 and 'nothing to finish' in r.stdout and 'Traceback' not in r.stderr, r.stdout + r.stderr


def test_encoders_are_small_and_can_be_probed_elsewhere(finished, tmp_path, capsys, monkeypatch):
    "A copied encoder file alone, in another folder, is probed by the `pmae` command (run in this process: no start-up)."
    for tag in JOBS: assert (finished['back'] / f'{tag}_encoder_bf16.pt').stat().st_size < 16 * 2**20
    encoder = tmp_path / 'received.pt'
    encoder.write_bytes((finished['back'] / 'pmae_0.1_encoder_bf16.pt').read_bytes())
    monkeypatch.chdir(tmp_path); capsys.readouterr()
    code = main(['probe', str(encoder), '--kind', 'fast', '--epochs', '2', '--device', 'cpu'])
    out, err = capsys.readouterr()
    assert code == 0 and 'fast probe of' in out, err[-2000:]


def test_readings_of_each_finished_model_on_both_poolings_and_its_decoders_use_of_cls(finished, cut):
    "Chapter 21's readings come back as a results file: fast probe and kNN on [CLS] and on the mean, and the swap test, per job."
    readings = json.loads((cut['session'] / 'results' / 'cifar10' / 'smoke' / 'readings.json').read_text())
    rows = {(r['job'], r['pool']): r for r in readings['rows']}
    assert set(rows) == {(j, p) for j in JOBS for p in ('cls', 'mean', 'cls_use')} and readings['provenance']['held_out'] == 256
    for j in JOBS:
        assert rows[j, 'cls']['fast'] != rows[j, 'mean']['fast'] and 0 <= rows[j, 'mean']['knn'] <= 100
        assert rows[j, 'cls_use']['ratio'] > 0 and rows[j, 'cls_use']['swapped'] > 0
    plan = finished['stages']['plan']['info']
    assert set(plan['readings_s']) == set(JOBS) and all(v > 0 for v in plan['readings_s'].values())   # reserved in the plan
