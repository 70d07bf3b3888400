"""torch.compile on this machine: graph breaks, compiled graphs and the compiled-vs-eager step time of every method.

    python bench/compile_check.py                                   # the micro ViT on this CPU
    python bench/compile_check.py --model vit_tiny --device cuda --batch 512 --mode reduce-overhead

For each method it times the real training step (chapter 14's `step_seconds`: `pretrain`'s own learner, pipeline and
precision, on random images and a random basis of the right size) twice in the same process: eager, then compiled by
inductor (`--mode`), the first `--warmup` steps untimed (compilation happens there). It counts dynamo's compiled graphs
and graph breaks over the compiled steps, and prints ms/step of both and their ratio. Asserts nothing.
"""
import argparse, platform
from dataclasses import replace

import torch
from torch._dynamo.utils import counters

from pmae.scaling import COMPILE_MODES
from pmae.reproduce import step_seconds
from pmae.core import device_name
from pmae.train import PretrainConfig
from pmae.core import pick_device

CASES = {'mae_std': {}, 'mae_rd': {}, 'pmae': {}, 'pmae_rd': {}, 'pmae per-sample': dict(per_sample=True)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='micro'); p.add_argument('--device', default='auto')
    p.add_argument('--batch', type=int, default=64); p.add_argument('--size', type=int, default=32)
    p.add_argument('--steps', type=int, default=20); p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--mode', default='default', choices=COMPILE_MODES)
    a = p.parse_args()
    device = pick_device(a.device)
    shape, n_components = (3, a.size, a.size), 3 * a.size * a.size
    print(f"{device_name(device)}; torch {torch.__version__}; model {a.model}, batch {a.batch}, {a.size}x{a.size}; "
          f"{a.warmup} untimed + {a.steps} timed steps; compiled with inductor, mode {a.mode}\n")
    print('| method | graph breaks | compiled graphs | eager ms/step | compiled ms/step | eager / compiled |\n|---|---:|---:|---:|---:|---:|')
    for name, options in CASES.items():
        cfg = PretrainConfig(dataset='photos', model=a.model, method=name.split()[0], batch_size=a.batch, device=str(device), **options)
        eager = step_seconds(cfg, shape, n_components, device, a.steps, a.warmup) * a.batch
        torch._dynamo.reset(); counters.clear()
        compiled = step_seconds(replace(cfg, compile=True, compile_mode=a.mode), shape, n_components, device, a.steps, a.warmup) * a.batch
        print(f"| {name} | {sum(counters['graph_break'].values())} | {counters['stats']['unique_graphs']} | {1e3 * eager:.1f} | "
              f"{1e3 * compiled:.1f} | {eager / compiled:.2f}x |", flush=True)


if __name__ == '__main__':
    main()
