"""Latent-space defenses: classifiers on AE codes (encode / project) and Defense-GAN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advlab import data, generative, models
from advlab.defenses import DefenseGAN, LatentClassifier, train_latent_classifier
from advlab.generative.train import default_config, fit_generative
from advlab.train import TrainConfig, fit
from advlab.weights import load_model, save_model


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


@pytest.fixture(scope="module")
def ae(digits):
    train, _ = digits
    torch.manual_seed(0)
    model = generative.create("ae", dataset="digits", latent_dim=8, arch="mlp", hidden=[64])
    cfg = default_config("ae", "image", epochs=6, batch_size=64, lr=3e-3, device="cpu")
    fit_generative(model, train, cfg, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def image_classifier(digits):
    train, _ = digits
    torch.manual_seed(0)
    model = models.create("mlp", dataset="digits", widths=[32])
    fit(model, train, TrainConfig(epochs=6, batch_size=64, lr=3e-3, device="cpu"),
        progress=False)
    return model.eval()


def test_classifier_on_codes_learns_and_keeps_the_autoencoder_frozen(ae, digits):
    train, test = digits
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    model = train_latent_classifier(ae, train, head="lrl",
                                    config=TrainConfig(epochs=15, lr=1e-2, device="cpu"))
    acc = (model(test.x).argmax(1) == test.y).float().mean().item()
    assert acc > 0.7
    assert all(torch.equal(v, ae.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in model.generative.parameters())
    model.train()
    assert not model.generative.training  # frozen batch statistics, too


def test_projection_codes_are_deterministic_and_bpda_gives_the_encoder_gradient(ae, digits):
    train, test = digits
    model = train_latent_classifier(ae, train, code="project", steps=20, restarts=2,
                                    config=TrainConfig(epochs=3, lr=1e-2, device="cpu"))
    x, y = test.x[:16], test.y[:16]
    assert torch.equal(model(x), model(x))
    z_proj = ae.project(x, steps=20, restarts=2, z_init=model.start_codes(x)).z
    assert torch.allclose(model.codes(x), z_proj, atol=1e-6)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    # BPDA: d/dx = J_encoder(x)^T · dCE/dz at the projected code
    zp = z_proj.clone().requires_grad_(True)
    (gz,) = torch.autograd.grad(F.cross_entropy(model.head(zp), y), zp)
    xe = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad((ae.encode(xe) * gz).sum(), xe)
    assert g.abs().sum() > 0 and torch.allclose(g, want, atol=1e-6)
    model.bpda = False
    xr = x.clone().requires_grad_(True)
    (none,) = torch.autograd.grad(model(xr).sum(), xr, allow_unused=True)
    assert none is None  # without BPDA the input gets no gradient at all


def test_defense_gan_classifies_the_projection_with_straight_through_gradient(
        ae, image_classifier, digits):
    _, test = digits
    x, y = test.x[:16], test.y[:16]
    model = DefenseGAN(ae, image_classifier, steps=20, restarts=3)
    x_hat = ae.project(x, steps=20, restarts=3, z_init=model.start_codes(x)).x_hat
    assert torch.allclose(model(x), image_classifier(x_hat), atol=1e-6)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    xh = x_hat.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(F.cross_entropy(image_classifier(xh), y), xh)
    assert torch.allclose(g, want, atol=1e-6)


@pytest.mark.parametrize("kind", ["encode", "project", "defense-gan"])
def test_latent_models_save_and_load_through_the_normal_weights(kind, ae, image_classifier,
                                                                digits, tmp_path):
    train, test = digits
    if kind == "defense-gan":
        model = DefenseGAN(ae, image_classifier, steps=5, restarts=2)
    else:
        model = train_latent_classifier(ae, train, code=kind, steps=5,
                                        config=TrainConfig(epochs=1, device="cpu"))
    save_model(tmp_path, model, {"dataset": "digits"})
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model) and loaded.spec == model.spec
    assert torch.equal(loaded(test.x[:8]), model(test.x[:8]))


def test_latent_classifier_rejects_bad_settings(ae):
    head = models.create("linear-1l", dataset="digits", in_features=8)
    with pytest.raises(ValueError, match="expected code in"):
        LatentClassifier(ae, head, code="sample")
    with pytest.raises(ValueError, match="expected steps"):
        LatentClassifier(ae, head, code="project", steps=-1)


def test_precomputed_codes_give_the_same_head_and_are_checked(ae, digits):
    from advlab.defenses.latent import latent_codes

    train, test = digits
    cfg = TrainConfig(epochs=2, lr=1e-2, device="cpu")
    torch.manual_seed(0)
    own = train_latent_classifier(ae, train, code="project", steps=10, config=cfg)
    codes = latent_codes(own, train.x)
    torch.manual_seed(0)
    shared = train_latent_classifier(ae, train, code="project", steps=10, config=cfg,
                                     codes=codes)
    assert torch.equal(own(test.x[:32]), shared(test.x[:32]))
    with pytest.raises(ValueError, match=r"codes of shape \(\d+, 8\)"):
        train_latent_classifier(ae, train, code="project", steps=10, config=cfg,
                                codes=codes[:10])


@pytest.mark.parametrize("kind", ["project", "defense-gan"])
def test_a_points_projection_and_prediction_do_not_depend_on_its_batch(kind, ae,
                                                                      image_classifier, digits):
    """The random restarts are keyed by each input's pixels: a point projected alone, first or
    last in a batch gets the same starts, codes and logits (an attack's sub-batches and the
    clean pass see one model)."""
    _, test = digits
    x = test.x[:12]
    if kind == "defense-gan":
        model = DefenseGAN(ae, image_classifier, steps=15, restarts=3)
    else:
        model = LatentClassifier(ae, models.create("linear-1l", dataset="digits",
                                                   in_features=ae.latent_dim),
                                 code="project", steps=15, restarts=3)
    starts = model.start_codes(x)
    assert starts.shape == (3, 12, ae.latent_dim)
    assert len({tuple(s.tolist()) for s in starts.reshape(-1, ae.latent_dim)}) == 36
    def same(a, b):  # other draws differ by O(1); 1e-6 leaves room for a kernel's rounding
        return torch.allclose(a, b, rtol=0, atol=1e-6)

    for i in (0, 5, 11):
        assert same(model.start_codes(x[i:i + 1]), starts[:, i:i + 1])
    reordered = torch.cat([x[7:], x[:7]])
    assert same(model.start_codes(reordered)[:, 5:], starts[:, :7])
    with torch.no_grad():
        full = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(12)])
    assert torch.allclose(full, alone, atol=1e-5)
    # another seed: other starts; a changed pixel: other starts for that point only
    other = type(model)(ae, image_classifier, steps=15, restarts=3, seed=1) \
        if kind == "defense-gan" else None
    if other is not None:
        assert not torch.equal(other.start_codes(x), starts)
    bumped = x.clone()
    bumped[3, 0, 0, 0] += 1e-3
    moved = model.start_codes(bumped)
    assert not same(moved[:, 3], starts[:, 3])
    assert same(moved[:, 4], starts[:, 4])
