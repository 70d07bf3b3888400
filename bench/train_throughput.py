"""Pre-training throughput of the two input pipelines: device-resident data + batched augmentation vs a DataLoader.

    python bench/train_throughput.py                                      # micro and vit_tiny, embedded photos, this CPU
    python bench/train_throughput.py --dataset cifar10 --data-root data --device cuda --model vit_tiny --batch 512
    python bench/train_throughput.py --dataset cifar10 --data-root data --device cuda --epoch   # + one timed epoch per method

For each model and method (MAE_std, PMAE at r = 0.2) it times, in steady state (after `--warmup`
steps, synchronised on CUDA), full optimiser steps of `pmae.train` fed by
(a) `memory`: uint8 images on the device, crops and flips for the whole batch in one call, and
(b) `loader`: a torchvision DataLoader with per-image transforms in `--workers` processes,
each through the `Learner` that `pmae pretrain` builds (chapter 08's `pretrain_learner`),
and, for scale, the pipelines alone (augmentation, no model). With `--epoch` it also runs one full
epoch of `pmae.train.pretrain` per method and reports its wall time. Prints a table; asserts nothing.
"""
import argparse, platform, tempfile, time
from dataclasses import replace
from itertools import count

import torch

from pmae.learner import read_metrics
from pmae.scaling import Processes
from pmae.train import PretrainConfig, build_model, load_training_data, model_config, prepare_basis, pretrain, pretrain_batches, pretrain_learner
from pmae.core import pick_device


def timed(batches, n, warmup, sync, step=None):
    "Images per second over `n` (images, masks) batches after `warmup` untimed ones; `step(batch)` runs on each when given."
    it = iter(batches)
    for i in range(warmup + n):
        if i == warmup: sync(); t0 = time.perf_counter()
        batch = next(it)
        if step: step(batch)
    sync()
    speed = n * len(batch[0]) / (time.perf_counter() - t0)
    batches.close()             # stops DataLoader workers before the next measurement
    return speed


def training_learner(cfg: PretrainConfig, images, device):
    "The `Learner` `pmae pretrain` builds for `cfg` on `images`, ready to step (compiled if asked)."
    basis, _, stats = prepare_basis(cfg, images, cfg.run_dir, device)
    model = build_model(cfg, model_config(cfg, images.shape[1:]), basis, stats).to(device)
    n = len(images) // cfg.batch_size
    learn = pretrain_learner(cfg, model, pretrain_batches(cfg, model, images, n, device, Processes()), n, device)
    learn.epochs = 1; learn.callback('before_fit')
    return learn


def endless(learn):
    "The learner's batches, epoch after epoch."
    for epoch in count(): yield from learn.batches(epoch, 0)


def one_step(learn):
    "A function taking one batch through the learner's step (with its per-step callbacks)."
    def step(batch): learn.callback('before_batch'); return learn.one_step(batch)
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', default='photos'); p.add_argument('--data-root', default='data')
    p.add_argument('--model', nargs='+', default=['micro', 'vit_tiny']); p.add_argument('--batch', type=int, default=256)
    p.add_argument('--steps', type=int, default=5); p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--workers', type=int, default=2); p.add_argument('--device', default='auto')
    p.add_argument('--precision', default='auto'); p.add_argument('--compile', action='store_true')
    p.add_argument('--epoch', action='store_true', help='also time one full pre-training epoch per method')
    a = p.parse_args()
    device = pick_device(a.device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    base = PretrainConfig(dataset=a.dataset, data_root=a.data_root, batch_size=a.batch, precision=a.precision, compile=a.compile,
                          device=a.device, workers=a.workers)
    ds = load_training_data(base)
    images, B = ds.train.images, a.batch
    print(f"{ds}\ndevice: {name}; batch {B}; {a.warmup} warm-up + {a.steps} timed steps; DataLoader workers {a.workers}; "
          f"precision {a.precision}; compile {a.compile}")
    tmp = tempfile.mkdtemp()
    alone = lambda pl: training_learner(replace(base, model='micro', method='mae_std', pipeline=pl, out=f"{tmp}/alone_{pl}"), images, device)
    rows = [('(pipeline alone)', '-', pl, timed(endless(alone(pl)), a.steps, a.warmup, sync)) for pl in ('memory', 'loader')]
    for model_name in a.model:
        for method in ('mae_std', 'pmae'):
            for pl in ('memory', 'loader'):
                learn = training_learner(replace(base, model=model_name, method=method, pipeline=pl, out=f"{tmp}/{model_name}_{method}"), images, device)
                rows.append((model_name, method, pl, timed(endless(learn), a.steps, a.warmup, sync, one_step(learn))))
                print(f"  {rows[-1][0]:>16} {rows[-1][1]:>8} {rows[-1][2]:>7}: {rows[-1][3]:10,.0f} images/s", flush=True)
    print(f"\n| model | method | pipeline | images/s | ms/step |\n|---|---|---|---:|---:|")
    for m, meth, pl, v in rows: print(f"| {m} | {meth} | {pl} | {v:,.0f} | {1000 * B / v:,.1f} |")
    for m in a.model:
        for meth in ('mae_std', 'pmae'):
            mem, ldr = (v for mm, me, pl, v in rows if mm == m and me == meth)
            print(f"{m} {meth}: memory / loader = {mem / ldr:.2f}x")
    if a.epoch:
        for m in a.model:
            for meth in ('mae_std', 'pmae'):
                cfg = replace(base, model=m, method=meth, epochs=1, warmup_epochs=0, out=f"{tmp}/epoch_{m}_{meth}")
                s = pretrain(cfg, verbose=False)
                print(f"one epoch of {ds.name} ({len(images)} images), {m} {meth}: {read_metrics(cfg.run_dir)[-1]['epoch_s']:.1f} s "
                      f"({s['wall_s']:.1f} s with data loading and PCA)")


if __name__ == '__main__':
    main()
