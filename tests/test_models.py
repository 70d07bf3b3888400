"""Models (chapters 05-06): shapes of every configuration, parameter counts, the PMAE invariants, errors, determinism."""
import pytest
import torch

from pmae.mae import CONFIGS, MAE, ImageShapeError, MaskedAutoencoder, train_steps, vit_config
from pmae.masking import ComponentMasking, PatchMasking
from pmae.pca import PCABasis, ShapeMismatchError
from pmae.pmae import PMAE, hidden_component_loss, split_components


def random_basis(shape, k=48, seed=0):
    "A truncated basis with k orthonormal random components (like PCA's, but cheap at D = 12,288)."
    g = torch.Generator().manual_seed(seed)
    d = shape[0] * shape[1] * shape[2]
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))   # (D, k) orthonormal columns
    values = torch.linspace(1, 0.01, k, dtype=torch.float64) ** 2
    return PCABasis(mean=torch.rand(shape, generator=g), std=0.5 + torch.rand(shape, generator=g),
                    components=q.T.float().contiguous(), eigenvalues=values, total_variance=float(values.sum()) * 1.25,
                    n_samples=1000, source='random')


@pytest.mark.parametrize('size', [32, 64])
@pytest.mark.parametrize('name', list(CONFIGS))
def test_output_shapes_of_every_configuration(name, size):
    cfg = vit_config(name, img_size=size)
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    torch.manual_seed(0)
    with torch.no_grad():
        mae = MAE(cfg)
        out = mae(images)
        assert out.pred.shape == (2, 3, size, size) and out.hidden.shape == (2, cfg.n_patches)
        assert mae.encode(images).shape == (2, cfg.width)
        pmae = PMAE(cfg, random_basis((3, size, size)))
        out = pmae(images)
        assert out.pred.shape == (2, 3, size, size) and out.hidden.shape == (1, 48)
        assert pmae.encode(images).shape == (2, cfg.width)
        assert torch.isfinite(out.loss)


def block_params(e, m):
    "One pre-norm transformer block of width e and MLP m: 2 LayerNorms, qkv and output projection, 2-layer MLP."
    return 2 * (2 * e) + (3 * e * e + 3 * e) + (e * e + e) + (e * m + m) + (m * e + e)


def test_parameter_counts_of_vit_tiny_match_the_method():
    "method.md: patch 8, width 192, depth 12, MLP 768; decoder 512 wide, depth 8, MLP 2048; fixed sin-cos positions."
    p, c, e, m, d, em, dm = 8, 3, 192, 768, 12, 512, 2048
    encoder = (c * p * p * e + e) + e + d * block_params(e, m) + 2 * e          # patch embed, [CLS], blocks, final LN
    decoder = (e * em + em) + em + 8 * block_params(em, dm) + 2 * em + (em * c * p * p + c * p * p)
    model = MaskedAutoencoder(vit_config('vit_tiny'))
    assert model.n_params('encoder') == encoder == 5_376_000
    assert model.n_params('decoder') == decoder
    assert model.n_params() == encoder + decoder
    assert MaskedAutoencoder(vit_config('vit_tiny', img_size=64)).n_params() == encoder + decoder   # positions are not parameters
    attn = model.encoder.blocks[0].attn
    assert attn.num_heads == 12 and attn.head_dim == 16   # as trained: 12 heads of 16
    assert MaskedAutoencoder(vit_config('vit_tiny_3h')).encoder.blocks[0].attn.head_dim == 64


def test_pmae_invariants_with_per_sample_masks():
    basis = random_basis((3, 32, 32), k=64)
    model = PMAE(vit_config('micro'), basis, masking=ComponentMasking(0.3, per_sample=True))
    images = torch.rand(6, 3, 32, 32)
    mask = model.draw_masks(6, torch.Generator().manual_seed(0))
    hidden = mask.hidden                                                              # (6, 64)
    x = model.normalize(images).flatten(1)
    coef, visible = split_components(x, model.components, hidden)
    assert (visible @ model.components.T * hidden).abs().max() < 1e-5               # no energy on any image's hidden components
    # the loss only sees each image's own hidden components
    untouched = hidden.clone(); untouched[:, -1] = True                                # as run, the padding reads the last component
    shift = (torch.randn(6, 64) * ~untouched) @ model.components
    pred = torch.randn_like(x)
    for norm in ('as_run', 'hidden'):
        torch.testing.assert_close(hidden_component_loss(pred + shift, coef, mask, model.components, norm),
                                   hidden_component_loss(pred, coef, mask, model.components, norm))
        assert hidden_component_loss(x, coef, mask, model.components, norm) < 1e-10


def test_pmae_state_dict_omits_the_basis_and_restores_with_it():
    basis = random_basis((3, 32, 32))
    torch.manual_seed(0)
    model = PMAE(vit_config('micro'), basis)
    state = model.state_dict()
    assert 'components' not in state and 'ratios' not in state and 'mean' in state
    restored = PMAE(vit_config('micro'), basis)
    restored.load_state_dict(state)
    mask = model.draw_masks(4, generator=torch.Generator().manual_seed(0))
    images = torch.rand(4, 3, 32, 32)
    assert torch.equal(model(images, mask).loss, restored(images, mask).loss)


def test_model_errors_name_both_shapes():
    model = MAE(vit_config('micro'))
    with pytest.raises(ImageShapeError, match=r"the model reads images of shape \(3, 32, 32\), got \(3, 64, 64\)"):
        model(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, C, H, W\), got \(3, 32, 32\)"):
        model.encode(torch.rand(3, 32, 32))
    with pytest.raises(ShapeMismatchError, match=r"PCA basis was fit on random of shape \(3, 64, 64\), but the model's images have shape \(3, 32, 32\)"):
        PMAE(vit_config('micro'), random_basis((3, 64, 64)))
    with pytest.raises(ImageShapeError, match=r"per-pixel mean has shape \(1, 32, 32\), the model reads images of shape \(3, 32, 32\)"):
        MAE(vit_config('micro'), mean=torch.zeros(1, 32, 32))
    with pytest.raises(TypeError, match=r"MAE masks patches: expected a PatchMasking, got components 20% of variance"):
        MAE(vit_config('micro'), masking=ComponentMasking())
    with pytest.raises(TypeError, match=r"PMAE masks components: expected a ComponentMasking, got patches 75%"):
        PMAE(vit_config('micro'), random_basis((3, 32, 32)), masking=PatchMasking())


def test_training_is_deterministic_under_a_seed():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = PMAE(vit_config('micro'), random_basis((3, 32, 32)))
        runs.append((train_steps(model, images, steps=4, batch_size=16), model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_pmae_projections_stay_float32_under_bf16_autocast():
    model = PMAE(vit_config('micro'), random_basis((3, 32, 32)))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(torch.rand(4, 3, 32, 32))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_mae_with_random_ratio_draws_one_ratio_per_batch():
    model = MAE(vit_config('micro'), masking=PatchMasking(ratio_range=(0.1, 0.9)))
    counts = {int(model(torch.rand(3, 3, 32, 32), generator=torch.Generator().manual_seed(s)).hidden.sum(1).unique().numel())
              for s in range(5)}
    assert counts == {1}   # every image of a batch hides the same number of patches
