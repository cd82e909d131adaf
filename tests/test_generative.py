"""Generative models: the contract over every registered model x data set x architecture, exact
checks of the ELBO, the IW bound and the gradient penalty, projection, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from advlab import generative
from advlab.data.base import available as available_datasets
from advlab.data.base import info
from advlab.generative import VAE, AdversarialModel, Autoencoder, gradient_penalty
from advlab.generative.losses import discriminator_loss, generator_loss

POINT_SETS = {"ring8", "grid25"}
ARCH_MODELS = {"ae", "vae", "gan", "wgan-gp"}  # take arch="mlp" | "conv"


def _cases():
    for name in generative.available():
        for ds in available_datasets():
            archs = ("mlp", "conv") if name in ARCH_MODELS else (None,)
            for arch in archs:
                points = ds in POINT_SETS
                if points and (arch == "conv" or name == "dcgan"):
                    continue  # refused: tested in test_conv_needs_images
                yield name, ds, arch


CASES = list(_cases())
B = 3


def _data(ds: str, n: int = B, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, *info(ds).shape)
    return torch.rand(shape, generator=g) if info(ds).kind == "image" else torch.randn(
        shape, generator=g)


@pytest.mark.parametrize("name,ds,arch", CASES, ids=[f"{n}-{d}-{a}" for n, d, a in CASES])
def test_model_contract(name, ds, arch):
    torch.manual_seed(0)
    kw = {"arch": arch} if arch else {}
    model = generative.create(name, dataset=ds, **kw)
    shape = info(ds).shape
    assert model.data_shape == shape
    json.dumps(model.spec)  # JSON-serialisable
    if arch:
        assert model.spec["kwargs"]["arch"] == arch

    model.train()
    g = torch.Generator().manual_seed(1)
    x = model.sample(5, generator=g)
    assert x.shape == (5, *shape) and x.dtype == torch.float32
    assert model.training  # sample() restores the mode
    assert not x.requires_grad
    assert torch.isfinite(x).all()
    if info(ds).kind == "image":
        assert x.min() >= 0 and x.max() <= 1
    # seeded determinism
    assert torch.equal(x, model.sample(5, generator=torch.Generator().manual_seed(1)))

    model.eval()
    z = torch.randn(4, model.latent_dim, requires_grad=True)
    out = model.decode(z)
    assert out.shape == (4, *shape)
    out.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()

    data = _data(ds)
    if isinstance(model, Autoencoder):
        codes = model.encode(data)
        assert codes.shape == (B, model.latent_dim)
        assert model.reconstruct(data).shape == data.shape
        loss, terms = model.loss(data)
        assert loss.dim() == 0 and torch.isfinite(loss)
        if isinstance(model, VAE):
            assert model.elbo(data).shape == (B,)
            assert model.iw_bound(data, k=3).shape == (B,)
            assert set(terms) == {"recon_nll", "kl"}
    else:
        assert isinstance(model, AdversarialModel)
        assert model.score(data).shape == (B,)

    # from_spec rebuilds the architecture; the weights then give identical outputs
    clone = generative.from_spec(model.spec)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    zz = torch.randn(2, model.latent_dim)
    assert torch.equal(clone.decode(zz), model.decode(zz))


@pytest.mark.parametrize("name", ["ae", "vae", "gan", "wgan-gp", "dcgan"])
def test_conv_needs_images(name):
    kw = {} if name == "dcgan" else {"arch": "conv"}
    with pytest.raises(ValueError, match="images"):
        generative.create(name, dataset="ring8", **kw)


def test_default_sizes_follow_the_sources():
    vae = generative.create("vae", dataset="mnist")
    assert vae.latent_dim == 32 and vae.spec["kwargs"]["hidden"] == [150]
    assert vae.likelihood == "bernoulli"
    assert generative.create("vae", dataset="ring8").likelihood == "gaussian"
    assert generative.create("wgan-gp", dataset="mnist").spec["kwargs"]["arch"] == "conv"
    assert generative.create("wgan-gp", dataset="grid25").spec["kwargs"]["arch"] == "mlp"
    # DCGAN: 7x7 -> 14 -> 28 for MNIST, 4 -> 8 -> 16 -> 32 for CIFAR-10
    dc = generative.create("dcgan", dataset="cifar10")
    convs = [m for m in dc.generator if isinstance(m, nn.ConvTranspose2d)]
    assert len(convs) == 3
    assert any(isinstance(m, nn.BatchNorm2d) for m in dc.critic)
    wg = generative.create("wgan-gp", dataset="mnist")
    assert not any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in wg.critic.modules())



def test_dcgan_spectral_discriminator_has_unit_spectral_norms_and_round_trips():
    torch.manual_seed(0)
    dc = generative.create("dcgan", dataset="digits", width=8, latent_dim=4, d_norm="spectral")
    assert dc.spec["kwargs"]["d_norm"] == "spectral"
    assert not any(isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in dc.critic.modules())
    layers = [m for m in dc.critic.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 3
    x = torch.rand(16, 1, 8, 8)
    dc.train()
    for _ in range(50):  # power iterations run in training forwards
        dc.score(x)
    for m in layers:  # Miyato et al. normalize the weight reshaped to (out, in * k * k)
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=1e-3)
    # the power-iteration vectors are state: a rebuilt model scores identically
    clone = generative.from_spec(dc.spec)
    clone.load_state_dict(dc.state_dict())
    dc.eval(), clone.eval()
    assert torch.equal(clone.score(x), dc.score(x))
    plain = generative.create("dcgan", dataset="digits", width=8, d_norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.critic.modules())
    with pytest.raises(ValueError, match=r"d_norm in \('batch', 'spectral', 'none'\)"):
        generative.create("dcgan", dataset="digits", d_norm="layer")



@pytest.mark.parametrize("ds,side", [("mnist", 28), ("cifar10", 32), ("digits", 8)])
def test_dcgan_depth_adds_stride_one_layers_at_every_resolution(ds, side):
    base = generative.create("dcgan", dataset=ds, width=8, latent_dim=4)
    deep = generative.create("dcgan", dataset=ds, width=8, latent_dim=4, depth=3)
    assert deep.spec["kwargs"]["depth"] == 3

    def stride_one(net):
        return [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.stride == (1, 1)]

    stages = 3 if side == 32 else 2
    assert not stride_one(base.generator) and not stride_one(base.critic)
    # two 3x3 layers per resolution: generator at H/2^stages ... H/2, critic at H/2 ... end
    assert len(stride_one(deep.generator)) == 2 * stages
    assert len(stride_one(deep.critic)) == 2 * stages
    assert all(m.kernel_size == (3, 3) for m in stride_one(deep.critic))
    deep.eval()
    x = deep.sample(5)
    assert x.shape == (5, *base.data_shape) and 0 <= x.min() and x.max() <= 1
    assert deep.score(x).shape == (5,)
    with pytest.raises(ValueError, match="depth .* int >= 1, got 0"):
        generative.create("dcgan", dataset=ds, depth=0)


# -- the ELBO, the IW bound and the KL on cases computed by hand -----------------------------


def _tiny_vae(likelihood: str, in_shape, enc, dec) -> VAE:
    """A 1-feature, 1-latent VAE without hidden layers: mu, logvar = W x + b; out = w z + v."""
    vae = generative.create("vae", in_shape=in_shape, latent_dim=1, hidden=(),
                            likelihood=likelihood)
    lin_e, lin_d = vae.encoder[1][0], vae.decoder[0]
    with torch.no_grad():
        lin_e.weight.copy_(torch.tensor([[enc[0]], [enc[1]]]))
        lin_e.bias.copy_(torch.tensor([enc[2], enc[3]]))
        lin_d.weight.copy_(torch.tensor([[dec[0]]]))
        lin_d.bias.copy_(torch.tensor([dec[1]]))
    return vae


def test_elbo_equals_hand_computed_value_bernoulli():
    vae = _tiny_vae("bernoulli", (1, 1, 1), enc=(0.5, -1.0, 0.2, 0.3), dec=(1.5, -0.4))
    x = torch.tensor([0.25, 0.9]).reshape(2, 1, 1, 1)
    eps = torch.randn(2, 1, generator=torch.Generator().manual_seed(7))
    got = vae.elbo(x, generator=torch.Generator().manual_seed(7))
    for i, xi in enumerate((0.25, 0.9)):
        mu, logvar = 0.5 * xi + 0.2, -1.0 * xi + 0.3
        z = mu + math.exp(logvar / 2) * eps[i, 0].item()
        logit = 1.5 * z - 0.4
        p = 1 / (1 + math.exp(-logit))
        rec = xi * math.log(p) + (1 - xi) * math.log(1 - p)
        kl = 0.5 * (mu ** 2 + math.exp(logvar) - 1 - logvar)
        assert got[i].item() == pytest.approx(rec - kl, abs=1e-5)


def test_exact_posterior_gives_log_evidence_linear_gaussian():
    """x = w z + v + N(0, s2), z ~ N(0, 1): p(x) = N(v, w^2 + s2). With q(z|x) the exact
    posterior every importance weight equals p(x), so the IW bound is log p(x) for any k and
    draw, and the ELBO (analytic KL) averages to it."""
    w, v, s2 = 1.3, 0.2, 0.25
    post_var = s2 / (w * w + s2)
    # posterior mean = w (x - v) / (w^2 + s2) = a x + c
    a, c = w / (w * w + s2), -w * v / (w * w + s2)
    vae = _tiny_vae("gaussian", (1,), enc=(a, 0.0, c, math.log(post_var)), dec=(w, v))
    with torch.no_grad():
        vae.obs_logvar.fill_(math.log(s2))
    x = torch.tensor([[-1.0], [0.3], [2.0]])
    var = w * w + s2
    log_px = -0.5 * ((x[:, 0] - v) ** 2 / var + math.log(2 * math.pi * var))
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(vae.iw_bound(x, k=1, generator=g), log_px, atol=1e-5)
    assert torch.allclose(vae.iw_bound(x, k=50, generator=g), log_px, atol=1e-5)
    elbo = vae.elbo(x.repeat(4000, 1), generator=g).reshape(4000, 3).mean(0)
    assert torch.allclose(elbo.double(), log_px.double(), atol=0.05)


def test_iw_bound_is_between_elbo_and_evidence():
    """A mismatched posterior: ELBO (mean) <= IW_k <= IW_{k'} <= log p(x) for k < k'."""
    w, v, s2 = 1.3, 0.2, 0.25
    vae = _tiny_vae("gaussian", (1,), enc=(0.2, 0.0, 0.1, -2.0), dec=(w, v))
    with torch.no_grad():
        vae.obs_logvar.fill_(math.log(s2))
    x = torch.tensor([[1.5]])
    var = w * w + s2
    log_px = -0.5 * ((1.5 - v) ** 2 / var + math.log(2 * math.pi * var))
    g = torch.Generator().manual_seed(0)
    elbo = vae.elbo(x.repeat(2000, 1), generator=g).mean().item()
    iw5 = vae.iw_bound(x.repeat(400, 1), k=5, generator=g).mean().item()
    iw500 = vae.iw_bound(x.repeat(40, 1), k=500, generator=g, chunk=500).mean().item()
    assert elbo < iw5 < iw500 <= log_px + 1e-3
    assert log_px - iw500 < 0.25 * (log_px - elbo)


def test_kl_is_analytic():
    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    logvar = torch.tensor([[0.0, 0.0], [math.log(4.0), math.log(0.25)]])
    expected = torch.tensor([0.5, 0.5 * (4 + 4 - 1 - math.log(4)) + 0.5 * (1 + 0.25 - 1
                                                                          - math.log(0.25))])
    assert torch.allclose(VAE.kl(mu, logvar), expected)


# -- the gradient penalty and the losses --------------------------------------------------


def test_gradient_penalty_exact_on_linear_critic():
    torch.manual_seed(0)
    w = torch.tensor([0.6, -1.2, 2.0, 0.3], requires_grad=True)

    def critic(x):  # (B, 1, 2, 2) -> (B,), gradient w everywhere
        return x.flatten(1) @ w + 0.7

    real, fake = torch.rand(5, 1, 2, 2), torch.rand(5, 1, 2, 2)
    gp = gradient_penalty(critic, real, fake, weight=10.0)
    norm = w.detach().norm().item()
    assert gp.item() == pytest.approx(10.0 * (norm - 1) ** 2, rel=1e-6)
    # it is differentiable in the critic's parameters: d/dw = 2 lambda (||w|| - 1) w / ||w||
    gp.backward()
    expected = 2 * 10.0 * (norm - 1) * w.detach() / norm
    assert torch.allclose(w.grad, expected, rtol=1e-5)
    per = gradient_penalty(critic, real, fake, weight=2.0, reduction="none")
    assert per.shape == (5,) and torch.allclose(per, torch.full((5,), 2.0 * (norm - 1) ** 2))


def test_gradient_penalty_evaluates_at_the_interpolates():
    """critic(x) = ||x||^2 / 2 has gradient x: the penalty is lambda (||x_hat|| - 1)^2 at
    x_hat = alpha real + (1 - alpha) fake."""
    real = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    fake = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    alpha = torch.tensor([0.5, 0.25])
    per = gradient_penalty(lambda x: 0.5 * x.pow(2).sum(1), real, fake, weight=10.0,
                           alpha=alpha, reduction="none")
    # x_hat = (2, 0) and (0, 0.25)
    assert torch.allclose(per, torch.tensor([10.0 * 1.0, 10.0 * 0.75 ** 2]))


def test_gan_losses_match_their_definitions():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    d = torch.sigmoid(logits)
    assert torch.allclose(generator_loss(logits, "minimax"), torch.log(1 - d).mean())
    assert torch.allclose(generator_loss(logits, "non-saturating"), -torch.log(d).mean())
    assert torch.allclose(generator_loss(logits, "wasserstein"), -logits.mean())
    real = torch.tensor([1.0, 2.0])
    expected = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - d).mean())
    assert torch.allclose(discriminator_loss(real, logits), expected)
    # one-sided label smoothing: the real examples' target is 0.9, the fakes' stays 0
    dr = torch.sigmoid(real)
    smoothed = -(0.9 * torch.log(dr) + 0.1 * torch.log(1 - dr)).mean() - torch.log(1 - d).mean()
    assert torch.allclose(discriminator_loss(real, logits, real_label=0.9), smoothed)
    with pytest.raises(ValueError, match="real_label"):
        discriminator_loss(real, logits, real_label=0.3)
    with pytest.raises(ValueError, match="generator loss"):
        generator_loss(logits, "hinge")


# -- projection ------------------------------------------------------------------------------


def _fixed_generator(seed: int = 0):
    torch.manual_seed(seed)
    return generative.create("gan", in_shape=(6,), latent_dim=2, hidden=(16,)).eval()


def test_project_recovers_codes_of_samples():
    model = _fixed_generator()
    z_true = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = model.decode(z_true)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    z, x_hat = model.project(x, steps=300, lr=0.05, restarts=6,
                             generator=torch.Generator().manual_seed(4))
    assert z.shape == (16, 2) and x_hat.shape == x.shape
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    err = (x_hat - x).norm(dim=1)
    assert err.max() < 1e-3 * (1 + x.norm(dim=1).max())
    assert (z - z_true).norm(dim=1).max() < 0.02
    assert torch.allclose(x_hat, model.decode(z).detach())
    with torch.no_grad():  # a caller without gradients (an eval loop) gets the same answer
        z2, _ = model.project(x, steps=300, lr=0.05, restarts=6,
                              generator=torch.Generator().manual_seed(4))
    assert torch.equal(z2, z)


def test_project_keeps_the_best_restart_per_example():
    model = _fixed_generator()
    z_true = torch.tensor([[0.5, -0.5], [1.0, 1.0]])
    with torch.no_grad():
        x = model.decode(z_true)
    # restart 0 starts at the answer for example 0 only, restart 1 for example 1 only
    far = torch.full((2,), 3.0)
    z_init = torch.stack([torch.stack([z_true[0], far]), torch.stack([far, z_true[1]])])
    z, _ = model.project(x, steps=0, restarts=2, z_init=z_init)
    assert torch.equal(z, z_true)


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_project_other_norms_reduce_the_distance(norm):
    model = _fixed_generator()
    x = torch.randn(8, 6)
    g = torch.Generator().manual_seed(0)
    z0 = model.prior_sample(8, g)
    start = generative.distance(x, model.decode(z0).detach(), norm)
    _, x_hat = model.project(x, steps=100, restarts=1, norm=norm, z_init=z0[None])
    assert (generative.distance(x, x_hat, norm) <= start + 1e-6).all()


# -- bad input --------------------------------------------------------------------------------


def test_unknown_names_and_keywords():
    with pytest.raises(ValueError, match="unknown generative model 'vea'.*Did you mean 'vae'"):
        generative.create("vea", dataset="mnist")
    with pytest.raises(ValueError, match="unknown keyword.*depth.*valid"):
        generative.create("vae", dataset="mnist", depth=3)
    with pytest.raises(ValueError, match="unknown dataset"):
        generative.create("vae", dataset="mnits")
    with pytest.raises(ValueError, match="arch in"):
        generative.create("vae", dataset="mnist", arch="transformer")
    with pytest.raises(ValueError, match="likelihood"):
        generative.create("vae", dataset="mnist", likelihood="poisson")
    with pytest.raises(ValueError, match="divisible by 4"):
        generative.create("dcgan", in_shape=(1, 10, 10))
    with pytest.raises(ValueError, match="dataset name or in_shape"):
        generative.create("vae")


def test_wrong_shapes_are_refused():
    vae = generative.create("vae", dataset="digits")
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 1, 8, 8\), got \(2, 64\)"):
        vae.encode(torch.rand(2, 64))
    with pytest.raises(ValueError, match=r"latent codes of shape \(B, 32\)"):
        vae.decode(torch.randn(2, 16))
    with pytest.raises(ValueError, match="shape"):
        vae.project(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="norm"):
        vae.project(torch.rand(2, 1, 8, 8), norm="l3")
    with pytest.raises(ValueError, match="restarts"):
        vae.project(torch.rand(2, 1, 8, 8), restarts=0)
    with pytest.raises(ValueError, match="positive number of samples"):
        vae.sample(0)
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(lambda x: x.sum(1), torch.rand(2, 3), torch.rand(3, 3))


BAD_PIXELS = [
    ("nan", lambda x: torch.where(x > 0.5, torch.nan, x), r"expected finite x, got \d+ NaN or inf"),
    ("inf", lambda x: torch.where(x > 0.5, torch.inf, x), r"expected finite x, got \d+ NaN or inf"),
    ("x255", lambda x: x * 255,
     r"expected x inside \[0, 1\] \(pixels.*got values in \[\d.*, 2\d\d.*\]"),
    ("negative", lambda x: x - 0.5, r"expected x inside \[0, 1\].*got values in \[-0\.\d+"),
    ("uint8", lambda x: (x * 255).to(torch.uint8),
     r"expected x to be a floating-point tensor in \[0, 1\], got torch\.uint8.*divide by 255"),
    ("int64", lambda x: (x > 0.5).long(),
     r"expected x to be a floating-point tensor in \[0, 1\], got torch\.int64"),
]


@pytest.mark.parametrize("name", ["ae", "vae", "gan"])
@pytest.mark.parametrize("bad,message", [b[1:] for b in BAD_PIXELS],
                         ids=[b[0] for b in BAD_PIXELS])
def test_bad_pixel_values_are_refused_by_encode_and_project(name, bad, message):
    model = generative.create(name, dataset="digits")
    x = bad(_data("digits"))
    calls = [lambda: model.project(x, steps=0, restarts=1)]
    if isinstance(model, Autoencoder):
        calls += [lambda: model.encode(x), lambda: model.reconstruct(x), lambda: model.loss(x)]
    if isinstance(model, VAE):
        calls += [lambda: model.elbo(x), lambda: model.iw_bound(x, k=2)]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


def test_point_models_take_unbounded_values_but_refuse_nan_and_integers():
    vae = generative.create("vae", dataset="ring8")
    x = 5 * _data("ring8")  # far outside [0, 1]: points are not pixels
    assert x.abs().max() > 1
    assert vae.encode(x).shape == (B, vae.latent_dim)
    with pytest.raises(ValueError, match=r"expected finite x, got 1 NaN or inf values"):
        vae.encode(torch.where(x == x.max(), torch.nan, x))
    with pytest.raises(ValueError, match=r"expected x to be a floating-point tensor, got "
                                         r"torch\.int64$"):
        vae.project(x.long())


def test_weights_round_trip_and_other_architecture_refused(tmp_path):
    torch.manual_seed(0)
    model = generative.create("vae", dataset="digits", latent_dim=8)
    path = generative.save_generative(tmp_path / "a", model)
    loaded = generative.load_generative(tmp_path / "a")
    z = torch.randn(3, 8)
    assert torch.equal(loaded.decode(z), model.eval().decode(z))
    assert loaded.spec == model.spec
    other = generative.create("vae", dataset="digits", latent_dim=16)
    from advlab.generative.weights import load_checked
    from advlab.io import load_state

    with pytest.raises(ValueError, match="another architecture"):
        load_checked(other, load_state(path)["model"], path)
    from advlab import models
    from advlab.weights import save_model

    save_model(tmp_path / "clf", models.create("mlp", dataset="digits"))
    with pytest.raises(ValueError, match="kind 'advlab-generative-model', got 'advlab-model'"):
        generative.load_generative(tmp_path / "clf")
    with pytest.raises(FileNotFoundError):
        generative.load_generative(tmp_path / "missing")
