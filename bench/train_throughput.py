"""Pre-training throughput of the two input pipelines: device-resident data + batched augmentation vs a DataLoader.

    python bench/train_throughput.py                                      # micro and vit_tiny, embedded photos, this CPU
    python bench/train_throughput.py --dataset cifar10 --data-root data --device cuda --model vit_tiny --batch 512
    python bench/train_throughput.py --dataset cifar10 --data-root data --device cuda --epoch   # + one timed epoch per method

For each model and method (MAE_std, PMAE at r = 0.2) it times, in steady state (after `--warmup`
steps, synchronised on CUDA), full optimiser steps of `pmae.train` fed by
(a) `memory`: uint8 images on the device, crops and flips for the whole batch in one call, and
(b) `loader`: a torchvision DataLoader with per-image transforms in `--workers` processes,
and, for scale, the pipelines alone (augmentation, no model). With `--epoch` it also runs one full
epoch of `pmae.train.pretrain` per method and reports its wall time. Prints a table; asserts nothing.
"""
import argparse, platform, tempfile, time
from dataclasses import replace

import torch

from pmae.train import (PretrainConfig, Processes, autocast_dtype, build_model, draw_masks, epoch_order, load_training_data,
                        loader_batches, memory_batches, model_config, pick_device, prepare_basis, pretrain, read_metrics, train_step)


def timed(batches, n, warmup, sync, step=None):
    "Images per second over `n` batches after `warmup` untimed ones; `step(x)` runs on each batch when given."
    it = iter(batches)
    for i in range(warmup + n):
        if i == warmup: sync(); t0 = time.perf_counter()
        x = next(it)
        if step: step(x)
    sync()
    speed = n * len(x) / (time.perf_counter() - t0)
    batches.close()             # stops DataLoader workers before the next measurement
    return speed


def batch_source(pipeline, images_dev, images, B, workers, device):
    "An endless stream of augmented batches from `pipeline`."
    epoch = 0
    while True:
        order = epoch_order(len(images), 0, epoch)
        if pipeline == 'memory': yield from memory_batches(images_dev, order, B, 0, torch.Generator(device).manual_seed(epoch), Processes())
        else: yield from loader_batches(images, order, B, 0, epoch, workers, Processes(), device)
        epoch += 1


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
    base = PretrainConfig(dataset=a.dataset, data_root=a.data_root, batch_size=a.batch, precision=a.precision, compile=a.compile, device=a.device)
    ds = load_training_data(base)
    images, B = ds.train.images, a.batch
    images_dev = images.to(device)
    print(f"{ds}\ndevice: {name}; batch {B}; {a.warmup} warm-up + {a.steps} timed steps; DataLoader workers {a.workers}; "
          f"precision {a.precision}; compile {a.compile}")
    rows = [('(pipeline alone)', '-', pl, timed(batch_source(pl, images_dev, images, B, a.workers, device), a.steps, a.warmup, sync))
            for pl in ('memory', 'loader')]
    tmp = tempfile.mkdtemp()
    for model_name in a.model:
        for method in ('mae_std', 'pmae'):
            cfg = replace(base, model=model_name, method=method, out=f"{tmp}/{model_name}_{method}")
            basis, _, stats = prepare_basis(cfg, images, cfg.run_dir, device)
            model = build_model(cfg, model_config(cfg, ds.shape), basis, stats).to(device)
            net = torch.compile(model) if a.compile else model
            params = [q for q in model.parameters() if q.requires_grad]
            opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.05, **({'fused': True} if device.type == 'cuda' else {}))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            scaler, dtype, gen = torch.amp.GradScaler(device.type, enabled=False), autocast_dtype(a.precision, device), torch.Generator(device).manual_seed(0)
            step = lambda x: train_step(net, x, draw_masks(model, len(x), gen, device), opt, sched, scaler, dtype, 0.0, params)
            for pl in ('memory', 'loader'):
                rows.append((model_name, method, pl, timed(batch_source(pl, images_dev, images, B, a.workers, device), a.steps, a.warmup, sync, step)))
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
