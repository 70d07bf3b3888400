"""Pilot for the laptop budget: which learning rate, judged on held-out training images (never the test split).

MAE_std and PMAE 10% (both with the reference code's semantics) on CIFAR-10 at 16x16, the `mini` ViT with 4x4 patches,
batch 256, for a short schedule at each learning rate; each encoder is judged by the fast linear probe and kNN trained on
45,000 training images and evaluated on the other 5,000. Resumable (run folders under runs/pilot/); prints a Markdown table
and writes it with the raw numbers to results/cifar10/laptop/extra/lr_pilot.json.

    python bench/laptop_pilot.py --data-root data [--epochs 6] [--lrs 5e-4 1e-3 2e-3]
"""
import argparse, json, time
from dataclasses import asdict
from pathlib import Path

import torch
from pmae.train import PretrainConfig, pretrain
from pmae.probe import ProbeConfig, run_probe
from pmae.reproduce import data_copy, get_budget
from pmae.core import device_name, loaded_commit, write_json

def pilot_config(method: str, lr: float, epochs: int, root: str, runs: Path) -> PretrainConfig:
    "One pilot run: the laptop budget's model, data and recipe on a shorter schedule, 5,000 training images held out."
    b = get_budget('laptop')
    return PretrainConfig(dataset='cifar10', data_root=root, image_size=b.image_size, holdout=5000, method=method,
                          ratio=0.1 if method == 'pmae' else 0.0, model=b.model, patch_size=b.patch_size(b.image_size),
                          epochs=epochs, batch_size=b.batch_size, base_lr=lr, warmup_epochs=1, warmup=b.warmup,
                          hidden_projection=True, save_every=1, out=str(runs / f"{method}_lr{lr:g}"), device='cpu')

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data-root', default='data'); ap.add_argument('--epochs', type=int, default=6)
    ap.add_argument('--lrs', type=float, nargs='+', default=[5e-4, 1e-3, 2e-3]); ap.add_argument('--runs', default='runs/pilot')
    ap.add_argument('--out', default='results/cifar10/laptop/extra/lr_pilot.json')
    args = ap.parse_args()
    rows = []
    for lr in args.lrs:
        for method in ('mae_std', 'pmae'):
            cfg = pilot_config(method, lr, args.epochs, args.data_root, Path(args.runs))
            t0 = time.time(); s = pretrain(cfg, verbose=False)
            ckpt = s['checkpoint']
            fast = run_probe(ckpt, ProbeConfig('fast', device='cpu'), verbose=False)
            knn = run_probe(ckpt, ProbeConfig('knn', device='cpu'), verbose=False)
            rows.append(dict(method=method, lr=lr, epochs=s['epochs_done'], final_loss=s['final_epoch_loss'], fast=fast['accuracy'],
                             knn=knn['accuracy'], eval_split=fast['eval_split'], wall_s=round(time.time() - t0, 1)))
            print(f"{method:8} lr {lr:g}: fast {fast['accuracy']:.2f}%, kNN {knn['accuracy']:.2f}% ({fast['eval_split']})", flush=True)
    table = ['| method | lr | epochs | fast probe | kNN |', '|---|---:|---:|---:|---:|'] + \
            [f"| {r['method']} | {r['lr']:g} | {r['epochs']} | {r['fast']:.2f} | {r['knn']:.2f} |" for r in rows]
    print('\n'.join(table))
    write_json(dict(rows=rows, table='\n'.join(table), config=asdict(pilot_config('pmae', args.lrs[0], args.epochs, args.data_root, Path(args.runs))),
                    commit=loaded_commit(), device=device_name(torch.device('cpu')), threads=torch.get_num_threads(),
                    data_copy='CIFAR-10 JPEG q75 image-folder copy, resized to 16x16',
                    provenance=dict(commit=loaded_commit(), dataset='cifar10', data_copy='CIFAR-10 JPEG q75 image-folder copy, resized to 16x16; '
                                    '5,000 training images held out', budget='laptop', epochs=args.epochs, device=device_name(torch.device('cpu')),
                                    wall_s=None, command='python bench/laptop_pilot.py', threads=torch.get_num_threads())), args.out)

if __name__ == '__main__': main()
