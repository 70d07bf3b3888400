"""Masking (chapter 03): every strategy's edge cases, coverage, determinism and the exact error for each bad input."""
import math

import pytest
import torch

from pmae.masking import (ComponentMasking, PatchMasking, check_ratio, component_mask, get_masking, hidden_variance,
                          patch_mask_pixels, patchify, random_patch_mask, unpatchify, visible_count)


def spectrum(k=64, seed=0):
    "A skewed explained-variance spectrum (k,) summing to 1, sorted by decreasing variance like a PCA basis."
    s = torch.rand(k, generator=torch.Generator().manual_seed(seed)).double() ** 6
    return (s / s.sum()).sort(descending=True).values


def crossing_component(ratios, order, r):
    "Variance of the component at which the running sum along `order` reaches r."
    position = int((ratios[order].cumsum(0) < r).sum())
    return float(ratios[order[min(position, len(order) - 1)]])


@pytest.mark.parametrize('order', ['random', 'tvb', 'bvt'])
@pytest.mark.parametrize('r', [1e-4, 0.05, 0.2, 0.5, 0.95, 1 - 1e-4])
@pytest.mark.parametrize('per_sample', [False, True])
@pytest.mark.parametrize('cut', ['as_run', 'closest'])
def test_component_mask_never_full_and_close_to_r_and_never_empty_when_closest(order, r, per_sample, cut):
    ratios = spectrum()
    mask = ComponentMasking(r, order=order, per_sample=per_sample, cut=cut)(ratios, n=16, generator=torch.Generator().manual_seed(1))
    hidden = mask.hidden
    assert hidden.shape == ((16 if per_sample else 1), 64) and hidden.dtype == torch.bool and mask.longest.shape == ()
    assert not hidden.all(1).any() and int(mask.longest) >= int(hidden.sum(1).max())
    if cut == 'closest': assert hidden.any(1).all()
    achieved = hidden_variance(hidden, ratios)
    # the masked set is a prefix of some order of the components: within the crossing component of r (as run: of the
    # prefix that stops before the closest crossing, so within two components)
    biggest, slack = float(ratios.max()), 1 if cut == 'closest' else 2
    assert ((achieved - r).abs() <= slack * biggest + 1e-12).all()
    if order != 'random':   # deterministic orders: the exact bound with the crossing component
        perm = torch.arange(64) if order == 'bvt' else torch.arange(63, -1, -1)
        assert abs(float(achieved[0]) - r) <= slack * crossing_component(ratios, perm, r) + 1e-12


def test_component_mask_is_the_closest_prefix_of_its_permutation():
    "Brute force in plain Python: the permutation is the argsort of the generator's uniform draws."
    ratios = spectrum(30, seed=3)
    for r in (0.1, 0.2, 0.6):
        hidden = component_mask(ratios, r, n=20, generator=torch.Generator().manual_seed(5), cut='closest')   # (20, 30)
        perm = torch.rand(20, 30, generator=torch.Generator().manual_seed(5)).argsort(1)
        for row, order in zip(hidden, perm):
            sums = [float(ratios[order[:m]].sum()) for m in range(1, 30)]
            m = min(range(1, 30), key=lambda m: abs(sums[m - 1] - r))
            expected = torch.zeros(30, dtype=torch.bool); expected[order[:m]] = True
            assert torch.equal(row, expected)


def test_deterministic_orders_hide_top_or_bottom():
    ratios = spectrum()
    bvt = ComponentMasking(0.3, order='bvt')(ratios).hidden[0]
    tvb = ComponentMasking(0.3, order='tvb')(ratios).hidden[0]
    k = int(bvt.sum())
    assert bvt[:k].all() and not bvt[k:].any()
    k = int(tvb.sum())
    assert tvb[-k:].all() and not tvb[:-k].any()
    assert torch.equal(bvt, ComponentMasking(0.3, order='bvt')(ratios, generator=torch.Generator().manual_seed(9)).hidden[0])


def test_component_masks_are_deterministic_under_a_seed_and_vary_without():
    ratios = spectrum()
    for masking in (ComponentMasking(0.2), ComponentMasking(ratio_range=(0.1, 0.9), per_sample=True)):
        a = masking(ratios, 8, torch.Generator().manual_seed(0))
        b = masking(ratios, 8, torch.Generator().manual_seed(0))
        assert torch.equal(a.hidden, b.hidden) and torch.equal(a.longest, b.longest)
        assert any(not torch.equal(a.hidden, masking(ratios, 8, torch.Generator().manual_seed(s)).hidden) for s in range(1, 4))


def test_per_sample_masks_differ_between_images_per_batch_masks_do_not():
    ratios = spectrum()
    per_sample = ComponentMasking(0.2, per_sample=True)(ratios, 32, torch.Generator().manual_seed(0)).hidden
    assert len({tuple(row.tolist()) for row in per_sample}) > 1
    assert ComponentMasking(0.2)(ratios, 32, torch.Generator().manual_seed(0)).hidden.shape == (1, 64)


def test_rd_ratios_spread_over_their_range():
    ratios = torch.full((1000,), 1e-3, dtype=torch.float64)   # fine-grained: achieved fraction ~ drawn ratio
    achieved = hidden_variance(ComponentMasking(ratio_range=(0.1, 0.9), per_sample=True)(ratios, 2000, torch.Generator().manual_seed(0)).hidden, ratios)
    assert 0.0985 <= float(achieved.min()) < 0.12 and 0.88 < float(achieved.max()) <= 0.9005   # as run: at most a component short
    assert abs(float(achieved.mean()) - 0.5) < 0.02


@pytest.mark.parametrize('ratio', [0.01, 0.25, 0.5, 0.75, 0.99])
def test_patch_mask_keep_and_hidden_are_disjoint_and_cover(ratio):
    mask = random_patch_mask(6, 64, ratio, torch.Generator().manual_seed(0))
    n_keep = visible_count(64, ratio)
    assert mask.keep.shape == (6, n_keep) and 1 <= n_keep <= 63
    for keep, hidden, restore in zip(mask.keep, mask.hidden, mask.restore):
        assert len(set(keep.tolist())) == n_keep
        assert not hidden[keep].any()                         # kept patches are visible ...
        assert int(hidden.sum()) == 64 - n_keep               # ... and all the others are hidden
        assert sorted(restore.tolist()) == list(range(64))   # restore is a permutation


def test_patch_masks_are_deterministic_under_a_seed():
    m = PatchMasking(ratio_range=(0.1, 0.9))
    a, b = m(4, 16, torch.Generator().manual_seed(2)), m(4, 16, torch.Generator().manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_patchify_round_trip_and_pixel_mask():
    images = torch.randn(3, 2, 12, 8)
    assert patchify(images, 4).shape == (3, 6, 32)
    assert torch.equal(unpatchify(patchify(images, 4), 4, (2, 12, 8)), images)
    hidden = torch.zeros(1, 4, dtype=torch.bool); hidden[0, 1] = True      # top-right of a 2x2 grid
    px = patch_mask_pixels(hidden, 4, (3, 8, 8))
    assert px.shape == (1, 1, 8, 8) and px[0, 0, :4, 4:].all() and int(px.sum()) == 16


@pytest.mark.parametrize('bad, message', [
    (0, "mask ratio must be strictly between 0 and 1, got 0"),
    (1, "mask ratio must be strictly between 0 and 1, got 1"),
    (-0.2, "got -0.2"),
    (math.nan, "got nan"),
    (True, "got True"),
    (None, "got None"),
])
def test_bad_ratios_are_refused(bad, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        check_ratio(bad)


def test_bad_masking_settings_name_the_problem():
    with pytest.raises(ValueError, match=r"patch mask ratio must be strictly between 0 and 1, got 1.5"): PatchMasking(1.5)
    with pytest.raises(ValueError, match=r"variance mask ratio range must have low <= high, got \(0.5, 0.2\)"):
        ComponentMasking(ratio_range=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"variance mask ratio range must be a pair \(low, high\), got 0.5"):
        ComponentMasking(ratio_range=0.5)
    with pytest.raises(ValueError, match=r"unknown component order 'blocks'"): ComponentMasking(order='blocks')
    with pytest.raises(ValueError, match=r"unknown cut 'nearest': choose one of as_run, closest"): ComponentMasking(cut='nearest')
    with pytest.raises(ValueError, match=r"patch masking needs at least 2 patches per image, got 1"): random_patch_mask(2, 1, 0.5)
    with pytest.raises(ValueError, match=r"at least 2 explained-variance ratios, got \(2, 3\)"):
        component_mask(torch.rand(2, 3), 0.2)
    with pytest.raises(ValueError, match=r"must be >= 0 and sum to at most 1, got min -0.5"):
        component_mask(torch.tensor([0.5, -0.5, 0.2]), 0.2)
    with pytest.raises(ValueError, match=r"unknown masking 'mae_ocl': choose one of"): get_masking('mae_ocl')


def test_named_maskings_take_a_ratio_override():
    assert get_masking('mae_std', 0.9) == PatchMasking(0.9)
    assert get_masking('pmae_rd', 0.1) == ComponentMasking(0.1)
    assert get_masking('pmae_tvb', 0.3) == ComponentMasking(0.3, order='tvb')
