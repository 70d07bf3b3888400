"""Pre-training speed of MAE_std and PMAE on one device: our fast path, our DataLoader path, and a reference stack.

    # CPU quick check (tiny model, a few steps, no compilation):
    python bench/pretrain_speed.py --device cpu --model micro --sizes 32 64 --batch 16 --steps 2 --warmup 1 --no-compile --limit 1024
    # H100, the full run (ViT-T/8, 32x32 and 64x64, batch 512, embedded photos):
    python bench/pretrain_speed.py --device cuda --json results/bench/h100.json
    # the same on the paper's data: CIFAR-10 at 32 px, TinyImageNet at 64 px (PCA fit on 50,000 / 100,000 images)
    python bench/pretrain_speed.py --device cuda --data 32=cifar10 64=tinyimagenet --data-root data --json results/bench/h100_data.json
    # profile the fast path: a Chrome trace per size and method, the top-15 ops, host syncs per step
    python bench/pretrain_speed.py --device cuda --paths fast --steps 10 --profile results/bench/profile

For each image size (`--sizes`, default 32 and 64) and method (MAE_std: 75% of the patches hidden;
PMAE: 20% of the variance hidden) it times, in steady state (`--warmup` untimed steps, compilation
included, then `--steps` timed ones, synchronised on CUDA), full optimiser steps of three paths:

- `fast`: pmae's own training step (chapter 08's `pretrain_learner`: the step `pmae pretrain` runs),
  uint8 images resident on the device with batched on-device crops and flips, bf16 autocast on
  CUDA (fp32 on CPU), `torch.compile` (unless `--no-compile`; `--compile-mode reduce-overhead` for
  CUDA graphs), fused AdamW on CUDA, optionally TF32 (`--tf32`) and the crops and masks of several
  steps drawn at once (`--draw-steps`); no host sync in the loop.
- `loader`: the same model, step and precision fed by a torchvision DataLoader with per-image
  transforms, not compiled: `pmae pretrain --pipeline loader` with its defaults.
- `reference`: the method on a reference stack: Hugging Face `transformers` ViTMAEForPreTraining in
  fp32 (the method's ViT-T/8: 192 wide, 12 layers, 12 heads; decoder 512 wide, 8 layers, 16 heads),
  a DataLoader with per-image RandomResizedCrop(0.2-1, bicubic) + flip + ToTensor + per-pixel
  normalisation, plain AdamW, no autocast, no compilation. MAE_std uses the model's own loss
  (mask ratio 0.75, norm_pix_loss=False as the PMAE reference ran it); PMAE feeds every patch (mask ratio 0) the projected image
  x·V_visᵀ·V_vis and takes the MSE between the hidden-component coefficients of the unpatchified
  prediction and of x. `transformers` is imported by this path only; a path that cannot run gets
  a row saying why.

Data: `--data SIZE=NAME ...` picks the data set per size (default: the embedded photos, offline, cut
at SIZE px); any other pmae data set is read from `--data-root` and resized to SIZE. Throughput does
not depend on the pixels, only on the shapes, but the PCA fit's cost depends on N. The PMAE basis is
fit with `pmae.pca.fit_pca` on the training images on the benchmark's device and timed (N < D takes
its N×N Gram route, otherwise the D×D covariance is eigendecomposed).

The table gives, per (size, method, path), images/s, ms/step, peak GPU memory (reset per row),
GFLOP per step (forward + backward of one step counted by torch's FlopCounterMode), the achieved
TFLOP/s and its fraction of the GPU's dense bf16 peak (the same denominator for the fp32 reference),
then the ratios fast / reference and loader / reference, and the projected wall time of 800 epochs
of CIFAR-10 for fast-path PMAE at 32x32. `--json OUT` also writes it all with provenance.
"""
import argparse, datetime, gc, json, os, platform, re, shlex, sys, time, warnings
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pmae.data import load_photos_data
from pmae.mae import CONFIGS, ViTConfig
from pmae.masking import MASKINGS
from pmae.pca import PCABasis, fit_pca, pixel_stats
from pmae.core import device_name, git_commit
from pmae.scaling import COMPILE_MODES, Processes, synchronize
from pmae.train import PretrainConfig, build_model, float32_matmul, load_training_data, model_config, pretrain_batches, pretrain_learner, pretrain_loss
from pmae.augment import AugmentedImages
from pmae.core import pick_device

METHODS, PATHS = ('mae_std', 'pmae'), ('fast', 'loader', 'reference')
GPU_PEAKS = ((r'H100 PCIe', 756), (r'H100.*(SXM|HBM3)', 989), (r'H200(?! NVL)', 989), (r'A100', 312), (r'\bL4\b', 121),
             (r'Quadro RTX 6000', 32.6))   # dense bf16 TFLOP/s (fp16 for the Turing Quadro), by device-name pattern
CIFAR10_IMAGES, EPOCHS, TARGET_MIN = 50_000, 800, 20


# ---------------------------------------------------------------- device and provenance
def bf16_peak(name: str) -> float | None:
    "Dense bf16 peak TFLOP/s of a GPU called `name`, None when unknown (or a CPU)."
    return next((peak for pattern, peak in GPU_PEAKS if re.search(pattern, name)), None)

def bench_device(name: str) -> torch.device:
    "The device to measure on; a GPU becomes the current one."
    device = pick_device(name)
    if device.type == 'cuda': torch.cuda.set_device(device)
    return device

def package_version(name: str) -> str | None:
    "The installed version of a package, without importing it."
    from importlib.metadata import PackageNotFoundError, version
    try: return version(name)
    except PackageNotFoundError: return None


# ---------------------------------------------------------------- data and PCA
class SizeData(NamedTuple):
    "What every row at one image size shares."
    name: str        # data set
    images: Tensor   # (N, C, S, S) uint8 on the CPU: the training images
    pool: Tensor     # (M, C, S, S) uint8 on the CPU: `images` repeated to cover every batch a row draws
    basis: PCABasis  # fit on `images`, on the benchmark's device
    vit: ViTConfig   # the model's shapes at this size

def load_images(name: str, size: int, root: str, limit: int) -> Tensor:
    "Training images (N, C, size, size) uint8 of data set `name`; photos are cut at `size` px, others resized; `limit` keeps a fixed subset."
    if name == 'photos': images = load_photos_data(size=size, stride=size // 4, scale=0.5 if size <= 32 else 1.0).train.images
    else: images = load_training_data(PretrainConfig(dataset=name, data_root=root, image_size=size)).train.images
    if limit and limit < len(images): images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:limit]]
    return images

def timed_pca(images: Tensor, device: torch.device) -> tuple[PCABasis, dict]:
    "The PCA basis of `images` fit on `device`, and what the fit cost."
    n, d = len(images), images[0].numel()
    synchronize(device); t0 = time.perf_counter()
    basis = fit_pca(images, device=device)
    synchronize(device)
    route = 'N×N Gram route (N < D)' if n < d else 'D×D covariance eigendecomposition'   # fit_pca's own choice
    return basis, dict(seconds=time.perf_counter() - t0, n=n, d=d, components=basis.n_components, route=route)

def prepare_size(size: int, name: str, args, device: torch.device) -> tuple[SizeData, dict]:
    "Images, repeated pool, timed PCA basis and ViT shapes for one image size."
    images = load_images(name, size, args.data_root, args.limit)
    batches = 1 + args.warmup + args.steps + (args.profile_steps + 1 if args.profile else 0)   # + the FLOP-count batch
    pool = images if len(images) >= batches * args.batch else images[torch.arange(batches * args.batch) % len(images)]
    basis, pca = timed_pca(images, device)
    print(f"PCA fit, {size}x{size} (D = {pca['d']}): {pca['seconds']:.2f} s on {device_name(device)} "
          f"(N = {pca['n']} {name} images, {pca['route']}, {pca['components']} components)", flush=True)
    return SizeData(name, images, pool, basis, model_config(PretrainConfig(model=args.model), images.shape[1:])), dict(size=size, dataset=name, **pca)


# ---------------------------------------------------------------- the three paths
class Runner(NamedTuple):
    "One path, ready: its batches, one optimiser step, the loss alone (to count FLOPs) and the trained module."
    batches: Iterator                # batches on the device: (images, masks) for pmae, normalised images for the reference
    step: Callable[[Tensor], object]
    loss: Callable[[Tensor], Tensor]
    module: nn.Module
    setup: str

def pmae_runner(path: str, method: str, data: SizeData, args, device: torch.device) -> Runner:
    "pmae's own training step (chapter 08's `pretrain_learner`), fed by device-resident batches (`fast`) or a DataLoader (`loader`)."
    fast = path == 'fast'
    cfg = PretrainConfig(dataset=data.name, model=args.model, method=method, batch_size=args.batch, device=str(device),
                         pipeline='memory' if fast else 'loader', workers=args.workers, compile=fast and args.compile,
                         compile_mode=args.compile_mode, tf32=fast and args.tf32, draw_steps=args.draw_steps if fast else 1)
    stats = (data.basis.mean, data.basis.std) if cfg.is_pmae else pixel_stats(data.images, device=device)
    model = build_model(cfg, data.vit, data.basis, tuple(t.float().cpu() for t in stats)).to(device)
    if cfg.compile: torch._dynamo.reset()                          # a fresh cache for each model: no recompile limit reached
    n_batches = len(data.pool) // args.batch
    learn = pretrain_learner(cfg, model, pretrain_batches(cfg, model, data.pool, n_batches, device, Processes()), n_batches, device)
    learn.epochs = 1; learn.callback('before_fit')                 # what `fit` does first: DDP (none here) and compilation
    def step(batch): learn.callback('before_batch'); return learn.one_step(batch)
    def loss(batch) -> Tensor:
        with torch.autocast(device.type, dtype=learn.dtype or torch.float32, enabled=learn.dtype is not None):
            return pretrain_loss(model, batch)
    feed = 'device-resident uint8 + batched augmentation' if fast else f'DataLoader ({args.workers} workers)'
    precision = {None: 'fp32', torch.bfloat16: 'bf16 autocast', torch.float16: 'fp16 autocast'}[learn.dtype]
    compiled = f"compiled ({cfg.compile_mode})" if cfg.compile else 'eager'
    return Runner(learn.batches(0, 0), step, loss, model, f"pmae Learner, {feed}, {precision}, {compiled}"
                  f"{', TF32' if cfg.tf32 else ''}, {'fused ' if device.type == 'cuda' else ''}AdamW")

class ReferenceImages(AugmentedImages):
    "The reference pipeline's per-image transforms: RandomResizedCrop(0.2-1, bicubic) + flip + ToTensor, then per-pixel normalisation."
    def __init__(self, images: Tensor, mean: Tensor, std: Tensor):
        super().__init__(images)
        self.mean, self.std = mean, std                          # (C, H, W) each
    def __getitem__(self, i): return (super().__getitem__(i) - self.mean) / self.std

def reference_batches(images: Tensor, mean: Tensor, std: Tensor, batch: int, workers: int, device: torch.device) -> Iterator[Tensor]:
    "Normalised (B, C, H, W) batches on `device` from a shuffling DataLoader with per-image transforms."
    dl = torch.utils.data.DataLoader(ReferenceImages(images, mean, std), batch_size=batch, shuffle=True, drop_last=True,
                                     num_workers=workers, pin_memory=device.type == 'cuda', generator=torch.Generator().manual_seed(0))
    for x in dl: yield x.to(device, non_blocking=True)

def reference_model(vit: ViTConfig, mask_ratio: float) -> nn.Module:
    "Hugging Face ViTMAEForPreTraining with the shapes of `vit` (vit_tiny: the method's ViT-T/8), no norm_pix_loss (as run), fp32."
    try: from transformers import ViTMAEConfig, ViTMAEForPreTraining
    except ImportError as e: raise ImportError(f"the reference path needs transformers ({e}): pip install 'transformers>=4.40'") from None
    config = ViTMAEConfig(hidden_size=vit.width, num_hidden_layers=vit.depth, num_attention_heads=vit.heads, intermediate_size=vit.mlp,
                          decoder_hidden_size=vit.dec_width, decoder_num_hidden_layers=vit.dec_depth,
                          decoder_num_attention_heads=vit.dec_heads, decoder_intermediate_size=vit.dec_mlp, patch_size=vit.patch_size,
                          image_size=vit.img_size, num_channels=vit.in_chans, norm_pix_loss=False, mask_ratio=mask_ratio)
    torch.manual_seed(0)
    return set_mae_positions(ViTMAEForPreTraining(config))

def mae_sincos(grid: int, dim: int) -> Tensor:
    "MAE's fixed 2-D sin-cos positions (1 + grid², dim): [CLS] row zero, then [sin w | cos w | sin h | cos h] per patch (row-major)."
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))            # (dim/4,)
    h, w = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing='ij')
    def half(pos): out = pos.flatten()[:, None] * omega; return torch.cat([out.sin(), out.cos()], 1)   # (grid², dim/2)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.cat([half(w), half(h)], 1)]).float()

def set_mae_positions(hf: nn.Module) -> nn.Module:
    "Write MAE's fixed positions into the encoder and decoder of `hf` (transformers 5 leaves them at zero for a model built from a config)."
    grid = hf.config.image_size // hf.config.patch_size
    with torch.no_grad():
        hf.vit.embeddings.position_embeddings.copy_(mae_sincos(grid, hf.config.hidden_size)[None])
        hf.decoder.decoder_pos_embed.copy_(mae_sincos(grid, hf.config.decoder_hidden_size)[None])
    return hf

def reference_component_mask(ratios: Tensor, ratio: float, generator=None) -> tuple[Tensor, Tensor]:
    "Hidden and visible component indices: the prefix of a random permutation of the K components whose variance is closest to `ratio`."
    perm = torch.randperm(len(ratios), generator=generator)                 # (K,)
    m = int((ratios[perm].cumsum(0)[:-1] - ratio).abs().argmin()) + 1        # prefix length in 1..K-1
    return perm[:m], perm[m:]

def reference_pmae_views(x: Tensor, components: Tensor, hidden: Tensor, visible: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    "For normalised images `x` (N, C, H, W): the encoder input x·V_visᵀ·V_vis (N, C, H, W), V_hid (k, D) and the target x·V_hidᵀ (N, k)."
    z = x.flatten(1)                                                         # (N, D)
    v_vis, v_hid = components[visible], components[hidden]                   # (K - k, D), (k, D)
    return ((z @ v_vis.T) @ v_vis).view_as(x), v_hid, z @ v_hid.T

def reference_pmae_loss(pred: Tensor, v_hid: Tensor, target: Tensor) -> Tensor:
    "Paper Eq. 3.1: MSE between the hidden-component coefficients of the predicted images `pred` (N, C, H, W) and `target` (N, k)."
    return F.mse_loss(pred.flatten(1) @ v_hid.T, target)

def reference_runner(method: str, data: SizeData, args, device: torch.device) -> Runner:
    "The reference stack: Hugging Face ViTMAE in fp32, a per-image DataLoader, plain AdamW; no autocast, no compilation."
    pmae = method == 'pmae'
    hf = reference_model(data.vit, 0.0 if pmae else MASKINGS[method].ratio).to(device)
    opt = torch.optim.AdamW(hf.parameters(), lr=1.5e-4 * args.batch / 256, betas=(0.9, 0.95), weight_decay=0.05)
    mean, std = data.basis.mean.float().cpu(), data.basis.std.float().cpu()
    components, ratios = data.basis.components.to(device, torch.float32), data.basis.ratios.cpu()   # (K, D), (K,)
    gen = torch.Generator().manual_seed(0)
    def loss(x: Tensor) -> Tensor:
        if not pmae: return hf(pixel_values=x).loss
        hidden, visible = (i.to(device) for i in reference_component_mask(ratios, MASKINGS[method].ratio, gen))
        x_vis, v_hid, target = reference_pmae_views(x, components, hidden, visible)
        out = hf.vit(pixel_values=x_vis)                                     # every patch: mask ratio 0
        logits = hf.decoder(out.last_hidden_state, out.ids_restore).logits   # (N, L, p*p*C)
        return reference_pmae_loss(hf.unpatchify(logits), v_hid, target)
    def step(x: Tensor):
        l = loss(x)
        opt.zero_grad(set_to_none=True); l.backward(); opt.step()
    batches = reference_batches(data.pool, mean, std, args.batch, args.workers, device)
    return Runner(batches, step, loss, hf, f"HF ViTMAEForPreTraining ({hf.config._attn_implementation} attention), "
                                           f"DataLoader ({args.workers} workers), fp32, eager, AdamW")


# ---------------------------------------------------------------- measuring
def count_flops(loss: Callable[[Tensor], Tensor], x: Tensor, module: nn.Module) -> float:
    "FLOPs of one forward + backward of `loss(x)`, counted by FlopCounterMode; gradients are dropped afterwards."
    with FlopCounterMode(display=False) as counter: loss(x).backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()

def count_syncs(step: Callable, x: Tensor) -> int:
    "Host-device synchronisations during one CUDA `step(x)`, as reported by torch's sync debug mode."
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            step(x)
    finally: torch.cuda.set_sync_debug_mode('default')
    return sum('synchroniz' in str(w.message) for w in caught)

def profile_steps(runner: Runner, batches: Iterator[Tensor], n: int, out: Path, label: str, device: torch.device) -> dict:
    "Profile `n` steps: write a Chrome trace under `out`, print the top-15 ops by self device (CUDA) or CPU time."
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])) as prof:
        for _ in range(n): runner.step(next(batches))
        synchronize(device)
    out.mkdir(parents=True, exist_ok=True)
    trace = out / f"fast_{label}.json"
    prof.export_chrome_trace(str(trace))
    syncs = count_syncs(runner.step, next(batches)) if device.type == 'cuda' else None
    sort = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    print(f"\nprofile of the fast path, {label}, {n} steps: Chrome trace {trace}"
          + (f"; host syncs in one step: {syncs}" if syncs is not None else '')
          + f"\n{prof.key_averages().table(sort_by=sort, row_limit=15)}", flush=True)
    return dict(trace=str(trace), host_syncs_per_step=syncs)

def wait_for_peers(folder: Path, count: int, timeout: float = 900):
    "A barrier between processes through files: announce this one is ready, then wait until `count` are."
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready_{os.getpid()}").touch()
    deadline = time.time() + timeout
    while len(list(folder.glob('ready_*'))) < count:
        if time.time() > deadline: raise TimeoutError(f"only {len(list(folder.glob('ready_*')))} of {count} processes reached {folder}")
        time.sleep(0.05)

def measure(runner: Runner, args, device: torch.device, profile_as: str | None = None) -> dict:
    "Count one step's FLOPs, run the warm-up, time the steady-state steps, then profile some more under the name `profile_as`."
    batches = runner.batches
    flops = count_flops(runner.loss, next(batches), runner.module)
    for _ in range(args.warmup): runner.step(next(batches))
    synchronize(device)
    if args.sync_dir: wait_for_peers(Path(args.sync_dir), args.sync_count)    # time the steps together with the other processes
    t0 = time.perf_counter()
    for _ in range(args.steps): runner.step(next(batches))            # no host sync in here: the device runs ahead
    synchronize(device)
    seconds = (time.perf_counter() - t0) / args.steps
    profiled = profile_steps(runner, batches, args.profile_steps, Path(args.profile), profile_as, device) if profile_as else {}
    batches.close()                                                      # stops DataLoader workers before the next row
    return dict(seconds=seconds, flops=flops, **profiled)

def run_row(size: int, method: str, path: str, data: SizeData, args, device: torch.device, peak: float | None) -> dict:
    "One table row: the path's speed, memory and FLOP rate, or why it could not run."
    row = dict(size=size, method=method, path=path, dataset=data.name)
    gc.collect()
    if device.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)
    try:
        runner = reference_runner(method, data, args, device) if path == 'reference' else pmae_runner(path, method, data, args, device)
        with float32_matmul(args.tf32 and path == 'fast'):
            m = measure(runner, args, device, f"{size}_{method}" if args.profile and path == 'fast' else None)
    except Exception as e:                                               # e.g. transformers missing, out of memory
        print(f"  {size}x{size} {method} {path}: could not run: {type(e).__name__}: {e}", flush=True)
        return dict(row, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    tflops = m['flops'] / m['seconds'] / 1e12
    row.update(setup=runner.setup, images_per_s=args.batch / m['seconds'], ms_per_step=1000 * m['seconds'],
               peak_gpu_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None,
               gflop_per_step=m['flops'] / 1e9, tflops=tflops, peak_fraction=tflops / peak if peak else None,
               **{k: v for k, v in m.items() if k not in ('seconds', 'flops')})
    print(f"  {size}x{size} {method:>7} {path:>9}: {row['images_per_s']:12,.1f} images/s  ({runner.setup})", flush=True)
    return row


# ---------------------------------------------------------------- reporting
def fmt(v, spec: str) -> str:
    "`v` formatted by `spec`, or 'n/a' when missing."
    return 'n/a' if v is None else format(v, spec)

def print_table(rows: list[dict]):
    "The Markdown table: one row per (size, method, path)."
    print("\n| size | method | path | images/s | ms/step | peak GPU GiB | GFLOP/step | TFLOP/s | % of bf16 peak | setup |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['size']}x{r['size']} | {r['method']} | {r['path']} | {fmt(r.get('images_per_s'), ',.1f')} | "
              f"{fmt(r.get('ms_per_step'), '.2f')} | {fmt(r.get('peak_gpu_gib'), '.2f')} | {fmt(r.get('gflop_per_step'), '.4g')} | "
              f"{fmt(r.get('tflops'), '.3g')} | {fmt(r.get('peak_fraction'), '.1%')} | {r.get('setup') or 'not run: ' + r['error']} |")

def speed_ratios(rows: list[dict], sizes, methods) -> list[dict]:
    "fast / reference and loader / reference images/s for each size and method (None where a row is missing)."
    speed = {(r['size'], r['method'], r['path']): r.get('images_per_s') for r in rows}
    ratio = lambda a, b: a / b if a and b else None
    return [dict(size=s, method=m, **{f"{p}_over_reference": ratio(speed.get((s, m, p)), speed.get((s, m, 'reference')))
                                      for p in ('fast', 'loader')}) for s in sizes for m in methods]

def cifar10_projection(rows: list[dict]) -> dict:
    "Projected wall time of 800 epochs of CIFAR-10 (50,000 images) at the fast-path PMAE speed at 32x32."
    speed = next((r.get('images_per_s') for r in rows if (r['size'], r['method'], r['path']) == (32, 'pmae', 'fast')), None)
    images = EPOCHS * CIFAR10_IMAGES
    return dict(images=images, images_per_s=speed, minutes=images / speed / 60 if speed else None,
                target_minutes=TARGET_MIN, images_per_s_needed=images / (TARGET_MIN * 60))

def report(rows: list[dict], ratios: list[dict], projection: dict):
    "Print the table, the speed ratios and the CIFAR-10 projection."
    print_table(rows)
    print("\nSpeed-ups over the reference stack (images/s ratios):")
    for r in ratios:
        times = lambda v: fmt(v, '.2f') + ('x' if v else '')
        print(f"  {r['size']}x{r['size']} {r['method']}: fast / reference = {times(r['fast_over_reference'])}, "
              f"loader / reference = {times(r['loader_over_reference'])}")
    p = projection
    print(f"\n800 epochs of CIFAR-10 ({CIFAR10_IMAGES:,} images) with fast-path PMAE at 32x32: "
          + (f"{p['images']:,} images / {p['images_per_s']:,.0f} images/s = {p['minutes']:.1f} min" if p['minutes'] else "n/a (no such row)")
          + f" (target: under {TARGET_MIN} min on one H100, i.e. at least {p['images_per_s_needed']:,.0f} images/s)")


# ---------------------------------------------------------------- main
def parse_args():
    "The command line."
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', type=int, nargs='+', default=[32, 64], help='image sizes in pixels')
    p.add_argument('--batch', type=int, default=512)
    p.add_argument('--steps', type=int, default=20, help='timed steps per row')
    p.add_argument('--warmup', type=int, default=5, help='untimed steps first (compilation happens here)')
    p.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument('--model', default='vit_tiny', choices=list(CONFIGS))
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    p.add_argument('--paths', nargs='+', default=list(PATHS), choices=PATHS)
    p.add_argument('--no-compile', dest='compile', action='store_false', help='do not torch.compile the fast path')
    p.add_argument('--compile-mode', default='default', choices=COMPILE_MODES, help="the fast path's torch.compile mode")
    p.add_argument('--tf32', action='store_true', help="let the fast path's float32 products (PMAE's projections) use TF32")
    p.add_argument('--draw-steps', type=int, default=1, help="the fast path draws the crops and masks of N steps at once")
    p.add_argument('--data', nargs='+', default=[], metavar='SIZE=NAME', help='data set per image size (default: photos)')
    p.add_argument('--data-root', default='data')
    p.add_argument('--limit', type=int, default=0, help='keep a fixed random subset of N training images (0: all)')
    p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1), help='DataLoader worker processes')
    p.add_argument('--profile', metavar='DIR', help='also profile the fast path: Chrome traces in DIR, top-15 ops printed')
    p.add_argument('--profile-steps', type=int, default=5)
    p.add_argument('--json', metavar='OUT', help='write the results and their provenance to this JSON file')
    p.add_argument('--sync-dir', metavar='DIR', help='start the timed steps only when --sync-count processes are ready (files in DIR)')
    p.add_argument('--sync-count', type=int, default=2, help='how many processes --sync-dir waits for')
    args = p.parse_args()
    args.data = {int(k): v for k, v in (item.split('=', 1) for item in args.data)}
    return args

def main():
    args = parse_args()
    device = bench_device(args.device)
    name = device_name(device)
    peak = bf16_peak(name) if device.type == 'cuda' else None
    provenance = dict(git_commit=git_commit(), device=name, torch=torch.__version__, transformers=package_version('transformers'),
                      python=platform.python_version(), date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                      command=shlex.join(['python', *sys.argv]))
    print(f"device: {name} (dense bf16 peak: {fmt(peak, 'g')} TFLOP/s); torch {torch.__version__}; "
          f"transformers {provenance['transformers'] or 'not installed'}\n"
          f"model {args.model}; batch {args.batch}; {args.warmup} warm-up + {args.steps} timed steps; "
          f"compile {args.compile}; DataLoader workers {args.workers}", flush=True)
    rows, pca = [], []
    for size in args.sizes:
        data, fit = prepare_size(size, args.data.get(size, 'photos'), args, device)
        pca.append(fit)
        rows += [run_row(size, m, p, data, args, device, peak) for m in args.methods for p in args.paths]
        del data
    ratios, projection = speed_ratios(rows, args.sizes, args.methods), cifar10_projection(rows)
    report(rows, ratios, projection)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k != 'json'}
        out.write_text(json.dumps(dict(provenance=provenance, settings=settings, bf16_peak_tflops=peak, pca=pca, rows=rows,
                                       ratios=ratios, cifar10_800_epochs=projection), indent=1))
        print(f"\nwrote {out}")


if __name__ == '__main__':
    main()
