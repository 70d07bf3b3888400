"""Training throughput of MAE and PMAE: forward+backward images per second.

    python bench/model_throughput.py                                  # vit_tiny, 32x32, batch 512, on this machine's CPU
    python bench/model_throughput.py --device cuda --bf16 --compile   # on a GPU, bf16 autocast, torch.compile

Measures MAE (75% of patches hidden) and PMAE (20% of the variance hidden, one mask per batch,
every patch encoded) on the same model configuration. Timing is steady state: `--warmup` steps
first (compilation included), then `--steps` timed steps, synchronised on CUDA. The PCA basis is a
random orthonormal one with a decaying spectrum: the cost of PMAE's projections depends on the
basis's size (K x D), not on its values, so no data set is needed. Prints a table; asserts nothing.
"""
import argparse, platform, time

import torch

from pmae.mae import MAE, vit_config
from pmae.masking import get_masking
from pmae.pca import PCABasis
from pmae.pmae import PMAE


def random_basis(shape, device, seed=0) -> PCABasis:
    "A complete random orthonormal basis (D x D) for images of `shape`, with eigenvalues decaying like 1/k."
    d = shape[0] * shape[1] * shape[2]
    g = torch.Generator(device).manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, device=device))
    values = 1 / torch.arange(1, d + 1, dtype=torch.float64, device=device)
    return PCABasis(mean=torch.full(shape, 0.5, device=device), std=torch.full(shape, 0.25, device=device),
                    components=q.T.contiguous(), eigenvalues=values, total_variance=float(values.sum()),
                    n_samples=d, source='random')


def time_model(model, batch, steps, warmup, bf16, device):
    "Mean seconds per forward+backward step over `steps` steps, after `warmup` untimed ones."
    images = torch.randint(0, 256, (batch, *model.config.image_shape), dtype=torch.uint8, device=device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    for i in range(warmup + steps):
        if i == warmup: sync(); t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(images).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--config', default='vit_tiny'); ap.add_argument('--img-size', type=int, default=32)
    ap.add_argument('--batch', type=int, default=512); ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--warmup', type=int, default=1); ap.add_argument('--device', default='cpu')
    ap.add_argument('--bf16', action='store_true', help='bf16 autocast')
    ap.add_argument('--compile', action='store_true', help='torch.compile the models')
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = vit_config(args.config, img_size=args.img_size)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"{args.config} at {args.img_size}x{args.img_size}, batch {args.batch}, {'bf16 autocast' if args.bf16 else 'fp32'}"
          f"{', compiled' if args.compile else ''}, on {name}; torch {torch.__version__}")
    basis = random_basis(cfg.image_shape, device)
    models = {'MAE (75% patches)': MAE(cfg, get_masking('mae_std')),
              'PMAE (20% variance)': PMAE(cfg, basis, get_masking('pmae'))}
    print(f"{'model':22s} {'images/s':>10s} {'ms/step':>10s}" + (f" {'peak GiB':>9s}" if device.type == 'cuda' else ''))
    for label, model in models.items():
        model = model.to(device).train()
        if args.compile: model = torch.compile(model)
        if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
        seconds = time_model(model, args.batch, args.steps, args.warmup, args.bf16, device)
        peak = f" {torch.cuda.max_memory_allocated(device) / 2**30:9.2f}" if device.type == 'cuda' else ''
        print(f"{label:22s} {args.batch / seconds:10.1f} {1000 * seconds:10.1f}{peak}", flush=True)


if __name__ == '__main__': main()
