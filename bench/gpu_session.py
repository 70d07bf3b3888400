"""One command turns a lent GPU window into numbers, and survives being killed.

    python bench/gpu_session.py prepare                     # here, before the window: records the commit in PMAE_COMMIT
    python bench/gpu_session.py start --minutes 25 --out /tmp/session --data-root gpudata   # on the GPU machine: detached
    python bench/gpu_session.py status --out /tmp/session   # poll: stages done, the log's tail, the runs' progress
    python bench/gpu_session.py pack --out /tmp/session --to "$OUT"   # the small files (and the bf16 encoders) to bring back
    python bench/gpu_session.py run --rehearsal --minutes 2 --out /tmp/rehearsal   # the same on a CPU: micro model, stand-in data

`start` runs `run` in a new session (`setsid`), so it goes on after the calling shell returns. `run` goes through
the stages below; each is recorded in OUT/stages.json when it is done, so running the command again (after a kill,
or with a larger budget) skips the finished stages and resumes the pre-training from its checkpoints.

1. record       the device, driver, torch and CUDA versions and the commit (git, or $PMAE_COMMIT / a PMAE_COMMIT file)
2. suite        the GPU test suite, tests/test_gpu.py (its pass/fail counts; compilation is used later only if its tests pass)
3. throughput   bench/pretrain_speed.py: the compiled bf16 fast path, the DataLoader path and the Hugging Face reference
4. concurrency  the fast paths of MAE_std and PMAE run side by side: is the total throughput higher than one at a time?
5. plan         how many epochs of the CIFAR-10 paper recipe fit in what is left of the budget, after the probes' share
6. jobs         MAE_std (75% of patches) and PMAE_ocl (10% of the variance) pre-trained on the 800-epoch schedule, ended at
                the planned epoch, then the paper's linear probe (best and final epoch) and kNN; results JSON with provenance
7. encoders     each encoder in bf16 (about 11 MB for ViT-T) so that the probes can be re-run elsewhere (`pmae probe FILE`)
8. summary      summary.md: one page with everything above
"""
import argparse, datetime, json, math, os, platform, shutil, subprocess, sys, tarfile, time
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from pmae.learner import read_metrics
from pmae.reproduce import BUDGETS, Job, data_root, result_path, run_job
from pmae.core import device_name, git_commit, write_commit_file
from pmae.results import PAPER_CURVE, paper_value
from pmae.train import PretrainConfig, load_training_data, save_encoder
from pmae.core import pick_device

STAGES = ('record', 'suite', 'throughput', 'concurrency', 'plan', 'jobs', 'encoders', 'summary')
JOBS = (Job('mae_std'), Job('pmae', 0.1))          # MAE_std and PMAE_ocl on CIFAR-10
STARTUP_S = {True: 5, False: 150}                   # per job, before its first epoch: data, PCA, compilation (rehearsal, GPU)
OVERHEAD_S = {True: 5, False: 60}                   # per job, besides the probes' passes: kNN, evaluations, snapshots' probes


# ---------------------------------------------------------------- the session's bookkeeping
class Session:
    "The output folder, the arguments, the clock, and which stages are done (OUT/stages.json)."
    def __init__(self, args):
        self.args, self.out, self.t0 = args, Path(args.out), time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / 'stages.json'
        self.stages = json.loads(self.path.read_text()) if self.path.exists() else {}

    def left(self) -> float: return self.args.minutes * 60 - (time.time() - self.t0)
    def info(self, stage: str) -> dict: return self.stages.get(stage, {}).get('info', {})
    def save(self): self.path.write_text(json.dumps(self.stages, indent=1))

    def run(self, stage: str, fn):
        "Run `fn(self)` unless the stage is done already; record its outcome."
        if self.stages.get(stage, {}).get('status') == 'done':
            return say(f"[{stage}] done already ({self.stages[stage]['finished']})")
        say(f"[{stage}] starting, {self.left() / 60:.1f} min left")
        self.stages[stage] = dict(status='running', started=now()); self.save()
        try: info = fn(self) or {}
        except Exception as e:
            self.stages[stage].update(status='failed', finished=now(), error=f"{type(e).__name__}: {e}"); self.save()
            raise
        self.stages[stage].update(status='done', finished=now(), info=info); self.save()
        say(f"[{stage}] done: {json.dumps(info)[:300]}")


def now() -> str: return datetime.datetime.now().astimezone().isoformat(timespec='seconds')

def say(line: str): print(line, flush=True)

def run_logged(cmd: list, log: Path, timeout: float, **kw) -> int:
    "Run `cmd` from the repository root with its output going to `log`; its exit code (124 when it ran out of time)."
    with open(log, 'w') as f:
        try: return subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout, 1), **kw).returncode
        except subprocess.TimeoutExpired: return 124


# ---------------------------------------------------------------- stages 1-4: what the machine is and how fast it trains
def gpu_driver() -> str:
    "The NVIDIA driver version as nvidia-smi reports it, or why there is none."
    try: r = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e: return f"n/a ({type(e).__name__})"
    return r.stdout.strip() or f"n/a (nvidia-smi exit {r.returncode})"

def stage_record(s: Session) -> dict:
    device = pick_device('auto')
    info = dict(device=device_name(device), driver=gpu_driver(), torch=torch.__version__, cuda=torch.version.cuda,
                commit=git_commit(ROOT), python=platform.python_version(), host=platform.node(), started=now(),
                minutes=s.args.minutes, rehearsal=s.args.rehearsal)
    (s.out / 'session.json').write_text(json.dumps(info, indent=1))
    return info

def stage_suite(s: Session) -> dict:
    xml = s.out / 'gpu_suite.xml'
    code = run_logged([sys.executable, '-m', 'pytest', 'tests/test_gpu.py', '-ra', '-q', '-p', 'no:cacheprovider', f'--junitxml={xml}'],
                      s.out / 'gpu_suite.log', 600)
    counts = {'tests': 0, 'failures': 0, 'errors': 0, 'skipped': 0}
    failed = []
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == 'testsuite' else suite.find('testsuite')
        counts = {k: int(suite.get(k, 0)) for k in counts}
        failed = [c.get('name') for c in suite.iter('testcase') if c.find('failure') is not None or c.find('error') is not None]
    passed = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
    compiled_ok = passed > 0 and not any(n.startswith(('test_compiled_step', 'test_cuda_graphs')) for n in failed)
    return dict(returncode=code, passed=passed, failed=failed, skipped=counts['skipped'], compile_ok=compiled_ok)

def speed_args(s: Session, compile_ok: bool) -> list:
    "bench/pretrain_speed.py's settings: ViT-T at batch 512 on the GPU; a tiny model and a few steps in a rehearsal."
    if s.args.rehearsal: return ['--device', 'cpu', '--model', 'micro', '--sizes', '32', '--batch', '16', '--steps', '2', '--warmup', '1',
                                 '--no-compile', '--limit', '256', '--workers', '0']
    return ['--device', 'cuda', '--sizes', '32', '64', '--batch', '512', '--steps', '20', '--warmup', '5', '--workers', '8'] + \
           ([] if compile_ok else ['--no-compile'])

def fast_speeds(path: Path, size: int = 32) -> dict:
    "Images/s of the fast path at `size` by method, from a pretrain_speed JSON."
    rows = json.loads(path.read_text())['rows'] if path.exists() else []
    return {r['method']: r['images_per_s'] for r in rows if r['size'] == size and r['path'] == 'fast' and 'images_per_s' in r}

def stage_throughput(s: Session) -> dict:
    out = s.out / 'throughput.json'
    code = run_logged([sys.executable, 'bench/pretrain_speed.py', *speed_args(s, s.info('suite').get('compile_ok', False)),
                       '--json', out], s.out / 'throughput.log', 900)
    speeds = fast_speeds(out)
    if set(speeds) != {'mae_std', 'pmae'}: raise RuntimeError(f"the throughput benchmark gave no fast-path speed (exit {code}); see throughput.log")
    return dict(returncode=code, fast_images_per_s=speeds)

def stage_concurrency(s: Session) -> dict:
    "Both fast paths at once, in two processes: the total throughput against one at a time."
    settings = speed_args(s, s.info('suite').get('compile_ok', False))
    settings[settings.index('--steps') + 1] = '4' if s.args.rehearsal else '60'                 # long enough to overlap
    barrier = s.out / 'concurrency_barrier'; shutil.rmtree(barrier, ignore_errors=True)       # both time their steps at once
    procs = {m: subprocess.Popen([sys.executable, 'bench/pretrain_speed.py', *settings, '--methods', m, '--paths', 'fast',
                                  '--sizes', '32', '--json', s.out / f'concurrent_{m}.json', '--sync-dir', barrier], cwd=ROOT,
                                 stdout=open(s.out / f'concurrent_{m}.log', 'w'), stderr=subprocess.STDOUT) for m in ('mae_std', 'pmae')}
    for p in procs.values(): p.wait(timeout=600)
    solo, both = s.info('throughput')['fast_images_per_s'], {m: fast_speeds(s.out / f'concurrent_{m}.json').get(m) for m in procs}
    if None in both.values(): return dict(solo=solo, concurrent=both, total_gain=None, concurrent_faster=False)
    gain = sum(both[m] / solo[m] for m in both)                         # > 1: more work done per second side by side
    return dict(solo=solo, concurrent=both, total_gain=gain, concurrent_faster=gain > 1.05)


# ---------------------------------------------------------------- stages 5-7: the paper's CIFAR-10 runs
def session_budget(s: Session):
    "The jobs' recipe: the paper's (linear probe and kNN; compiled if the suite's compile tests passed), or a tiny rehearsal's."
    # the rehearsal takes ten times the base learning rate: its few steps then move the two encoders apart
    if s.args.rehearsal:
        return replace(BUDGETS['smoke'], epochs=4, warmup_epochs=1, limit=0, base_lr=1.5e-3, probes=('linear', 'knn'), probe_epochs=2)
    return replace(BUDGETS['paper'], probes=('linear', 'knn'), compile=s.info('suite').get('compile_ok', False))

def stage_plan(s: Session) -> dict:
    b, conc = session_budget(s), s.info('concurrency')
    root = data_root('cifar10', b, s.args.data_root, s.out / 'stand-ins')
    n = len(load_training_data(PretrainConfig(dataset='cifar10', data_root=str(root), limit=b.limit)).train)
    solo = s.info('throughput')['fast_images_per_s']
    together = conc.get('concurrent_faster', False)
    speeds = conc['concurrent'] if together else solo
    epoch_s = {m: n / v for m, v in speeds.items()}
    per_epoch = max(epoch_s.values()) if together else sum(epoch_s.values())        # wall seconds per epoch of both jobs
    probe_s = sum((b.probe_epochs or 100) * n / (3 * solo[j.method]) + OVERHEAD_S[s.args.rehearsal] for j in JOBS)   # ~1/3 of a step a pass
    reserve = probe_s + STARTUP_S[s.args.rehearsal] * len(JOBS) + 30 + 0.05 * s.left()   # + the summary and a margin
    epochs = max(1, min(b.epochs, math.floor((s.left() - reserve) / per_epoch)))
    return dict(dataset='cifar10', data_root=str(root), n_train=n, schedule_epochs=b.epochs, epochs=epochs, concurrent=together,
                wall_s_per_epoch=per_epoch, probe_s=probe_s, reserve_s=reserve, left_s=s.left(), compile=b.compile, probes=list(b.probes))

def stage_jobs(s: Session) -> dict:
    plan, b = s.info('plan'), session_budget(s)
    todo = [j for j in JOBS if not result_path(s.out / 'results', 'cifar10', b.name, j).exists()]
    limit = [] if s.args.rehearsal else ['--time-limit', int(max(s.left() - plan['probe_s'] - 60, 60))]   # leave the probes their time
    cmd = lambda j: [sys.executable, __file__, 'job', '--out', s.out, '--job', f"{j.method}:{j.ratio}", '--epochs', plan['epochs'],
                     *limit] + (['--rehearsal'] if s.args.rehearsal else [])
    launch = lambda j: subprocess.Popen([str(c) for c in cmd(j)], cwd=ROOT, stdout=open(s.out / f'job_{j.tag}.log', 'a'), stderr=subprocess.STDOUT)
    codes = {}
    if plan['concurrent']:
        procs = {j.tag: launch(j) for j in todo}
        codes = {t: p.wait() for t, p in procs.items()}
    else:
        for j in todo: codes[j.tag] = launch(j).wait()
    missing = [j.tag for j in JOBS if not result_path(s.out / 'results', 'cifar10', b.name, j).exists()]
    if missing: raise RuntimeError(f"jobs without results: {missing} (exit codes {codes}); see job_*.log, then run again to resume")
    return dict(exit_codes=codes, results=[str(result_path(s.out / 'results', 'cifar10', b.name, j)) for j in JOBS])

def run_one_job(args):
    "`job`: one pre-training run and its probes (a separate process, so that two can run side by side)."
    s = Session(args)
    method, _, ratio = args.job.partition(':')
    plan = s.info('plan')
    return run_job('cifar10', Job(method, float(ratio or 0)), session_budget(s), plan['data_root'], s.out / 'runs', s.out / 'results',
                   'cpu' if args.rehearsal else 'cuda', args.time_limit, False, args.epochs)

def stage_encoders(s: Session) -> dict:
    b, sizes = session_budget(s), {}
    for j in JOBS:
        ckpt = s.out / 'runs' / 'cifar10' / b.name / j.tag / 'checkpoint.pt'
        target = save_encoder(ckpt, s.out / 'encoders' / f"{j.tag}_encoder_bf16.pt")
        sizes[j.tag] = round(target.stat().st_size / 2**20, 2)
    return dict(mib=sizes)


# ---------------------------------------------------------------- stage 8: one page
def table_md(rows: list) -> list:
    "The throughput rows as Markdown lines."
    head = ['| size | method | path | images/s | ms/step | TFLOP/s | % of bf16 peak | peak GiB |', '|---|---|---|---:|---:|---:|---:|---:|']
    f = lambda v, spec: 'n/a' if v is None else format(v, spec)
    return head + [f"| {r['size']} | {r['method']} | {r['path']} | {f(r.get('images_per_s'), ',.0f')} | {f(r.get('ms_per_step'), '.1f')} | "
                   f"{f(r.get('tflops'), '.1f')} | {f(r.get('peak_fraction'), '.1%')} | {f(r.get('peak_gpu_gib'), '.1f')} |" for r in rows]

def job_md(result: dict) -> list:
    "A job's numbers beside the paper's (Table 1 at 800 epochs; the learning curve at our epoch when it has that point)."
    lin, knn, e = result['probes']['linear'], result['probes']['knn'], result['epochs']
    curve = PAPER_CURVE.get('PMAE_ocl' if result['row'] == 'PMAE_ocl' else 'MAE_ocl', {})
    at = f"; paper's curve ({'PMAE_ocl' if result['row'] == 'PMAE_ocl' else 'MAE_ocl'}) at epoch {e}: {curve[e]}" if e in curve else ''
    return [f"- **{result['row']}** ({result['hidden']}), {e} of {result['schedule_epochs']} epochs, "
            f"{result['pretrain']['wall_s'] / 60:.1f} min pre-training at {result['pretrain']['images_per_s']:,.0f} images/s: "
            f"linear {lin['best_acc']:.1f}% (best, epoch {lin['best_epoch']}) / {lin['final_acc']:.1f}% (final), "
            f"kNN {knn['accuracy']:.1f}% (k = {knn['best_k']}); the paper at 800 epochs: linear {paper_value('linear', result['row'], 'cifar10')}, "
            f"kNN {paper_value('knn', result['row'], 'cifar10')}{at}"]

def stage_summary(s: Session) -> dict:
    rec, suite, plan, conc = s.info('record'), s.info('suite'), s.info('plan'), s.info('concurrency')
    bench = json.loads((s.out / 'throughput.json').read_text())
    results = [json.loads(result_path(s.out / 'results', 'cifar10', session_budget(s).name, j).read_text()) for j in JOBS]
    p = bench['cifar10_800_epochs']
    lines = [f"# GPU session{' (CPU rehearsal)' if rec['rehearsal'] else ''}: {rec['device']}", '',
             f"torch {rec['torch']} (CUDA {rec['cuda']}), driver {rec['driver']}, commit {rec['commit']}, started {rec['started']}, "
             f"budget {rec['minutes']} min.", '',
             f"**GPU suite:** {suite['passed']} passed, {len(suite['failed'])} failed, {suite['skipped']} skipped"
             + (f" (failed: {', '.join(suite['failed'])})" if suite['failed'] else '') + '.', '',
             '**Throughput** (bench/pretrain_speed.py):', '', *table_md(bench['rows']), '',
             f"800 epochs of CIFAR-10 at the fast path's PMAE speed: {p['minutes']:.1f} min." if p.get('minutes') else '',
             f"Side by side, the two fast paths did {conc.get('total_gain') or float('nan'):.2f}x the work of one at a time: "
             f"{'run together' if plan['concurrent'] else 'run one after the other'}.", '',
             f"**Runs:** CIFAR-10 ({plan['n_train']:,} training images, {plan['data_root']}), the paper's recipe on its "
             f"{plan['schedule_epochs']}-epoch schedule ended at epoch {plan['epochs']}, compiled: {plan['compile']}.", '',
             *[l for r in results for l in job_md(r)], '']
    (s.out / 'summary.md').write_text('\n'.join(lines))
    return dict(file=str(s.out / 'summary.md'))


# ---------------------------------------------------------------- the commands
STAGE_FUNCTIONS = dict(record=stage_record, suite=stage_suite, throughput=stage_throughput, concurrency=stage_concurrency,
                       plan=stage_plan, jobs=stage_jobs, encoders=stage_encoders, summary=stage_summary)

def run(args) -> int:
    s = Session(args)
    for stage in STAGES:
        s.run(stage, STAGE_FUNCTIONS[stage])
        if stage == args.until: say(f"stopping after {stage}, as asked"); return 0
    say(f"session complete: {s.out / 'summary.md'}")
    return 0

def start(args) -> int:
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, __file__, 'run', '--out', out, '--minutes', args.minutes, '--data-root', args.data_root] + \
           (['--rehearsal'] if args.rehearsal else [])
    p = subprocess.Popen([str(a) for a in argv], cwd=ROOT, stdout=open(out / 'session.log', 'a'), stderr=subprocess.STDOUT,
                         start_new_session=True)
    (out / 'session.pid').write_text(str(p.pid))
    say(f"started the session in the background (pid {p.pid}); log {out / 'session.log'}; poll with: python {__file__} status --out {out}")
    return 0

def status(args) -> int:
    out = Path(args.out)
    stages = json.loads((out / 'stages.json').read_text()) if (out / 'stages.json').exists() else {}
    for st in STAGES: say(f"{st:12} {stages.get(st, {}).get('status', '-'):8} {stages.get(st, {}).get('finished', '')}")
    for run_dir in sorted((out / 'runs').glob('*/*/*')) if (out / 'runs').exists() else []:
        m = read_metrics(run_dir)
        if m: say(f"{run_dir.name}: epoch {m[-1]['epoch']}, loss {m[-1]['loss']:.4f}, {m[-1]['images_per_s']:,.0f} images/s")
    if (out / 'session.log').exists(): say(''.join((out / 'session.log').read_text().splitlines(keepends=True)[-10:]))
    return 0

def pack(args) -> int:
    "The session's small files in one archive, and the bf16 encoders beside it: what a window can bring back."
    out, to = Path(args.out), Path(args.to); to.mkdir(parents=True, exist_ok=True)
    small = [p for p in out.rglob('*') if p.is_file() and 'runs' not in p.relative_to(out).parts[:1] and p.suffix != '.pt']
    small += [p for p in (out / 'runs').rglob('*') if p.name in ('metrics.jsonl', 'pretrain.json', 'config.json') or p.name.startswith('probe_')] \
             if (out / 'runs').exists() else []
    with tarfile.open(to / 'session.tar.gz', 'w:gz') as tar:
        for p in small: tar.add(p, arcname=str(p.relative_to(out)))
    for p in sorted((out / 'encoders').glob('*.pt')) if (out / 'encoders').exists() else []: shutil.copy2(p, to / p.name)
    say(f"packed {len(small)} files into {to / 'session.tar.gz'}; encoders copied to {to}")
    return 0

def prepare(args) -> int:
    path = write_commit_file(ROOT)
    say(f"{path}: {path.read_text().strip()} (travels with the tree; the session reads it where there is no .git)")
    return 0

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    for name in ('run', 'start', 'job'):
        s = sub.add_parser(name)
        s.add_argument('--out', required=True, help='the session folder (outside the checkout on a lent machine)')
        s.add_argument('--minutes', type=float, default=25, help='the time this session may spend, from now')
        s.add_argument('--data-root', default='data', help='where cifar10/ (or its stand-in, in a rehearsal) is')
        s.add_argument('--rehearsal', action='store_true', help='the micro model, a stand-in data set, a few steps: for a CPU')
        if name == 'run': s.add_argument('--until', choices=STAGES, help='stop after this stage')
        if name == 'job':
            s.add_argument('--job', required=True); s.add_argument('--epochs', type=int, required=True)
            s.add_argument('--time-limit', type=float)
    s = sub.add_parser('status'); s.add_argument('--out', required=True)
    s = sub.add_parser('pack'); s.add_argument('--out', required=True); s.add_argument('--to', required=True)
    sub.add_parser('prepare')
    return p.parse_args(argv)

def main(argv=None) -> int:
    args = parse_args(argv)
    return dict(run=run, start=start, status=status, pack=pack, prepare=prepare,
                job=lambda a: bool(run_one_job(a)) and 0)[args.command](args)


if __name__ == '__main__':
    sys.exit(main())
