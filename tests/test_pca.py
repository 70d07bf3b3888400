"""Bad input and streaming sources for `pmae.pca`: exact errors, and any iterable of batches works."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pmae.data import load_digits_data
from pmae.pca import PCABasis, PixelMoments, ShapeMismatchError, fit_pca, pixel_stats


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
    assert torch.allclose(mean, x.mean(0)) and torch.allclose(std, x.std(0, unbiased=False))


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
