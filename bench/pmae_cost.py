"""PMAE's cost against MAE's, measured and as the FLOPs predict, at the geometries the budgets use.

    python bench/pmae_cost.py --data-root data [--rounds 10] [--out results/bench/pmae_cost.json]

For each row (by default the `mini` ViT at 16x16 with 4-pixel patches and at 32x32 with 8-pixel ones, `micro` at 32x32
with 4-pixel patches, ViT-T at 32x32 with 8-pixel patches): full optimiser steps (the mask drawn, forward, backward,
AdamW) of MAE_std and of PMAE at r = 0.1 with the reference code's semantics on each of its two paths (the full
projection and the hidden-only one, chapter 06), timed in rounds that alternate the three in one process, so that a load
from elsewhere falls on all alike. It prints images/s, the measured cost of a PMAE step over an MAE step, and the ratio of
their FLOPs (chapter 11's `step_flops`, for the components the timed masks hid), and the one over the other: the target is
a measured cost within 1.1x of the FLOP ratio. The basis is fit on CIFAR-10 at that size when `--data-root` holds it, else
on the embedded photos (complete either way). Asserts nothing about time.
"""
import argparse, os, statistics, time

import torch

from pmae.data import DataNotFoundError
from pmae.mae import MAE, vit_config
from pmae.masking import ComponentMasking
from pmae.pca import fit_pca
from pmae.pmae import PMAE
from pmae.scaling import step_flops
from pmae.train import PretrainConfig, load_training_data
from pmae.core import device_name, loaded_commit, write_json

ROWS = ('mini:16:4', 'mini:32:8', 'micro:32:4', 'vit_tiny:32:8')   # model:image side:patch side


def training_images(root: str, size: int):
    "CIFAR-10's training images at `size` when `root` holds them, else the embedded photos (name, (N, 3, size, size) uint8)."
    try: ds = load_training_data(PretrainConfig(dataset='cifar10', data_root=root, image_size=size))
    except DataNotFoundError: ds = load_training_data(PretrainConfig(dataset='photos', image_size=size))
    return ds.name, ds.train.images


def stepper(model, images, batch: int, hidden: list):
    "A function that runs one optimiser step on a random batch with a fresh mask and returns its seconds (PMAE: the count it hid into `hidden`)."
    opt, g = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3), torch.Generator().manual_seed(0)
    def step() -> float:
        x = images[torch.randint(0, len(images), (batch,), generator=g)]
        t0 = time.perf_counter()
        mask = model.draw_masks(batch, g)                                     # part of the step: a run draws one per step
        loss = model(x, mask).loss
        opt.zero_grad(); loss.backward(); opt.step()
        seconds = time.perf_counter() - t0
        if isinstance(model, PMAE): hidden.append(int(mask.hidden[0].sum()))
        return seconds
    return step


def measure(row: str, root: str, batch: int, rounds: int) -> dict:
    "One row: images/s of MAE_std and of PMAE's two paths, timed in alternating rounds, and the FLOP ratio of the masks drawn."
    model, side, patch = row.split(':'); side, patch = int(side), int(patch)
    name, images = training_images(root, side)
    vit = vit_config(model, img_size=side, patch_size=patch)
    basis = fit_pca(images[:max(2 * vit.in_chans * side * side, 5000)], source=f'{name} {side}x{side}')
    torch.manual_seed(0); mae = MAE(vit)
    pmaes = {hidden_only: PMAE(vit, basis, ComponentMasking(0.1), hidden_only=hidden_only) for hidden_only in (False, True)}
    hidden = []
    steps = {'MAE_std': stepper(mae, images, batch, []), 'PMAE, full projection': stepper(pmaes[False], images, batch, hidden),
             'PMAE, hidden-only': stepper(pmaes[True], images, batch, hidden)}
    for step in steps.values(): step()                                           # a first, untimed step each
    hidden.clear()
    seconds = {k: [] for k in steps}
    for _ in range(rounds):
        for k, step in steps.items(): seconds[k].append(step())
    med = {k: statistics.median(v) for k, v in seconds.items()}
    m = round(statistics.mean(hidden))
    flop_ratio = step_flops(vit, 'pmae', hidden=m)['total'] / step_flops(vit, 'mae')['total']
    return dict(row=row, model=model, image_side=side, patch=patch, data=name, batch=batch, rounds=rounds, mean_hidden=m,
                components=len(basis.ratios), images_per_s={k: batch / v for k, v in med.items()},
                measured_ratio={k: med[k] / med['MAE_std'] for k in med if k != 'MAE_std'}, flop_ratio=flop_ratio)


def table(rows: list[dict]) -> str:
    "The rows as Markdown."
    lines = ['| model, image, patch | MAE_std img/s | PMAE full img/s | PMAE hidden-only img/s | measured cost, hidden-only | FLOP ratio | measured / FLOP |',
             '|---|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        ips, ratio = r['images_per_s'], r['measured_ratio']['PMAE, hidden-only']
        lines.append(f"| {r['model']}, {r['image_side']}x{r['image_side']}, {r['patch']} | {ips['MAE_std']:,.0f} | {ips['PMAE, full projection']:,.0f} | "
                     f"{ips['PMAE, hidden-only']:,.0f} | {ratio:.2f} | {r['flop_ratio']:.2f} | {ratio / r['flop_ratio']:.2f} |")
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--data-root', default='data'); ap.add_argument('--rows', nargs='+', default=list(ROWS))
    ap.add_argument('--batch', type=int, default=256); ap.add_argument('--rounds', type=int, default=10)
    ap.add_argument('--out', default='', help='also write the rows to this JSON file, with provenance')
    a = ap.parse_args()
    rows = [measure(row, a.data_root, a.batch if not row.startswith('vit_tiny') else min(a.batch, 64), a.rounds) for row in a.rows]
    print(table(rows))
    load = os.getloadavg()[0]
    print(f"\n{device_name(torch.device('cpu'))}, load average {load:.1f} while measuring")
    if a.out: write_json(dict(rows=rows, provenance=dict(commit=loaded_commit(), device=device_name(torch.device('cpu')), threads=torch.get_num_threads(),
                                                       load_average=load, command='python bench/pmae_cost.py --rows ' + ' '.join(a.rows))), a.out)


if __name__ == '__main__': main()
