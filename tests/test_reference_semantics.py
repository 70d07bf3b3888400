"""The package against literal re-implementations of how the PMAE paper's reference code computed things.

The reference code (github alicebizeul/pmae) is not imported: each behaviour is re-written here by hand,
the way that code computed it, and compared with the package on seeded random data.

1. The as-run cut: per image, `cumsum = ratios[perm].cumsum(0)`, `i = argmin |cumsum - r|`, hide `perm[:i]`
   (the crossing component stays visible, the mask may be empty); the paper's text ('closest') hides it.
2. The as-run loss normaliser: every image's list of hidden components padded with -1 to the longest, the
   FIRST image's padded list indexes target and predicted coefficients (-1 reads component K-1), and the
   mean runs over the N x L indexed entries.
3. MAE with `norm_pix_loss=False` (and True) against Hugging Face's `ViTMAEForPreTraining` carrying the
   same weights, positions and masking noise.
"""
import pytest
import torch
import torch.nn.functional as F

from pmae.mae import MAE, vit_config
from pmae.masking import ComponentMask, ComponentMasking, PatchMask, component_mask, random_patch_mask
from pmae.pca import fit_pca
from pmae.pmae import PMAE, hidden_component_loss

RATIOS = (0.05, 0.1, 0.2, 0.5)


# ---------------------------------------------------------------------------------------------------------
# Hand-written reference computations (plain Python where the reference looped, torch where it indexed)
# ---------------------------------------------------------------------------------------------------------

def reference_hidden_list(ratios: list, perm: list, r: float) -> list:
    "The reference's hidden components of one image: perm[:i], i the index of the cumulative sum closest to r."
    cumsum, total = [], 0.0
    for j in perm:
        total += ratios[j]
        cumsum.append(total)
    i = min(range(len(cumsum)), key=lambda j: abs(cumsum[j] - r))   # argmin: the first of equal distances
    return perm[:i]


def reference_closest_list(ratios: list, perm: list, r: float) -> list:
    "The paper's text: hide the prefix of 1..K-1 components whose variance is closest to r (the crossing one included)."
    best_k, best_gap, total = None, None, 0.0
    for k in range(1, len(perm)):
        total += ratios[perm[k - 1]]
        if best_gap is None or abs(total - r) < best_gap: best_k, best_gap = k, abs(total - r)
    return perm[:best_k]


def reference_loss(pred_coef: torch.Tensor, target: torch.Tensor, hidden_lists: list) -> torch.Tensor:
    "The reference's loss: lists padded with -1 to the longest, the first one indexes both, mean over N x L."
    L = max(len(h) for h in hidden_lists)
    padded = [list(h) + [-1] * (L - len(h)) for h in hidden_lists]
    idx = torch.tensor(padded[0], dtype=torch.long)       # -1 reads the last component, K-1
    return ((pred_coef[:, idx] - target[:, idx]) ** 2).mean()


def hidden_mean(pred_coef: torch.Tensor, target: torch.Tensor, hidden: list) -> torch.Tensor:
    "The text's loss: mean squared error over the first image's hidden coefficients only (N x m_0 entries)."
    idx = torch.tensor(hidden, dtype=torch.long)
    return ((pred_coef[:, idx] - target[:, idx]) ** 2).mean()


def random_spectrum(g: torch.Generator, K: int | None = None) -> torch.Tensor:
    "Explained-variance ratios (K,) float64 of a random shape (and length unless `K`), summing to at most 1."
    K = K or int(torch.randint(4, 40, (1,), generator=g))
    raw = torch.rand(K, generator=g, dtype=torch.float64) ** (1 + 4 * float(torch.rand(1, generator=g)))
    if float(torch.rand(1, generator=g)) < 0.5: raw = raw.sort(descending=True).values   # PCA-like, decreasing
    return raw / raw.sum() * (0.9 + 0.1 * float(torch.rand(1, generator=g)))


def regenerated_perms(seed: int, n: int, K: int) -> list:
    "The permutations `component_mask` draws from a generator seeded with `seed` (rand(n, K).argsort(1)), as lists."
    return torch.rand(n, K, generator=torch.Generator().manual_seed(seed)).argsort(1).tolist()


def as_set(row: torch.Tensor) -> set:
    return set(row.nonzero().flatten().tolist())


# ---------------------------------------------------------------------------------------------------------
# 1. The as-run cut
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('r', RATIOS)
def test_as_run_cut_matches_reference_loop(r):
    "component_mask(cut='as_run') and ComponentMasking hide exactly perm[:argmin |cumsum - r|] of each image's permutation."
    g, n = torch.Generator().manual_seed(100 + int(r * 100)), 12
    empty_as_run = 0
    for seed in range(25):
        ratios = random_spectrum(g)
        K, plain = len(ratios), ratios.tolist()
        perms = regenerated_perms(seed, n, K)
        got = component_mask(ratios, r, n, generator=torch.Generator().manual_seed(seed), cut='as_run')
        want = [reference_hidden_list(plain, p, r) for p in perms]
        assert got.shape == (n, K) and got.dtype == torch.bool
        for row, ref in zip(got, want): assert as_set(row) == set(ref)
        empty_as_run += sum(len(h) == 0 for h in want)
        closest = component_mask(ratios, r, n, generator=torch.Generator().manual_seed(seed), cut='closest')
        for row, p in zip(closest, perms): assert as_set(row) == set(reference_closest_list(plain, p, r))
        mask = ComponentMasking(r)(ratios, n, torch.Generator().manual_seed(seed))
        assert mask.hidden.shape == (1, K) and as_set(mask.hidden[0]) == set(want[0])      # the FIRST image's draw
        assert int(mask.longest) == max(len(h) for h in want)                             # the longest of the n draws
        per_sample = ComponentMasking(r, per_sample=True)(ratios, n, torch.Generator().manual_seed(seed))
        assert [as_set(row) for row in per_sample.hidden] == [set(h) for h in want]
    if r <= 0.1: assert empty_as_run > 0, "small ratios should give some empty as-run masks"


def test_as_run_cut_on_constructed_spectra():
    "Hand-computed spectra: as-run leaves the crossing component visible (even hides nothing); closest hides it."
    ratios = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)   # bvt: the identity permutation
    assert not component_mask(ratios, 0.2, 1, order='bvt', cut='as_run').any()   # |0.5 - 0.2| is the smallest: i = 0
    assert component_mask(ratios, 0.2, 1, order='bvt', cut='closest').tolist() == [[True, False, False, False, False]]
    assert not component_mask(ratios, 0.2, 1, order='bvt').any()                 # as_run is the default

    ratios = torch.tensor([0.1, 0.15, 0.3, 0.25, 0.2], dtype=torch.float64)   # cumsum 0.1, 0.25, 0.55, 0.8, 1.0
    as_run = component_mask(ratios, 0.2, 1, order='bvt', cut='as_run')[0]
    closest = component_mask(ratios, 0.2, 1, order='bvt', cut='closest')[0]
    assert as_run.tolist() == [True, False, False, False, False]     # PC2 crosses 0.2 (0.1 -> 0.25): left visible
    assert closest.tolist() == [True, True, False, False, False]     # the paper's text hides it: 0.25 is closest
    assert reference_hidden_list(ratios.tolist(), [0, 1, 2, 3, 4], 0.2) == [0]

    # tvb walks the permutation from the bottom: cumsum 0.2, 0.45, ... -> as_run i = 0 (nothing), closest hides PC5
    assert not component_mask(ratios, 0.2, 1, order='tvb', cut='as_run').any()
    assert component_mask(ratios, 0.2, 1, order='tvb', cut='closest')[0].tolist() == [False, False, False, False, True]


def test_empty_masks_only_under_as_run():
    "Some seed gives an empty mask under the as-run cut; the closest cut never does."
    ratios = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], dtype=torch.float64)
    as_run_sizes, closest_sizes = [], []
    for seed in range(30):
        as_run_sizes += component_mask(ratios, 0.2, 8, generator=torch.Generator().manual_seed(seed)).sum(1).tolist()
        closest_sizes += component_mask(ratios, 0.2, 8, generator=torch.Generator().manual_seed(seed),
                                        cut='closest').sum(1).tolist()
    assert min(as_run_sizes) == 0
    assert min(closest_sizes) >= 1


# ---------------------------------------------------------------------------------------------------------
# 2. The as-run loss normaliser
# ---------------------------------------------------------------------------------------------------------

def random_orthonormal(k: int, d: int, g: torch.Generator) -> torch.Tensor:
    "k orthonormal rows (k, d), float64."
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return q.T.contiguous()


def test_hidden_component_loss_matches_padded_reference():
    "hidden_component_loss 'as_run' equals the reference's -1-padded first-image mean; 'hidden' the mean over N x m_0."
    g = torch.Generator().manual_seed(7)
    N, K, D = 6, 20, 48
    components = random_orthonormal(K, D, g)                       # (K, D)
    padding_mattered = empty_first = 0
    for case in range(40):
        ratios = random_spectrum(g, K)
        r = RATIOS[case % len(RATIOS)]
        draws = component_mask(ratios, r, N, generator=torch.Generator().manual_seed(case))          # (N, K)
        lists = [reference_hidden_list(ratios.tolist(), p, r) for p in regenerated_perms(case, N, K)]
        assert [as_set(row) for row in draws] == [set(h) for h in lists]
        if max(map(len, lists)) == 0: continue                    # the reference divides by zero entries: NaN
        pred = torch.randn(N, D, generator=g, dtype=torch.float64)
        coef = torch.randn(N, K, generator=g, dtype=torch.float64)
        mask = ComponentMask(hidden=draws[:1], longest=draws.sum(1).max())
        got = hidden_component_loss(pred, coef, mask, components, 'as_run')
        want = reference_loss(pred @ components.T, coef, lists)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
        if lists[0]:
            got_hidden = hidden_component_loss(pred, coef, mask, components, 'hidden')
            torch.testing.assert_close(got_hidden, hidden_mean(pred @ components.T, coef, lists[0]), rtol=1e-10, atol=0)
            padding_mattered += len(lists[0]) < max(map(len, lists)) and not torch.isclose(got, got_hidden)
        else:
            empty_first += 1
    assert padding_mattered > 0, "no case where the first image's list was padded"
    assert empty_first > 0, "no case with an empty first mask"


def test_hidden_component_loss_with_empty_first_mask():
    "An empty first mask (m_0 = 0, L > 0) gives the reference's mean over component K-1 as run, and finite losses."
    g = torch.Generator().manual_seed(3)
    N, K, D = 5, 12, 30
    components = random_orthonormal(K, D, g)
    pred, coef = torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(N, K, generator=g, dtype=torch.float64)
    lists = [[], [3, 1, 7], [0]] + [[2]] * (N - 3)
    hidden = torch.zeros(1, K, dtype=torch.bool)
    mask = ComponentMask(hidden=hidden, longest=torch.tensor(3))
    as_run = hidden_component_loss(pred, coef, mask, components, 'as_run')
    torch.testing.assert_close(as_run, reference_loss(pred @ components.T, coef, lists), rtol=1e-10, atol=0)
    torch.testing.assert_close(as_run, ((pred @ components[-1] - coef[:, -1]) ** 2).mean(), rtol=1e-10, atol=0)
    assert torch.isfinite(hidden_component_loss(pred, coef, mask, components, 'hidden'))


@pytest.fixture(scope='module')
def pmae_setup():
    "A complete PCA basis of smooth random 8x8 uint8 images, a micro PMAE on it (weights off their init), a batch."
    g = torch.Generator().manual_seed(0)
    low = F.interpolate(torch.rand(300, 3, 4, 4, generator=g), size=8, mode='bilinear', align_corners=False)
    images = (255 * (0.8 * low + 0.2 * torch.rand(300, 3, 8, 8, generator=g))).round().clamp(0, 255).to(torch.uint8)
    basis = fit_pca(images)
    assert basis.components.shape == (192, 192)                   # complete: the hidden-only path applies
    torch.manual_seed(0)
    model = PMAE(vit_config('micro', img_size=8, patch_size=4), basis, ComponentMasking(0.2))
    with torch.no_grad():                                          # away from the init (zero biases, identity norms)
        for p in model.parameters(): p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model, basis, images[:8]


def reference_pmae_loss(model, basis, batch, pred, lists, norm):
    "The reference's loss from the model's own prediction, everything else recomputed in float64."
    x = ((batch.double() / 255 - basis.mean.double()) / basis.std.double()).flatten(1)   # standardised images (N, D)
    C = basis.components.double()
    target, pred_coef = x @ C.T, pred.detach().flatten(1).double() @ C.T
    return reference_loss(pred_coef, target, lists) if norm == 'as_run' else hidden_mean(pred_coef, target, lists[0])


@pytest.mark.parametrize('norm', ['as_run', 'hidden'])
def test_pmae_model_loss_matches_reference(pmae_setup, norm):
    "PMAE(images, mask).loss equals the reference computed from the model's own prediction and the images' coefficients."
    model, basis, batch = pmae_setup
    model.loss_norm, model.hidden_only = norm, False
    K, n = basis.components.shape[0], len(batch)
    checked = 0
    for seed in range(6):
        draws = component_mask(basis.ratios, 0.2, n, generator=torch.Generator().manual_seed(seed))
        lists = [reference_hidden_list(basis.ratios.tolist(), p, 0.2) for p in regenerated_perms(seed, n, K)]
        if not lists[0] or len(lists[0]) == max(map(len, lists)): continue   # want a padded, non-empty first list
        mask = ComponentMask(hidden=draws[:1], longest=draws.sum(1).max())
        with torch.no_grad(): out = model(batch, mask)
        want = reference_pmae_loss(model, basis, batch, out.pred, lists, norm)
        torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=0)
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize('first_empty', [False, True])
def test_pmae_hidden_only_same_loss_and_gradients(pmae_setup, first_empty):
    "hidden_only=True gives the same loss and gradients as the full projection, also for an empty first mask (finite)."
    model, basis, batch = pmae_setup
    n = len(batch)
    draws = component_mask(basis.ratios, 0.2, n, generator=torch.Generator().manual_seed(1))
    if first_empty: draws = torch.cat([torch.zeros_like(draws[:1]), draws[1:]])
    mask = ComponentMask(hidden=draws[:1], longest=draws.sum(1).max())
    assert (int(draws[0].sum()) == 0) == first_empty and int(mask.longest) > 0
    for norm in ('as_run', 'hidden'):
        results = []
        for hidden_only in (False, True):
            model.loss_norm, model.hidden_only = norm, hidden_only
            model.zero_grad(set_to_none=True)
            out = model(batch, mask)
            out.loss.backward()
            results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        assert model.uses_hidden_only(mask)
        (loss_full, grads_full), (loss_fast, grads_fast) = results
        assert torch.isfinite(loss_full) and torch.isfinite(loss_fast)
        torch.testing.assert_close(loss_fast, loss_full, rtol=1e-5, atol=1e-8)
        assert grads_fast.keys() == grads_full.keys() and len(grads_full) > 40   # PMAE never reads the mask token
        scale = max(float(g.abs().max()) for g in grads_full.values())
        for name, g in grads_full.items(): torch.testing.assert_close(grads_fast[name], g, rtol=1e-4, atol=1e-5 * scale)
        if first_empty and norm == 'as_run':   # only component K-1 is read, L = longest times
            lists = [[]] + [reference_hidden_list(basis.ratios.tolist(), p, 0.2)
                            for p in regenerated_perms(1, n, basis.components.shape[0])][1:]
            with torch.no_grad(): pred = model(batch, mask).pred
            torch.testing.assert_close(loss_full.double(), reference_pmae_loss(model, basis, batch, pred, lists, norm),
                                       rtol=1e-5, atol=0)
    model.loss_norm, model.hidden_only = 'as_run', False


# ---------------------------------------------------------------------------------------------------------
# 3. MAE against Hugging Face's ViTMAEForPreTraining
# ---------------------------------------------------------------------------------------------------------

def hf_names(hf) -> dict:
    "Names of a block's parts in this transformers version (5.x: q_proj..., 4.x: attention.attention.query...)."
    params = dict(hf.named_parameters())
    if 'vit.layers.0.attention.q_proj.weight' in params:
        return dict(layers='vit.layers', q='attention.q_proj', k='attention.k_proj', v='attention.v_proj',
                    o='attention.o_proj', fc1='mlp.fc1', fc2='mlp.fc2')
    return dict(layers='vit.encoder.layer', q='attention.attention.query', k='attention.attention.key',
                v='attention.attention.value', o='attention.output.dense', fc1='intermediate.dense', fc2='output.dense')


def hf_twin(model: MAE, norm_pix_loss: bool):
    "A ViTMAEForPreTraining with our model's shapes and weights, our positions (zero [CLS] row), head rows in HF order."
    transformers = pytest.importorskip('transformers')
    c = model.config
    hf = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
        hidden_size=c.width, num_hidden_layers=c.depth, num_attention_heads=c.heads, intermediate_size=c.mlp,
        decoder_hidden_size=c.dec_width, decoder_num_hidden_layers=c.dec_depth, decoder_num_attention_heads=c.dec_heads,
        decoder_intermediate_size=c.dec_mlp, mask_ratio=0.75, qkv_bias=True, layer_norm_eps=1e-6, hidden_act='gelu',
        image_size=c.img_size, patch_size=c.patch_size, num_channels=c.in_chans, norm_pix_loss=norm_pix_loss,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    names, ours, copied = hf_names(hf), dict(model.named_parameters()), set()

    def put(dst: str, value: torch.Tensor):
        p = hf.get_parameter(dst)
        assert p.shape == value.shape, (dst, p.shape, value.shape)
        with torch.no_grad(): p.copy_(value)
        copied.add(dst)

    def put_block(dst: str, src: str):
        for a, b in (('layernorm_before', 'norm1'), ('layernorm_after', 'norm2'), (names['o'], 'attn.proj'),
                     (names['fc1'], 'mlp.fc1'), (names['fc2'], 'mlp.fc2')):
            for w in ('weight', 'bias'): put(f'{dst}.{a}.{w}', ours[f'{src}.{b}.{w}'])
        for w in ('weight', 'bias'):                                   # timm's fused qkv: q, k, v stacked on rows
            for part, value in zip('qkv', ours[f'{src}.attn.qkv.{w}'].chunk(3, 0)): put(f'{dst}.{names[part]}.{w}', value)

    zero = lambda width: torch.zeros(1, 1, width)
    put('vit.embeddings.cls_token', ours['encoder.cls_token'])
    for w in ('weight', 'bias'): put(f'vit.embeddings.patch_embeddings.projection.{w}', ours[f'encoder.patch_embed.proj.{w}'])
    put('vit.embeddings.position_embeddings', torch.cat([zero(c.width), model.encoder.pos_embed], 1))
    for i in range(c.depth): put_block(f"{names['layers']}.{i}", f'encoder.blocks.{i}')
    for w in ('weight', 'bias'): put(f'vit.layernorm.{w}', ours[f'encoder.norm.{w}'])
    for w in ('weight', 'bias'): put(f'decoder.decoder_embed.{w}', ours[f'decoder.embed.{w}'])
    put('decoder.mask_token', ours['decoder.mask_token'])
    put('decoder.decoder_pos_embed', torch.cat([zero(c.dec_width), model.decoder.pos_embed], 1))
    for i in range(c.dec_depth): put_block(f'decoder.decoder_layers.{i}', f'decoder.blocks.{i}')
    for w in ('weight', 'bias'): put(f'decoder.decoder_norm.{w}', ours[f'decoder.norm.{w}'])
    # ours predicts each patch as (channel, p, q); HF as (p, q, channel): HF row h = our row of the same pixel
    p = c.patch_size
    rows = torch.arange(c.patch_dim).view(c.in_chans, p, p).permute(1, 2, 0).reshape(-1)
    for w in ('weight', 'bias'): put(f'decoder.decoder_pred.{w}', ours[f'decoder.head.{w}'][rows])
    assert copied == {n for n, _ in hf.named_parameters()}, "some HF parameter was left at its own initialisation"
    return hf


@pytest.fixture(scope='module')
def mae_setup():
    "A micro MAE with every weight moved off its init, float images in [0, 1], and seeded masking noise."
    cfg = vit_config('micro', img_size=16, patch_size=4)
    torch.manual_seed(0)
    model = MAE(cfg, norm_pix_loss=False).eval()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for prm in model.parameters(): prm.add_(0.05 * torch.randn(prm.shape, generator=g))
    images = torch.rand(4, 3, 16, 16, generator=g)
    noise = torch.rand(1, 4, cfg.n_patches, generator=torch.Generator().manual_seed(5))[0]   # (N, L)
    return model, images, noise


def patch_mask_from_noise(noise: torch.Tensor, n_keep: int) -> PatchMask:
    "MAE's convention: shuffle = argsort(noise), keep its first n_keep, restore = argsort(shuffle), hidden = restore >= n_keep."
    shuffle = noise.argsort(-1)
    restore = shuffle.argsort(-1)
    return PatchMask(shuffle[:, :n_keep], restore, restore >= n_keep)


@pytest.mark.parametrize('norm_pix_loss', [False, True])
def test_mae_matches_hugging_face(mae_setup, norm_pix_loss):
    "MAE's loss and predictions equal ViTMAEForPreTraining's with the same weights, positions and masking noise."
    model, images, noise = mae_setup
    model.norm_pix_loss = norm_pix_loss
    hf = hf_twin(model, norm_pix_loss)
    mask = patch_mask_from_noise(noise, n_keep=4)                  # int(16 * (1 - 0.75)) visible patches
    drawn = random_patch_mask(len(images), 16, 0.75, torch.Generator().manual_seed(5))   # same generator, same noise
    for a, b in zip(drawn[:3], mask[:3]): assert torch.equal(a, b)
    with torch.no_grad():
        ours = model(images, mask)
        theirs = hf(pixel_values=model.normalize(images), noise=noise)
    assert torch.equal(theirs.mask.bool(), mask.hidden)
    torch.testing.assert_close(hf.patchify(ours.pred), theirs.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-5, atol=1e-7)
    model.norm_pix_loss = False


def test_mae_norm_pix_loss_changes_the_loss(mae_setup):
    "norm_pix_loss True and False give clearly different losses, on our side and on Hugging Face's."
    model, images, noise = mae_setup
    mask, losses = patch_mask_from_noise(noise, n_keep=4), {}
    for flag in (False, True):
        model.norm_pix_loss = flag
        with torch.no_grad():
            losses[flag] = (float(model(images, mask).loss), float(hf_twin(model, flag)(pixel_values=images, noise=noise).loss))
    model.norm_pix_loss = False
    assert abs(losses[True][0] - losses[False][0]) > 0.1 * losses[False][0]
    assert abs(losses[True][1] - losses[False][1]) > 0.1 * losses[False][1]
