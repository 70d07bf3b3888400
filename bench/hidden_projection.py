"""PMAE's hidden-only projection (chapter 06) against the full one, and MAE beside them, on the laptop budget's setting.

    python bench/hidden_projection.py --data-root data      # CIFAR-10 at 16x16 when it is there, else the photos at 16x16

The `mini` ViT with 4x4 patches on 16x16 images, batch 256, AdamW, on this CPU: full optimiser steps (forward, backward,
update, the mask drawn per step) of PMAE at r = 0.1 with the full projection and with the hidden-only one, of PMAE with one
mask per image (`per_sample`, which has no hidden-only path: each image hides its own components), and of MAE_std, timed in
rounds that alternate the four so that a load from elsewhere falls on all of them alike. First it checks that the
two PMAE paths give the same loss and gradients. Prints medians and the speed-ups as ratios; asserts nothing about time.
"""
import argparse, copy, dataclasses, statistics, time

import torch

from pmae.data import DataNotFoundError
from pmae.mae import MAE, vit_config
from pmae.masking import ComponentMasking, PatchMasking
from pmae.pca import fit_pca
from pmae.pmae import PMAE
from pmae.train import PretrainConfig, load_training_data
from pmae.core import device_name, loaded_commit, write_json


def images_16(root: str):
    "CIFAR-10's training images at 16x16 when `root` holds them, else the embedded photos (name, (N, 3, 16, 16) uint8), resized as pre-training does."
    try: ds = load_training_data(PretrainConfig(dataset='cifar10', data_root=root, image_size=16))
    except DataNotFoundError: ds = load_training_data(PretrainConfig(dataset='photos', image_size=16))
    return ds.name, ds.train.images


def step_timer(model, images, batch: int):
    "A function that runs one optimiser step on a random batch with a fresh mask and returns its seconds."
    opt, g = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3), torch.Generator().manual_seed(0)
    def step() -> float:
        x = images[torch.randint(0, len(images), (batch,), generator=g)]
        t0 = time.perf_counter()
        loss = model(x, model.draw_masks(batch, g)).loss
        opt.zero_grad(); loss.backward(); opt.step()
        return time.perf_counter() - t0
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data-root', default='data'); ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--rounds', type=int, default=30); ap.add_argument('--pca-images', type=int, default=10_000)
    ap.add_argument('--out', default='', help="also write the figures to this JSON file")
    a = ap.parse_args()
    name, images = images_16(a.data_root)
    basis = fit_pca(images[:a.pca_images], source=f'{name} 16x16')
    cfg = vit_config('mini', img_size=16, patch_size=4)
    torch.manual_seed(0); full = PMAE(cfg, basis, ComponentMasking(0.1))
    quick = copy.deepcopy(full); quick.hidden_only = True
    per_image = copy.deepcopy(quick); per_image.masking = dataclasses.replace(full.masking, per_sample=True)
    x, m = images[:a.batch], full.draw_masks(a.batch, torch.Generator().manual_seed(1))
    losses = []
    for model in (full, quick):
        model.zero_grad(); loss = model(x, m).loss; loss.backward(); losses.append(loss.item())
    worst = max(float((p.grad - q.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12))
                for p, q in zip(full.parameters(), quick.parameters()) if p.grad is not None)
    print(f"{name} at 16x16, K = {len(basis.ratios)}: same loss {losses[0]:.6f} / {losses[1]:.6f}, "
          f"largest relative gradient difference {worst:.1e}")
    torch.manual_seed(0); mae = MAE(cfg, PatchMasking(0.75), mean=basis.mean, std=basis.std)
    timers = {'PMAE, full projection': step_timer(full, images, a.batch), 'PMAE, hidden-only': step_timer(quick, images, a.batch),
              'PMAE, one mask per image': step_timer(per_image, images, a.batch), 'MAE_std': step_timer(mae, images, a.batch)}
    for t in timers.values(): t(); t()                                             # warm-up
    times = {k: [] for k in timers}
    for _ in range(a.rounds):
        for k, t in timers.items(): times[k].append(t())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nbatch {a.batch}, {torch.get_num_threads()} torch threads, median of {a.rounds} alternating rounds\n")
    print('| step | ms | images/s |\n|---|---:|---:|')
    for k, v in med.items(): print(f"| {k} | {1000 * v:.1f} | {a.batch / v:,.0f} |")
    speedup, cost = med['PMAE, full projection'] / med['PMAE, hidden-only'], med['PMAE, hidden-only'] / med['MAE_std']
    per_image_cost = med['PMAE, one mask per image'] / med['PMAE, hidden-only']
    print(f"\nhidden-only / full: {speedup:.2f}x faster; PMAE (hidden-only) costs {cost:.2f}x an MAE_std step; "
          f"one mask per image costs {per_image_cost:.2f}x one per batch (hidden-only)")
    if a.out: write_json(dict(data=f'{name} at 16x16', batch=a.batch, threads=torch.get_num_threads(), rounds=a.rounds,
                              ms={k: round(1000 * v, 1) for k, v in med.items()}, hidden_only_speedup=round(speedup, 3),
                              pmae_over_mae=round(cost, 3), per_image_over_per_batch=round(per_image_cost, 3), max_relative_grad_diff=worst, commit=loaded_commit(),
                              device=device_name(torch.device('cpu')),
                              provenance=dict(commit=loaded_commit(), dataset=name, data_copy=f'{name} resized to 16x16', budget='laptop',
                                              epochs=0, device=device_name(torch.device('cpu')), wall_s=None,
                                              command='python bench/hidden_projection.py', threads=torch.get_num_threads())), a.out)


if __name__ == '__main__': main()
