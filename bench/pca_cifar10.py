"""Benchmark: full PCA of CIFAR-10's training set (50,000 x 3,072), `pmae.pca.fit_pca` vs scikit-learn.

Prints measured figures only; nothing is asserted. The data must already be on disk in a layout
`pmae.data.load_dataset('cifar10', root)` reads (torchvision pickles or an image folder `root/cifar10`).

    python bench/pca_cifar10.py --root data            # ours, sklearn covariance_eigh, sklearn full
    python bench/pca_cifar10.py --root data --skip-full
"""
import argparse, os, platform, time

import numpy as np
import torch
from sklearn.decomposition import PCA

from pmae.data import load_dataset
from pmae.pca import fit_pca, pixel_stats


def timed(f, repeats=1):
    "Best wall time of `repeats` calls of `f`, and its last result."
    best, out = float('inf'), None
    for _ in range(repeats):
        t0 = time.perf_counter(); out = f(); best = min(best, time.perf_counter() - t0)
    return best, out


def max_rel_error(a, b, top=None):
    "Largest relative difference between two eigenvalue arrays (over the `top` largest if given)."
    a, b = np.asarray(a)[:top], np.asarray(b)[:top]
    return float(np.max(np.abs(a - b) / np.abs(b)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default=os.environ.get('PMAE_DATA', 'data'), help='data directory holding CIFAR-10')
    p.add_argument('--repeats', type=int, default=2, help='timed runs of fit_pca (best is reported)')
    p.add_argument('--skip-full', action='store_true', help="skip sklearn's slow svd_solver='full'")
    args = p.parse_args()

    ds = load_dataset('cifar10', args.root)
    images = ds.train.images                                             # (50000, 3, 32, 32) uint8, in memory
    print(f"data: {ds} from {ds.source}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")

    t_ours, basis = timed(lambda: fit_pca(images, source='cifar10'), args.repeats)
    # sklearn gets the same per-pixel standardised float64 matrix, built outside the timing
    mean, std = pixel_stats(images)                                      # float64, (3, 32, 32) each; std already floored (safe_std)
    z = ((images.double() / 255 - mean) / std).flatten(1).numpy()        # (50000, 3072)
    rows = [('pmae fit_pca (uint8 in, exact sums)', t_ours, basis.eigenvalues.numpy())]
    t_cov, cov = timed(lambda: PCA(svd_solver='covariance_eigh').fit(z))
    rows.append(("sklearn PCA covariance_eigh (float64)", t_cov, cov.explained_variance_))
    if not args.skip_full:
        t_full, full = timed(lambda: PCA(svd_solver='full').fit(z))
        rows.append(("sklearn PCA full (float64)", t_full, full.explained_variance_))

    ref = rows[-1][2]
    K = basis.n_components
    print(f"\ncomponents: {K} of {basis.dim}; eigenvalues compared with {rows[-1][0]}")
    print(f"{'method':40s} {'seconds':>8s} {'ours is x faster':>17s} {'max rel err top-1000':>21s} {'all':>9s}")
    for name, t, ev in rows:
        print(f"{name:40s} {t:8.2f} {t / t_ours:17.2f} {max_rel_error(ev[:K], ref[:K], 1000):21.1e} {max_rel_error(ev[:K], ref[:K]):9.1e}")


if __name__ == '__main__':
    main()
