"""One prepared command turns a lent GPU's 9.5-minute call into numbers, and brings back what it has even when cut short.

    python bench/gpu_session.py prepare                  # here, before the window: PMAE_COMMIT, and checks of what travels
    python bench/gpu_session.py window --minutes 9.5 --data-root gpudata --out /tmp/pmae-session --to "$OUT"   # call 1
    python bench/gpu_session.py finish --minutes 2 --out /tmp/pmae-session --to "$OUT"        # call 2, at once (optional)
    python bench/gpu_session.py window --rehearsal --minutes 3 --out /tmp/r --to /tmp/r-back   # the same on a CPU, in minutes

README.md ("A lent GPU") gives the exact `run` calls. `window` goes through the stages below within --minutes, each
recorded in OUT/stages.json when done: run again on the same folder, it skips what is done and resumes the pre-training
from its checkpoints. `finish` does what is left after the plan (jobs, readings, encoders, the rest of the suite) in its own
minutes: it takes runs that were stopped on towards the planned epoch as far as its time allows and probes them, and
exits with code 2 and a message when the folder holds no plan (the machine was given back between the calls). After every stage, and every 20 s while one runs, --to is
brought up to date: session.tar.gz (every small file: logs, JSON, metrics), summary.md (one page of all so far) and each
encoder in bf16: four files, no folders. On SIGTERM a command stops its processes (the jobs checkpoint), brings --to up
to date and exits with code 3; a failed stage is recorded and the next ones go on (exit code 1).

1. record       the device, driver, nvidia-smi, torch and CUDA versions and the commit (git, $PMAE_COMMIT or PMAE_COMMIT)
2. data         CIFAR-10 decoded once, into the caches the later processes read (a stand-in data set in a rehearsal)
3. suite        the fast part of tests/test_gpu.py: all but the compilation, CUDA-graph, `pmae reproduce` and torchrun tests
4. throughput   bench/pretrain_speed.py at 32 px on those images, both methods: the compiled bf16 fast path (one process), then
                the DataLoader path and the Hugging Face ViTMAE fp32 reference (another); the jobs compile only if the first ran
5. concurrency  both fast paths side by side: the images/s of each, and how long a process takes to reach its first step
6. plan         how many epochs of the paper's 800-epoch CIFAR-10 schedule fit, with the jobs' start and probes reserved
7. jobs         MAE_std (75% of patches) and PMAE_ocl (10% of the variance), with the reference code's semantics, side by
                side if that was faster, each ended at the planned epoch (a time guard stops it earlier if need be), then
                the paper's linear probe (best and final epoch) and kNN: results JSON with provenance
8. readings     chapter 21's two readings of each finished model: the fast probe and kNN on [CLS] and on the patch tokens'
                mean, and what its decoder reads from [CLS] (the swap test, `pmae.diagnosis.cls_use`, 2,048 test images):
                OUT/results/cifar10/<budget>/readings.json; its minutes are reserved in the plan
9. encoders     each encoder in bf16 (about 11 MB for ViT-T), to re-run the probes elsewhere (`pmae probe FILE`)
10. suite_rest  the rest of tests/test_gpu.py, if time is left
"""
import time
STARTED = time.time()                                # the command's clock starts before its imports

import argparse, datetime, io, json, math, os, platform, re, signal, shutil, subprocess, sys, tarfile, traceback
from collections import Counter
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from pmae.data import load_dataset
from pmae.diagnosis import cls_use
from pmae.mae import POOLS
from pmae.core import atomic_write, device_name, git_commit, write_commit_file, write_json
from pmae.learner import read_metrics
from pmae.reproduce import (BUDGETS, Job, RunStopped, data_copy, data_root, probe_config, probe_passes, result_path, run_job,
                            snapshot_probe, snapshots)
from pmae.results import PAPER_CURVE, paper_value
from pmae.train import PretrainConfig, load_model, load_training_data, save_encoder

STAGES = ('record', 'data', 'suite', 'throughput', 'concurrency', 'plan', 'jobs', 'readings', 'encoders', 'suite_rest')
FINISH = STAGES[STAGES.index('jobs'):]              # what `finish` does: everything after the plan
JOBS = (Job('mae_std'), Job('pmae', 0.1))           # MAE_std and PMAE_ocl on CIFAR-10, the reference code's semantics
METHODS = ('mae_std', 'pmae')                       # bench/pretrain_speed.py's methods
SLOW_TESTS = ('compiled_step', 'cuda_graphs', 'reproduce_smoke', 'torchrun')   # tests/test_gpu.py's slow tests, by name
EAGER = 2                                           # a probe's eager forward pass against the compiled step, per image
READING_PASSES = 4 / 3                              # the readings: fast probe and kNN on both poolings, a frozen pass each
HELD_OUT = 2048                                     # test images of the swap test, as chapter 21's
LOG_TAIL = 512 * 1024                               # the bytes of each log that go into the archive (its end)
SKIP = {'stand-ins', 'tensorboard', 'concurrency_barrier', 'encoders'}   # folders of the session that are not packed


@dataclass(frozen=True)
class Timing:
    "The seconds a session gives its parts."
    suite: float           # the fast part of the suite, at most
    fast_paths: float      # the throughput of the compiled fast paths, at most
    eager_paths: float     # the throughput of the DataLoader and reference paths, at most
    concurrency: float     # the side-by-side measurement, at most
    startup: float         # a job's process before its first step, when the concurrency stage did not measure it
    probe_overhead: float  # a job's time besides its probes' passes: data, features, kNN, the snapshots' fast probes
    margin: float          # at the end: the encoders, the summary and the last pack
    pack_every: float      # between packs while a stage runs
    rest_min: float        # the rest of the suite runs only with this much time left

TIMING = {False: Timing(suite=60, fast_paths=100, eager_paths=45, concurrency=60, startup=60, probe_overhead=30, margin=25,
                        pack_every=20, rest_min=60),
          True: Timing(suite=90, fast_paths=90, eager_paths=90, concurrency=90, startup=20, probe_overhead=10, margin=10,
                       pack_every=2, rest_min=20)}


def session_budget(rehearsal: bool, compile: bool):
    "The jobs' recipe: the paper's (linear probe and kNN), or a rehearsal's tiny one (ten times the learning rate, to move its encoders)."
    if rehearsal:
        return replace(BUDGETS['smoke'], epochs=4, warmup_epochs=1, limit=0, base_lr=1.5e-3, probes=('linear', 'knn'), probe_epochs=2)
    return replace(BUDGETS['paper'], probes=('linear', 'knn'), compile=compile)

def now() -> str:
    "The local time, to the second."
    return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


# ---------------------------------------------------------------- the session's bookkeeping
class Interrupted(BaseException):
    "SIGTERM or SIGINT: the command is asked to stop."

class Skipped(Exception):
    "A stage that this command has no time for (a later one may run it)."

def interrupt(signum, frame):
    "The signal handler of `window` and `finish`: stop cleanly."
    raise Interrupted(signal.Signals(signum).name)

class Session:
    "The session folder, this command's arguments and clock, and which stages are done (OUT/stages.json)."
    def __init__(self, args):
        self.args, self.out, self.t0, self.packed = args, Path(args.out), STARTED, 0.0
        self.path = self.out / 'stages.json'
        self.stages = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.rehearsal = self.info('record').get('rehearsal', getattr(args, 'rehearsal', False))
        self.timing, self.device = TIMING[self.rehearsal], 'cpu' if self.rehearsal else 'cuda'

    def left(self) -> float: return self.args.minutes * 60 - (time.time() - self.t0)
    def info(self, stage: str) -> dict: return self.stages.get(stage, {}).get('info', {})
    def status(self, stage: str) -> str: return self.stages.get(stage, {}).get('status', 'not run')

    def need(self, stage: str) -> dict:
        "The info of `stage` if it is done, else an error that says it is not."
        if self.status(stage) != 'done': raise RuntimeError(f"this needs the {stage} stage, which is {self.status(stage)}")
        return self.info(stage)

    def say(self, line: str):
        "Print `line` and add it to OUT/session.log."
        print(line, flush=True)
        with open(self.out / 'session.log', 'a') as f: f.write(line + '\n')

    def end(self, stage: str, status: str, info: dict, t0: float):
        "Record how `stage`, begun at time `t0`, ended."
        self.stages[stage].update(status=status, finished=now(), seconds=round(time.time() - t0, 1), info=info)
        write_json(self.stages, self.path)

    def run(self, stage: str, fn) -> bool:
        "Run `fn(self)` unless `stage` is done; record how it ended and pack; False when it failed."
        if self.status(stage) == 'done': self.say(f"[{stage}] done already"); return True
        self.say(f"[{stage}] starting, {self.left() / 60:.1f} min left")
        self.stages[stage], t0 = dict(status='running', started=now()), time.time()
        write_json(self.stages, self.path)
        try: status, info = 'done', fn(self) or {}
        except Skipped as e: status, info = 'skipped', dict(reason=str(e))
        except Interrupted: self.end(stage, 'interrupted', {}, t0); raise
        except Exception as e:
            status, info = 'failed', dict(error=f"{type(e).__name__}: {e}")
            self.say(traceback.format_exc().rstrip())
        self.end(stage, status, info, t0)
        self.say(f"[{stage}] {status}: {json.dumps(info)[:300]}")
        self.pack()
        return status in ('done', 'skipped')

    def spawn(self, cmd: list, log: Path) -> subprocess.Popen:
        "Start `cmd` from the repository root, its output appended to `log`."
        env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
        with open(log, 'a') as f:
            return subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)

    def wait(self, procs: dict, limit: float) -> dict:
        "Wait at most `limit` s for `procs`, packing as they run; stop those still running (SIGTERM, then SIGKILL); their exit codes."
        end = time.time() + limit
        try:
            while any(p.poll() is None for p in procs.values()) and time.time() < end:
                time.sleep(0.2)
                if time.time() - self.packed > self.timing.pack_every: self.pack()
        finally: stop(procs.values(), grace=5 if self.rehearsal else 15)
        return {k: p.returncode for k, p in procs.items()}

    def call(self, cmd: list, log: Path, limit: float) -> int | None:
        "Run `cmd` for at most `limit` s: its exit code, None when it was stopped at the limit."
        p = self.spawn(cmd, log)
        code = self.wait({'cmd': p}, limit)['cmd']
        return None if code in (-signal.SIGTERM, -signal.SIGKILL) else code

    def pack(self):
        "Bring --to up to date: summary.md, session.tar.gz (the small files, each log's end) and the encoders; no folders."
        self.packed, to = time.time(), Path(self.args.to)
        try:
            write_summary(self)
            atomic_write(to / 'session.tar.gz', lambda f: write_archive(f, self.out))
            for src in [self.out / 'summary.md', *sorted((self.out / 'encoders').glob('*.pt'))]: copy_if_changed(src, to / src.name)
        except Exception as e: self.say(f"could not pack into {to}: {type(e).__name__}: {e}")   # the next pack tries again

def stop(procs, grace: float):
    "SIGTERM each running process (the jobs checkpoint on it), then SIGKILL what is left after `grace` s."
    running = [p for p in procs if p.poll() is None]
    for p in running: p.terminate()
    for p in running:
        try: p.wait(timeout=grace)
        except subprocess.TimeoutExpired: p.kill(); p.wait()

def small_files(out: Path) -> list[Path]:
    "The session's files that come back: all but weights (.pt), half-written files, stand-in data and TensorBoard logs."
    return sorted(p for p in out.rglob('*') if p.is_file() and p.suffix not in ('.pt', '.tmp') and not SKIP & set(p.relative_to(out).parts))

def write_archive(f, out: Path):
    "A gzipped tar of `small_files(out)` into the open file `f`; each log cut to its last LOG_TAIL bytes."
    with tarfile.open(fileobj=f, mode='w:gz') as tar:
        for p in small_files(out):
            try: data, mtime = p.read_bytes(), p.stat().st_mtime
            except FileNotFoundError: continue                        # replaced while we looked
            data = data[-LOG_TAIL:] if p.suffix == '.log' else data
            info = tarfile.TarInfo(str(p.relative_to(out))); info.size, info.mtime = len(data), int(mtime)
            tar.addfile(info, io.BytesIO(data))

def copy_if_changed(src: Path, dst: Path):
    "Copy `src` to `dst` atomically unless `dst` has its size and time already."
    stamp = lambda p: (p.stat().st_size, p.stat().st_mtime_ns)
    if not src.exists() or (dst.exists() and stamp(dst) == stamp(src)): return
    atomic_write(dst, lambda f: f.write(src.read_bytes()))
    os.utime(dst, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns))


# ---------------------------------------------------------------- stages 1-3: the machine, the data, the suite
def smi(*args: str) -> str:
    "nvidia-smi's output, or why there is none."
    try: r = subprocess.run(['nvidia-smi', *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e: return f"n/a ({type(e).__name__})"
    return r.stdout.strip() or f"n/a (nvidia-smi exit {r.returncode})"

def package_version(name: str) -> str | None:
    "The installed version of a package (None when it is not installed)."
    try: return version(name)
    except PackageNotFoundError: return None

def stage_record(s: Session) -> dict:
    "What the machine is: device, driver, nvidia-smi (in nvidia-smi.txt), versions, commit (also in session.json)."
    (s.out / 'nvidia-smi.txt').write_text(smi() + '\n')
    info = dict(device=device_name(torch.device(s.device)), driver=smi('--query-gpu=driver_version', '--format=csv,noheader'),
                torch=torch.__version__, cuda=torch.version.cuda, commit=git_commit(ROOT), python=platform.python_version(),
                packages={p: package_version(p) for p in ('timm', 'transformers', 'fastcore')}, host=platform.node(),
                cpus=os.cpu_count(), started=now(), minutes=s.args.minutes, rehearsal=s.rehearsal)
    write_json(info, s.out / 'session.json')
    return info

def stage_data(s: Session) -> dict:
    "Where CIFAR-10 is read from, which copy it is and its size; decoded once into the caches the later processes read."
    t0, b = time.time(), session_budget(s.rehearsal, False)
    root = data_root('cifar10', b, Path(s.args.data_root).resolve(), s.out / 'stand-ins')
    load_dataset('cifar10', root, size=32)                             # the cache of bench/pretrain_speed.py's --data 32=cifar10
    ds = load_training_data(PretrainConfig(dataset='cifar10', data_root=str(root), limit=b.limit))   # the jobs' cache
    return dict(root=str(root), n_train=len(ds.train), n_eval=len(ds.eval), copy=data_copy(ds, root), seconds=round(time.time() - t0, 1))

def run_suite(s: Session, name: str, keyword: str, limit: float) -> dict:
    "The tests of tests/test_gpu.py that `keyword` selects, for at most `limit` s: each one's outcome, also when cut short."
    log = s.out / f'{name}.log'
    code = s.call([sys.executable, '-m', 'pytest', 'tests/test_gpu.py', '-v', '-p', 'no:cacheprovider', '-k', keyword], log, limit)
    outcome = dict(re.findall(r'^tests/test_gpu\.py::(\S+) (PASSED|FAILED|ERROR|SKIPPED)', log.read_text(errors='replace'), re.M))
    n = Counter(outcome.values())
    return dict(returncode=code, cut_short=code is None, passed=n['PASSED'], skipped=n['SKIPPED'],
                failed=sorted(t for t, o in outcome.items() if o in ('FAILED', 'ERROR')))

def stage_suite(s: Session) -> dict:
    "The fast part of the GPU suite: every test but the slow ones."
    return run_suite(s, 'suite', f"not ({' or '.join(SLOW_TESTS)})", s.timing.suite)

def stage_suite_rest(s: Session) -> dict:
    "The slow tests of the GPU suite, in the time left before the end's margin (skipped when too little is left)."
    limit = s.left() - s.timing.margin
    if limit < s.timing.rest_min: raise Skipped(f"{max(limit, 0):.0f} s left; the rest of the suite needs {s.timing.rest_min:.0f}")
    return run_suite(s, 'suite_rest', ' or '.join(SLOW_TESTS), limit)


# ---------------------------------------------------------------- stages 4-6: how fast it trains, and the plan
def speed_cmd(s: Session, *methods: str) -> list:
    "bench/pretrain_speed.py at 32 px on the session's images for `methods`: ViT-T at batch 512; the micro model on a CPU."
    data = ['--data', '32=cifar10', '--data-root', s.info('data')['root']] if s.status('data') == 'done' else []
    if s.rehearsal: base = ['--device', 'cpu', '--model', 'micro', '--batch', '16', '--steps', '2', '--warmup', '1', '--no-compile', '--workers', '0']
    else: base = ['--device', 'cuda', '--batch', '512', '--steps', '10', '--warmup', '3', '--workers', '8']
    return [sys.executable, 'bench/pretrain_speed.py', *base, '--sizes', '32', '--methods', *methods, *data]

def read_json(path: Path) -> dict | None:
    "The JSON in `path`; None while it is missing or half written."
    try: return json.loads(path.read_text())
    except (OSError, ValueError): return None

def path_speeds(path: Path, which: str) -> dict:
    "Images/s of bench/pretrain_speed.py's path `which` by method, from its JSON (nothing for a missing file or failed row)."
    return {r['method']: r['images_per_s'] for r in (read_json(path) or {}).get('rows', []) if r['path'] == which and 'images_per_s' in r}

def stage_throughput(s: Session) -> dict:
    "The throughput table in two processes, so that one cut short loses only its own rows: the compiled paths, then the eager."
    for name, paths, limit in (('fast', ['fast'], s.timing.fast_paths), ('eager', ['loader', 'reference'], s.timing.eager_paths)):
        cmd = [*speed_cmd(s, *METHODS), '--paths', *paths, '--json', s.out / f'throughput_{name}.json']
        s.call(cmd, s.out / f'throughput_{name}.log', limit)
    fast, loader = path_speeds(s.out / 'throughput_fast.json', 'fast'), path_speeds(s.out / 'throughput_eager.json', 'loader')
    compiled = set(fast) == set(METHODS)
    speeds = fast if compiled else loader                       # no fast path for a method: plan on the eager DataLoader path
    if set(speeds) != set(METHODS): raise RuntimeError("no training speed measured for both methods: see throughput_*.log")
    return dict(images_per_s=speeds, fast=fast, loader=loader, compile=compiled and not s.rehearsal)

def stage_concurrency(s: Session) -> dict:
    "Both fast paths at once, in two processes: their images/s against one at a time, and the seconds to their first timed step."
    thr, barrier, t0 = s.need('throughput'), s.out / 'concurrency_barrier', time.time()
    shutil.rmtree(barrier, ignore_errors=True)                         # both processes time their steps at once (files in it)
    extra = ['--paths', 'fast', '--steps', '4' if s.rehearsal else '30', '--sync-dir', barrier] + ([] if thr['compile'] else ['--no-compile'])
    procs = {m: s.spawn([*speed_cmd(s, m), *extra, '--json', s.out / f'concurrent_{m}.json'], s.out / f'concurrent_{m}.log') for m in METHODS}
    s.wait(procs, s.timing.concurrency)
    startup = max((p.stat().st_mtime - t0 for p in barrier.glob('ready_*')), default=None)
    both, solo = {m: path_speeds(s.out / f'concurrent_{m}.json', 'fast').get(m) for m in METHODS}, thr['images_per_s']
    gain = None if None in both.values() else sum(both[m] / solo[m] for m in METHODS)   # > 1: more work per second side by side
    return dict(solo=solo, concurrent=both, total_gain=gain, concurrent_faster=bool(gain and gain > 1.05), startup_s=startup)

def epochs_that_fit(s: Session, plan: dict, jobs) -> int:
    "Epochs that fit in the time left after the jobs' start, their probes and the end's margin."
    probes = [plan['probe_s'][j.tag] for j in jobs]
    reserve = plan['startup_s'] + 1.25 * max(probes) if plan['concurrent'] else len(jobs) * plan['startup_s'] + sum(probes)
    reserve += sum(plan.get('readings_s', {}).get(j.tag, 0) for j in JOBS)      # the readings follow the jobs, one model at a time
    return math.floor((s.left() - reserve - s.timing.margin) / plan['wall_s_per_epoch'])

def stage_plan(s: Session) -> dict:
    "The epochs of the schedule both jobs run to, and the time their start and probes take, from the speeds measured."
    thr, conc, n = s.need('throughput'), s.info('concurrency'), s.need('data')['n_train']
    together = conc.get('concurrent_faster', False)
    epoch_s = [n / v for v in (conc['concurrent'] if together else thr['images_per_s']).values()]
    b = session_budget(s.rehearsal, thr['compile'])
    passes = sum(probe_passes(b, k) for k in b.probes)                # in training steps' worth of images
    plan = dict(n_train=n, schedule_epochs=b.epochs, concurrent=together, compile=b.compile, probes=list(b.probes),
                wall_s_per_epoch=max(epoch_s) if together else sum(epoch_s), startup_s=conc.get('startup_s') or s.timing.startup,
                probe_s={j.tag: EAGER * passes * n / thr['images_per_s'][j.method] + s.timing.probe_overhead for j in JOBS},
                readings_s={j.tag: EAGER * READING_PASSES * n / thr['images_per_s'][j.method] + s.timing.probe_overhead for j in JOBS})
    plan['epochs'] = min(b.epochs, epochs_that_fit(s, plan, JOBS))
    if plan['epochs'] < 1: raise RuntimeError(f"not one epoch fits in the {s.left():.0f} s left: {json.dumps(plan)}")
    return plan


# ---------------------------------------------------------------- stages 7-8: the paper's CIFAR-10 runs
def run_dir(s: Session, job: Job) -> Path:
    "A job's run folder (checkpoint, metrics, probes), as `pmae.reproduce` names it."
    return s.out / 'runs' / 'cifar10' / session_budget(s.rehearsal, False).name / job.tag

def result_file(s: Session, job: Job) -> Path:
    "A job's results JSON."
    return result_path(s.out / 'results', 'cifar10', session_budget(s.rehearsal, False).name, job)

def epochs_done(s: Session, job: Job) -> int:
    "Whole epochs a job's run has logged (0 before its first)."
    m = safe_metrics(run_dir(s, job))
    return m[-1]['epoch'] if m else 0

def launch_job(s: Session, job: Job, epochs: int, plan: dict) -> subprocess.Popen:
    "Start a job's process: pre-training to `epochs`, stopped by its guard in time for its probes, then the probes."
    guard = max(s.left() - plan['probe_s'][job.tag] - s.timing.margin, 1)
    return s.spawn([sys.executable, __file__, 'job', '--out', s.out, '--job', f"{job.method}:{job.ratio}", '--epochs', epochs,
                    '--time-limit', round(guard)], s.out / f'job_{job.tag}.log')

def stage_jobs(s: Session) -> dict:
    "Each job without results trained to the planned epoch (what fits of it in `finish`; never less than it has), then probed."
    plan = s.need('plan')
    todo = [j for j in JOBS if not result_file(s, j).exists()]
    fit = epochs_that_fit(s, plan, todo) if todo else 0
    epochs = {j.tag: min(plan['epochs'], max(epochs_done(s, j), fit)) for j in todo}
    for group in [todo] if plan['concurrent'] else [[j] for j in todo]:
        s.wait({j.tag: launch_job(s, j, epochs[j.tag], plan) for j in group if epochs[j.tag] >= 1}, s.left() - s.timing.margin)
    missing = [j.tag for j in JOBS if not result_file(s, j).exists()]
    if missing: raise RuntimeError(f"no results for {', '.join(missing)}: see job_*.log; `finish` probes what they trained")
    return {j.tag: json.loads(result_file(s, j).read_text())['epochs'] for j in JOBS}

def job_command(args) -> int:
    "`job`: one job's pre-training and probes, in a process of its own (two can run side by side)."
    s = Session(args)
    plan, root = s.need('plan'), s.need('data')['root']
    method, _, ratio = args.job.partition(':')
    job, b = Job(method, float(ratio or 0)), session_budget(s.rehearsal, plan['compile'])
    where = dict(root=root, runs=s.out / 'runs', results=s.out / 'results', device=s.device)
    try: run_job('cifar10', job, b, **where, time_limit=args.time_limit, stop_epoch=args.epochs)
    except RunStopped as e:
        done, status = epochs_done(s, job), json.loads((run_dir(s, job) / 'pretrain.json').read_text())['status']
        if status != 'stopped' or done < 1: print(f"{e}; `finish` goes on from its checkpoint", flush=True); return 3   # SIGTERM
        print(f"{e}\nits time guard stopped it: probing its {done} whole epochs (the weights hold some batches of the next)", flush=True)
        run_job('cifar10', job, b, **where, stop_epoch=done)
    return 0

def read_model(s: Session, job: Job, b, held) -> list[dict]:
    "Chapter 21's readings of one finished job: fast probe and kNN on each pooling, and its decoder's use of [CLS]; one row each."
    epoch = json.loads(result_file(s, job).read_text())['epochs']
    weights = snapshots(run_dir(s, job)).get(epoch, run_dir(s, job) / 'checkpoint.pt')
    rows = []
    for pool in POOLS:
        fast, knn = (snapshot_probe(weights, probe_config(b, kind, s.device, pool)) for kind in ('fast', 'knn'))
        rows.append(dict(job=job.tag, row=job.row('cifar10'), epoch=epoch, pool=pool, fast=fast['accuracy'], knn=knn['accuracy'], knn_k=knn['best_k']))
    use = cls_use(load_model(weights).to(s.device), held)
    return rows + [dict(job=job.tag, row=job.row('cifar10'), epoch=epoch, pool='cls_use', **use)]

def stage_readings(s: Session) -> dict:
    "Each finished job read both ways, and its decoder's use of [CLS]: OUT/results/cifar10/<budget>/readings.json."
    s.need('jobs')
    b = session_budget(s.rehearsal, s.need('plan')['compile'])
    cfg = PretrainConfig.from_dict(json.loads((run_dir(s, JOBS[0]) / 'config.json').read_text()))
    held = load_training_data(cfg).eval.images[:HELD_OUT]                         # (2048, 3, 32, 32) uint8
    rows = [row for j in JOBS for row in read_model(s, j, b, held)]
    write_json(dict(rows=rows, provenance=dict(commit=git_commit(), device=device_name(s.device), torch=torch.__version__,
                                               held_out=len(held), finished=now())),
               s.out / 'results' / 'cifar10' / b.name / 'readings.json')
    return {f"{r['job']} {r['pool']}": round(r.get('fast', r.get('ratio', 0)), 3) for r in rows}

def stage_encoders(s: Session) -> dict:
    "Each job's encoder in bf16, without decoder or optimiser: its MiB."
    s.need('jobs')
    saved = {j.tag: save_encoder(run_dir(s, j) / 'checkpoint.pt', s.out / 'encoders' / f"{j.tag}_encoder_bf16.pt") for j in JOBS}
    return {tag: round(path.stat().st_size / 2**20, 2) for tag, path in saved.items()}

STAGE_FUNCTIONS = dict(record=stage_record, data=stage_data, suite=stage_suite, throughput=stage_throughput, concurrency=stage_concurrency,
                       plan=stage_plan, jobs=stage_jobs, readings=stage_readings, encoders=stage_encoders, suite_rest=stage_suite_rest)


# ---------------------------------------------------------------- summary.md: one page of all so far
def safe_metrics(run: Path) -> list:
    "A run's per-epoch metrics; none while its file is being rewritten."
    try: return read_metrics(run)
    except (OSError, ValueError): return []

def steady_speed(metrics: list) -> float | None:
    "The median images/s of a run's epochs after its first (compilation), or of its first."
    speeds = sorted(m['images_per_s'] for m in metrics[1:] or metrics)
    return speeds[len(speeds) // 2] if speeds else None

def table_md(rows: list) -> list:
    "The throughput rows as Markdown lines."
    f = lambda v, spec: 'n/a' if v is None else format(v, spec)
    return ['| method | path | images/s | ms/step | TFLOP/s | % of bf16 peak | peak GiB |', '|---|---|---:|---:|---:|---:|---:|'] + \
           [f"| {r['method']} | {r['path']} | {f(r.get('images_per_s'), ',.0f')} | {f(r.get('ms_per_step'), '.1f')} | {f(r.get('tflops'), '.1f')} | "
            f"{f(r.get('peak_fraction'), '.1%')} | {f(r.get('peak_gpu_gib'), '.1f')} |" if 'error' not in r else
            f"| {r['method']} | {r['path']} | could not run: {r['error'][:120]} | | | | |" for r in rows]

def job_md(s: Session, job: Job) -> str:
    "A job's line: its probes beside the paper's (Table 1 at 800 epochs; the curve at our epoch if it has it), or its progress."
    m, r, curve = safe_metrics(run_dir(s, job)), read_json(result_file(s, job)), 'PMAE_ocl' if job.method == 'pmae' else 'MAE_ocl'
    speed = f"{steady_speed(m):,.0f} images/s" if m else 'not started'
    if r is None:
        return f"- **{job.row('cifar10')}**: epoch {epochs_done(s, job)} of {s.info('plan').get('epochs', '?')} planned, {speed}; no results yet"
    lin, knn, e = r['probes']['linear'], r['probes']['knn'], r['epochs']
    at = f"; the paper's {curve} learning curve at epoch {e}: {PAPER_CURVE[curve][e]}" if e in PAPER_CURVE[curve] else ''
    return (f"- **{r['row']}** ({r['hidden']}), {e} of {r['schedule_epochs']} epochs, {r['pretrain']['seconds'] / 60:.1f} min of pre-training "
            f"at {speed} (median epoch): linear {lin['best_acc']:.1f}% (best, epoch {lin['best_epoch']}) / {lin['final_acc']:.1f}% (final), "
            f"kNN {knn['accuracy']:.1f}% (k = {knn['best_k']}); the paper at 800 epochs: linear {paper_value('linear', r['row'], 'cifar10')}, "
            f"kNN {paper_value('knn', r['row'], 'cifar10')}{at}")

def stages_md(s: Session) -> str:
    "Each stage's status and seconds."
    took = lambda st: f" ({s.stages[st]['seconds']:.0f} s)" if 'seconds' in s.stages.get(st, {}) else ''
    return ', '.join(f"{st} {s.status(st)}{took(st)}" for st in STAGES)

def suite_md(s: Session, stage: str) -> str:
    "A suite stage's counts (and failures) in words, or its status."
    i = s.info(stage)
    if not i or 'passed' not in i: return f"{stage}: {s.status(stage)} {i.get('reason') or i.get('error') or ''}".rstrip()
    return (f"{stage}: {i['passed']} passed, {len(i['failed'])} failed, {i['skipped']} skipped" + (' (cut short)' if i['cut_short'] else '')
            + (f"; failed: {', '.join(i['failed'])}" if i['failed'] else ''))

def speedups_md(rows: list, projection: dict) -> list:
    "The fast and DataLoader paths' speed-ups over the reference, and 800 epochs of CIFAR-10 at the fast path's PMAE speed."
    v = {(r['method'], r['path']): r.get('images_per_s') for r in rows}
    ups = [f"{m} {p} {v[m, p] / v[m, 'reference']:.1f}x" for m in METHODS for p in ('fast', 'loader')
           if v.get((m, p)) and v.get((m, 'reference'))]
    return ([f"Over the reference: {', '.join(ups)}."] if ups else []) + \
           ([f"800 epochs of CIFAR-10 at the fast path's PMAE speed: {projection['minutes']:.1f} min."] if projection.get('minutes') else [])

def write_summary(s: Session):
    "OUT/summary.md: the machine, the stages, the suite, the throughput table, the plan and each job, as far as they got."
    rec, data, conc, plan = s.info('record'), s.info('data'), s.info('concurrency'), s.info('plan')
    fast, eager = (read_json(s.out / f'throughput_{n}.json') or {} for n in ('fast', 'eager'))
    rows = fast.get('rows', []) + eager.get('rows', [])
    lines = [f"# GPU session{' (CPU rehearsal)' if s.rehearsal else ''}: {rec.get('device', 'device not recorded yet')}", '',
             f"torch {rec.get('torch')} (CUDA {rec.get('cuda')}), driver {rec.get('driver')}, commit {rec.get('commit')}, "
             f"started {rec.get('started')}, {rec.get('minutes')} min; summary written {now()}.", '',
             f"**Stages:** {stages_md(s)}.", '',
             f"**Data:** {data.get('n_train', '?')} training images, {data.get('copy', 'not loaded yet')}.", '',
             f"**GPU suite:** {suite_md(s, 'suite')}; {suite_md(s, 'suite_rest')}.", '',
             '**Throughput** (bench/pretrain_speed.py, 32 px, one method at a time):', '', *table_md(rows), '',
             *speedups_md(rows, fast.get('cifar10_800_epochs', {})), '']
    if conc.get('total_gain'): lines += [f"Side by side the two fast paths did {conc['total_gain']:.2f}x the work of one at a time "
                                          f"({', '.join(f'{m} {v:,.0f}' for m, v in conc['concurrent'].items())} images/s).", '']
    if plan: lines += [f"**Plan:** the paper's recipe on its {plan['schedule_epochs']}-epoch schedule ended at epoch {plan['epochs']}, "
                       f"{'side by side' if plan['concurrent'] else 'one after the other'}, compiled: {plan['compile']}, "
                       f"probes {', '.join(plan['probes'])}.", '']
    lines += ['**Runs:**', *[job_md(s, j) for j in JOBS], '', *readings_md(s), '']
    (s.out / 'summary.md').write_text('\n'.join(lines))

def readings_md(s: Session) -> list:
    "The readings as Markdown lines: each model on [CLS] and on the patch tokens' mean, and what its decoder reads from [CLS]."
    plan = s.info('plan')
    found = read_json(s.out / 'results' / 'cifar10' / session_budget(s.rehearsal, plan.get('compile', False)).name / 'readings.json') if plan else None
    if not found: return ["**Readings** (chapter 21): not yet."]
    by = {(r['job'], r['pool']): r for r in found['rows']}
    lines = ['**Readings** (chapter 21; fast probe and kNN, %; loss over predicting nothing\'s, as trained and with [CLS] swapped):', '',
             '| run | epoch | fast [CLS] | fast mean | kNN [CLS] | kNN mean | loss / nothing | [CLS] swapped |', '|---|---:|---:|---:|---:|---:|---:|---:|']
    for j in JOBS:
        c, m, u = by.get((j.tag, 'cls')), by.get((j.tag, 'mean')), by.get((j.tag, 'cls_use'))
        if c and m and u: lines.append(f"| {c['row']} | {c['epoch']} | {c['fast']:.1f} | {m['fast']:.1f} | {c['knn']:.1f} | {m['knn']:.1f} | {u['ratio']:.3f} | {u['swapped']:.3f} |")
    return lines


# ---------------------------------------------------------------- the commands
def session_command(s: Session, stages) -> int:
    "Run `stages`, SIGTERM and SIGINT being a clean stop; pack at the end. 0: all done, 1: a stage failed, 3: stopped."
    for sig in (signal.SIGTERM, signal.SIGINT): signal.signal(sig, interrupt)
    try: code = 0 if all([s.run(st, STAGE_FUNCTIONS[st]) for st in stages]) else 1
    except Interrupted as e: s.say(f"stopped by {e}: run `finish` at once to go on"); code = 3
    for sig in (signal.SIGTERM, signal.SIGINT): signal.signal(sig, signal.SIG_IGN)
    s.pack()
    back = sorted(p.name for p in Path(s.args.to).glob('*'))
    s.say(f"{s.args.command} ended with code {code} after {time.time() - s.t0:.0f} s; in {s.args.to}: {', '.join(back)}")
    return code

def window(args) -> int:
    "Call 1: every stage within --minutes (those done already are skipped)."
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return session_command(Session(args), STAGES)

def finish(args) -> int:
    "Call 2: what is left after the plan of the session `window` left here; exit code 2 when there is none."
    s = Session(args)
    if s.status('plan') != 'done':
        print(f"nothing to finish: {s.out} holds no plan ({'the plan stage is ' + s.status('plan') if s.path.exists() else 'no session there'}; "
              "was the machine given back between the calls?). Run `window` again.", flush=True)
        if s.path.exists(): s.pack()
        return 2
    return session_command(s, FINISH)

def prepare(args) -> int:
    "Here, before a window: write PMAE_COMMIT, check the wheels and the data, and that what travels stays under 64 MiB."
    commit, data = write_commit_file(ROOT), ROOT / args.data_root
    print(f"{commit}: {commit.read_text().strip()}")
    carried, problems = [ROOT / '.whl', data, commit], []
    if not list((ROOT / '.whl').glob('fastcore-*.whl')): problems.append(f"no fastcore wheel in {ROOT / '.whl'} (see README.md)")
    problems += [f"no folder {data / 'cifar10' / split}" for split in ('train', 'test') if not (data / 'cifar10' / split).is_dir()]
    problems += [f"{p} is a decoded cache: delete it, it must not travel" for p in data.rglob('.pmae-cache')] if data.is_dir() else []
    problems += [f"{p.name} is not ignored by git" for p in carried if subprocess.run(['git', 'check-ignore', '-q', p], cwd=ROOT).returncode]
    size = sum(p.stat().st_size for p in travelling_files(carried))
    print(f"what travels: {size / 2**20:.1f} MiB of 64 (the tree and {', '.join(p.name for p in carried)})")
    if size > 64 * 2**20: problems.append(f"{size / 2**20:.1f} MiB travels, over the 64 MiB limit")
    for p in problems: print(f"problem: {p}")
    return 1 if problems else 0

def travelling_files(carried: list) -> list[Path]:
    "The files a `run` call copies: the tracked and untracked-not-ignored ones, and those under the carried paths."
    tree = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT, capture_output=True, text=True).stdout
    files = [ROOT / t for t in tree.split('\0') if t] + [f for c in carried for f in ([c] if c.is_file() else c.rglob('*'))]
    return [f for f in files if f.is_file()]

def parse_args(argv=None):
    "The command line: window, finish, job, prepare."
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    w = sub.add_parser('window', help='call 1: every stage within --minutes')
    f = sub.add_parser('finish', help="call 2: what is left after the plan, in a session `window` left on this machine")
    for c, minutes in ((w, 9.5), (f, 2)):
        c.add_argument('--out', required=True, help='the session folder (outside the checkout; `finish` needs it from `window`)')
        c.add_argument('--to', required=True, help='where the files to bring back go: $OUT on a lent machine')
        c.add_argument('--minutes', type=float, default=minutes, help='the time this command may spend, from its start')
    w.add_argument('--data-root', default='gpudata', help='where cifar10/ is (a rehearsal writes a stand-in when it is not)')
    w.add_argument('--rehearsal', action='store_true', help='the micro model, a stand-in data set, a few steps: for a CPU')
    j = sub.add_parser('job', help='(started by window and finish) one job in a process of its own')
    j.add_argument('--out', required=True); j.add_argument('--job', required=True, help='METHOD:RATIO')
    j.add_argument('--epochs', type=int, required=True); j.add_argument('--time-limit', type=float)
    pr = sub.add_parser('prepare', help='here, before a window: PMAE_COMMIT and checks of what travels')
    pr.add_argument('--data-root', default='gpudata', help='the folder carried with cifar10/ in it')
    return p.parse_args(argv)

def main(argv=None) -> int:
    "Run the command asked for; its exit code."
    args = parse_args(argv)
    return dict(window=window, finish=finish, job=job_command, prepare=prepare)[args.command](args)


if __name__ == '__main__':
    sys.exit(main())
