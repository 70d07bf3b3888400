"""What writing a checkpoint costs the training loop: in the foreground, and on the learner's background thread.

    python bench/checkpoint_cost.py                       # ViT-T PMAE with its AdamW state, on this machine
    python bench/checkpoint_cost.py --model micro --repeats 3

It builds the model of a paper run (ViT-T, 32x32, PMAE) with the optimiser state of one real step, then writes its
checkpoint the way `BackgroundCheckpointCB` does (chapter 11: the state copied to the CPU, then `atomic_save`) `--repeats`
times each way: in the foreground, where the loop waits for the whole write, and in the background, where it waits
only for the copy to the CPU (the write itself overlaps the next steps). Prints the file size and seconds. Asserts nothing.
"""
import argparse, statistics, tempfile, time
from pathlib import Path

import torch

from pmae.learner import Learner, learner_state
from pmae.scaling import BackgroundWriter, synchronize, to_cpu
from pmae.core import atomic_save
from pmae.reproduce import random_basis
from pmae.core import device_name
from pmae.train import PretrainConfig, build_model, make_optimizer, make_schedule, model_config, pretrain_loss
from pmae.core import pick_device


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='vit_tiny'); p.add_argument('--device', default='auto')
    p.add_argument('--repeats', type=int, default=5)
    a = p.parse_args()
    device = pick_device(a.device)
    cfg = PretrainConfig(model=a.model, method='pmae', batch_size=8, device=str(device))
    shape = (3, 32, 32)
    basis = random_basis(shape, 3072)
    model = build_model(cfg, model_config(cfg, shape), basis, (basis.mean, basis.std)).to(device)
    opt = make_optimizer(cfg, model, device)
    learn = Learner(model, None, pretrain_loss, opt, make_schedule(cfg, opt, 1))
    learn.one_step((torch.randint(0, 256, (8, *shape), dtype=torch.uint8, device=device), None))   # fills AdamW's state
    learn.loss_sum, learn.n_steps = torch.zeros((), device=device), 1
    path = Path(tempfile.mkdtemp()) / 'checkpoint.pt'
    blocked = {'foreground': [], 'background': []}
    for way in blocked:
        writer = BackgroundWriter(enabled=way == 'background')
        for _ in range(a.repeats):
            synchronize(device); t0 = time.perf_counter()
            state = to_cpu(learner_state(learn))                                  # what the loop always waits for
            writer.submit(lambda: atomic_save(state, path))
            blocked[way].append(time.perf_counter() - t0)
            time.sleep(0.2)                                                       # training would go on here
            writer.wait()
    t0 = time.perf_counter(); to_cpu(learner_state(learn)); copy = time.perf_counter() - t0
    print(f"{device_name(device)}; torch {torch.__version__}; {a.model} PMAE with AdamW state: checkpoint "
          f"{path.stat().st_size / 2**20:.0f} MiB; median of {a.repeats}:")
    for way, times in blocked.items():
        print(f"  {way:10}: the loop waits {statistics.median(times):.3f} s per checkpoint")
    print(f"  (of which the copy to the CPU: {copy:.3f} s; on a GPU it is a device-to-host copy)")
    f, b = (statistics.median(blocked[w]) for w in ('foreground', 'background'))
    print(f"background / foreground wait: {b / f:.2f}")


if __name__ == '__main__':
    main()
