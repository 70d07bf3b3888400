"""Bad input and streaming sources for `pmae.pca`: exact errors, any iterable of batches works, and the
per-pixel std rule (`safe_std`) on pixels that never vary or almost never."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pmae.pca as pca
from pmae.data import load_digits_data
from pmae.pca import (CONSTANT_STD, STD_FLOOR, PCABasis, PixelMoments, ShapeMismatchError, fit_pca, pixel_stats, safe_std,
                      typical_std)
from pmae.augment import augment


@pytest.fixture(scope='module')
def digits():
    return load_digits_data().train


@pytest.fixture(scope='module')
def basis(digits):
    return fit_pca(digits.images, source='digits')


def test_dataloader_equals_tensor(digits, basis):
    loader = DataLoader(TensorDataset(digits.images, digits.labels), batch_size=100)   # yields (images, labels)
    streamed = fit_pca(loader, source='digits')
    assert torch.allclose(streamed.eigenvalues, basis.eigenvalues, rtol=1e-12)
    assert torch.allclose(streamed.components.abs(), basis.components.abs(), atol=1e-5)


def test_float_images_give_the_same_basis(digits, basis):
    floats = fit_pca(digits.images.double() / 255)
    assert torch.allclose(floats.eigenvalues, basis.eigenvalues, rtol=1e-9)


def test_pixel_stats_match_torch(digits):
    mean, std = pixel_stats(digits.images, batch_size=64)
    x = digits.images.double() / 255
    assert torch.allclose(mean, x.mean(0)) and torch.allclose(std, safe_std(x.std(0, unbiased=False)))


def raw_std(images) -> torch.Tensor:
    "Per-pixel population std (D,) of uint8 images, by torch in one shot."
    return (images.flatten(1).double() / 255).std(0, unbiased=False)


def test_the_rule_floors_at_half_the_typical_std_and_keeps_never_varying_pixels_at_zero(bordered_digits):
    images = bordered_digits.train.images                                      # (1438, 1, 16, 16)
    raw = raw_std(images)                                                       # (256,)
    varying = raw > CONSTANT_STD
    border = torch.ones(16, 16, dtype=torch.bool); border[4:12, 4:12] = False; border[1, 1] = False   # the lit pixel varies
    assert not varying[border.flatten()].any() and varying.view(16, 16)[1, 1]
    typical = raw[varying].square().mean().sqrt()
    assert torch.allclose(typical_std(raw), typical) and 0.2 < float(typical) < 0.35
    mean, std = pixel_stats(images)                                             # (1, 16, 16) each
    std = std.flatten()
    assert torch.allclose(std, raw.clamp_min(STD_FLOOR * typical))             # the rule, elementwise
    above = raw >= STD_FLOOR * typical
    assert torch.equal(safe_std(raw)[above], raw[above])                       # above the floor: untouched
    assert not above[border.flatten()].any() and not above.view(16, 16)[1, 1]   # the border and the lit pixel: floored
    z = (images.flatten(1).double() / 255 - mean.flatten()) / std               # (1438, 256)
    assert z[:, ~varying].abs().max() < 1e-12                                   # the border stays at zero
    bound = 1 / (STD_FLOOR * float(typical))
    print(f"largest |z| of the training images: raw std {float(((images.flatten(1).double() / 255 - mean.flatten()) / raw)[:, varying].abs().max()):.1f}, "
          f"with the rule {float(z.abs().max()):.2f} (bound {bound:.2f})")
    assert z.abs().max() <= bound
    for other in (augment(images, generator=torch.Generator().manual_seed(0)), torch.rand(64, 1, 16, 16, dtype=torch.float64)):
        assert ((other.flatten(1).double() - mean.flatten()) / std).abs().max() <= bound   # any image in [0, 1]: bounded


def test_the_rule_leaves_natural_images_alone_and_handles_nothing_varying():
    from pmae.data import load_photos_data
    photos = load_photos_data().train.images
    assert torch.equal(safe_std(raw_std(photos)), raw_std(photos))                      # no photo pixel is near-constant
    assert torch.allclose(pixel_stats(photos)[1].flatten(), raw_std(photos), rtol=1e-9)
    assert torch.equal(safe_std(torch.zeros(3, 4, 4)), torch.ones(3, 4, 4))


def test_pca_and_pixel_stats_standardise_alike_and_agree_with_sklearn(bordered_digits):
    from sklearn.decomposition import PCA
    images = bordered_digits.train.images
    basis = fit_pca(images, dtype=torch.float64)
    few = fit_pca(images[:100], dtype=torch.float64)                            # the N < D route
    assert torch.equal(basis.std, pixel_stats(images)[1].double())
    assert torch.allclose(few.std, pixel_stats(images[:100])[1].double())
    z = basis.standardize(images)                                               # (1438, 256)
    ref = PCA(svd_solver='full').fit(z.numpy())
    K = basis.n_components
    assert torch.allclose(basis.eigenvalues, torch.from_numpy(ref.explained_variance_[:K]), rtol=1e-6, atol=1e-10)


def test_a_pca_file_saved_before_the_floor_still_loads(tmp_path, bordered_digits, monkeypatch):
    images = bordered_digits.train.images
    old_rule = lambda std: torch.where(std > CONSTANT_STD, std, torch.ones_like(std))   # pmae before the floor
    monkeypatch.setattr(pca, 'safe_std', old_rule)
    old = fit_pca(images, source='old', dtype=torch.float64)
    monkeypatch.undo()
    path = old.save(tmp_path / 'old_pca.pt')
    loaded = PCABasis.load(path, shape=(1, 16, 16))
    assert torch.equal(loaded.std, old.std) and not torch.equal(loaded.std, fit_pca(images, dtype=torch.float64).std)
    assert torch.allclose(loaded.reconstruct(images), images.double() / 255, atol=1e-9)   # still exact: its own std


@pytest.mark.parametrize('images, error, message', [
    (torch.zeros(8, 8, dtype=torch.uint8), ValueError, r"expected images of shape \(N, C, H, W\), got \(8, 8\)"),
    ([1, 2, 3], ValueError, r"expected images of shape \(N, C, H, W\), got int"),
    (torch.zeros(0, 1, 8, 8), ValueError, r"PCA needs at least 2 images, got 0"),
    (torch.zeros(3, 1, 8, 8, dtype=torch.int32), TypeError, r"expected uint8 or floating-point images, got torch.int32"),
])
def test_bad_images(images, error, message):
    with pytest.raises(error, match=message):
        fit_pca(images)


def test_stream_must_keep_shape_and_dtype():
    m = PixelMoments((1, 8, 8)).update(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"batch of images of shape \(1, 4, 4\) in a stream of shape \(1, 8, 8\)"):
        m.update(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="a stream of images must be all uint8 or all floating point"):
        m.update(torch.zeros(2, 1, 8, 8))


def test_bad_component_selections(basis, digits):
    x = digits.images[:4]
    with pytest.raises(ValueError, match=rf"k=99 is outside 0..{basis.n_components}"):
        basis.project(x, 99)
    with pytest.raises(IndexError, match=rf"component index outside 0..{basis.n_components - 1}"):
        basis.reconstruct(x, [0, basis.n_components])
    with pytest.raises(ValueError, match=rf"a boolean mask over components needs shape \({basis.n_components},\), got \(3,\)"):
        basis.project(x, torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="must be an int, a 1-D index set or a boolean mask"):
        basis.project(x, torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"variance ratio must be in \(0, 1\], got 1.5"):
        basis.n_components_for(1.5)


def test_shape_mismatch_names_both_shapes(basis):
    with pytest.raises(ShapeMismatchError, match=r"fit on digits of shape \(1, 8, 8\), but the images have shape \(3, 32, 32\)"):
        basis.standardize(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_loading_for_other_images_names_the_file_and_both_shapes(tmp_path, basis):
    path = basis.save(tmp_path / 'digits.pt')
    with pytest.raises(ShapeMismatchError, match=rf"^the PCA file {tmp_path / 'digits.pt'} was fit on digits of shape \(1, 8, 8\), "
                                                 r"but the images it is used with have shape \(3, 32, 32\)$"):
        PCABasis.load(path, shape=(3, 32, 32))


@pytest.mark.parametrize('name, content, reason', [
    ('empty.pt', lambda good: b'', "the file is empty"),
    ('half.pt', lambda good: good[:len(good) // 2], r"it is incomplete or damaged \(cut off while it was written or copied\?\)"),
    ('bitrot.pt', lambda good: good[:200] + bytes(b ^ 0xFF for b in good[200:260]) + good[260:], "it is incomplete or damaged"),
    ('notes.pt', lambda good: b'# my notes', "it is not a file that pmae saved"),
])
def test_unreadable_files_say_why_in_plain_words(tmp_path, basis, name, content, reason):
    good = basis.save(tmp_path / 'good.pt').read_bytes()
    (tmp_path / name).write_bytes(content(good))
    with pytest.raises(ValueError, match=rf"^{tmp_path / name} is not a readable PCA file: {reason}") as e:
        PCABasis.load(tmp_path / name)
    assert 'zip' not in str(e.value) and 'central directory' not in str(e.value)


def test_load_rejects_other_files_and_newer_versions(tmp_path, basis):
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'model.pt')
    with pytest.raises(ValueError, match=r"model.pt is not a pmae PCA file"):
        PCABasis.load(tmp_path / 'model.pt')
    path = basis.save(tmp_path / 'pca.pt')
    state = torch.load(path, weights_only=True); state['version'] = 99
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"pca.pt has PCA format version 99; this pmae reads up to 1"):
        PCABasis.load(path)


def test_save_is_atomic(tmp_path, basis, monkeypatch):
    path = basis.save(tmp_path / 'pca.pt')
    before = path.read_bytes()
    def crash(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(KeyboardInterrupt):
        basis.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['pca.pt']
