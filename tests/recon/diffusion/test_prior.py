from __future__ import annotations

import pytest
import torch

from diffrecon.recon.diffusion.networks import EpsNetwork
from diffrecon.recon.diffusion.prior import Prior, hu_to_unit, unit_to_hu
from diffrecon.recon.diffusion.schedule import VPSchedule
from tests.recon.diffusion.test_checkpoint import tiny_config


class FixedEps(torch.nn.Module):
    """A 'network' that returns a given noise tensor, to check Tweedie's formula."""

    def __init__(self, e):
        super().__init__()
        self.e = e

    def forward(self, x, t):
        return self.e


def test_schedule_values():
    s = VPSchedule()
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=0.01)
    ts = s.sampling_timesteps(50)
    assert ts[0] == 980 and ts[-1] == 0 and len(ts) == 50
    with pytest.raises(ValueError):
        s.sampling_timesteps(0)


def test_tweedie_recovers_x0_when_eps_is_exact():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 8, 8, generator=g)
    e = torch.randn(4, 2, 8, 8, generator=g)
    cfg = tiny_config()
    prior = Prior(EpsNetwork(FixedEps(e), "test", 2), cfg)
    t = torch.tensor([0, 250, 600, 999])
    x_t = prior.schedule.q_sample(x0, t, e)
    eps, x0_hat = prior.predict(x_t, t)
    assert torch.equal(eps, e)
    assert torch.allclose(x0_hat, x0, atol=1e-3)
    assert prior.evaluations == 4


def test_model_space_roundtrip():
    prior = Prior(EpsNetwork(FixedEps(None), "test", 2), tiny_config())
    x = torch.randn(3, 8, 8, dtype=torch.complex64)
    scale = torch.tensor([1.0, 2.0, 4.0])
    z = prior.to_model_space(x, scale)
    assert z.shape == (3, 2, 8, 8)
    assert torch.allclose(z[1, 0], x[1].real / 2)
    assert torch.allclose(prior.from_model_space(z, scale), x)
    ct = Prior(EpsNetwork(FixedEps(None), "test", 1), tiny_config(modality="ct"))
    u = torch.rand(2, 8, 8)
    zc = ct.to_model_space(u)
    assert zc.shape == (2, 1, 8, 8) and zc.min() >= -1 and zc.max() <= 1
    assert torch.allclose(ct.from_model_space(zc), u)
    hu = torch.tensor([-2000.0, -1000.0, 0.0, 1000.0, 3000.0])
    assert torch.allclose(hu_to_unit(hu), torch.tensor([0, 0, 0.5, 1, 1]))
    assert torch.allclose(unit_to_hu(hu_to_unit(hu[1:4])), hu[1:4])


def test_compiled_prior_predicts_the_same_noise(monkeypatch):
    """``compile=True`` (the CLI's --compile) puts the shipped network through torch.compile
    and its noise prediction is unchanged. Inductor needs minutes of C++ builds on a CPU, so
    the test compiles with the aot_eager backend: TorchDynamo still traces the network."""
    from diffrecon.recon.diffusion.registry import resolve_prior

    real_compile, calls = torch.compile, []

    def recording_compile(model, **kw):
        calls.append(model)
        return real_compile(model, backend="aot_eager", **kw)

    monkeypatch.setattr(torch, "compile", recording_compile)
    torch._dynamo.reset()
    plain = resolve_prior("brain-t1-axial-128")
    fast = resolve_prior("brain-t1-axial-128", compile=True)
    assert len(calls) == 1 and fast.net._orig_mod is calls[0]
    x = torch.randn(3, 2, 128, 128, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 400, 900])
    e_plain, e_fast = plain.eps(x, t), fast.eps(x, t)
    assert torch.allclose(e_fast, e_plain, atol=1e-5)
    assert fast.evaluations == 3
    torch._dynamo.reset()


class GaussianOptimal(torch.nn.Module):
    """The exact minimiser of the training loss for data x_0 ~ N(0, s^2 I): E[eps | x_t] or
    E[v | x_t] in closed form."""

    def __init__(self, prediction, schedule, s):
        super().__init__()
        self.prediction, self.schedule, self.s = prediction, schedule, s

    def forward(self, x, t):
        a = self.schedule.abar(t, x)
        den = a * self.s ** 2 + 1 - a
        eps, x0 = (1 - a).sqrt() * x / den, a.sqrt() * self.s ** 2 * x / den
        return eps if self.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_each_parameterisation_gives_the_gaussian_posterior_mean(prediction):
    s, sched = 0.5, VPSchedule()
    cfg = tiny_config().model_copy(update={"prediction": prediction})
    prior = Prior(EpsNetwork(GaussianOptimal(prediction, sched, s), "test", 2), cfg)
    x_t = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 250, 600, 999])
    a = sched.abar(t, x_t)
    eps, x0_hat = prior.predict(x_t, t)
    den = a * s ** 2 + 1 - a
    assert torch.allclose(eps, (1 - a).sqrt() * x_t / den, atol=1e-5)
    assert torch.allclose(x0_hat, a.sqrt() * s ** 2 * x_t / den, atol=2e-4)


def test_training_targets_and_min_snr_weights():
    g = torch.Generator().manual_seed(2)
    sched = VPSchedule()
    x0, e = torch.randn(4, 2, 8, 8, generator=g), torch.randn(4, 2, 8, 8, generator=g)
    t = torch.tensor([0, 250, 600, 999])
    x_t, a = sched.q_sample(x0, t, e), sched.abar(t, x0)
    assert torch.equal(sched.target("epsilon", x_t, t, e), e)
    v = sched.target("v", x_t, t, e)
    assert torch.allclose(v, a.sqrt() * e - (1 - a).sqrt() * x0, atol=5e-4)
    assert torch.allclose(sched.to_epsilon("v", v, x_t, t), e, atol=1e-4)
    # min-SNR weights put the same weight on the implied x_0 error for both targets
    snr = (a / (1 - a)).flatten()
    w_eps, w_v = sched.loss_weight("epsilon", t, 5.0), sched.loss_weight("v", t, 5.0)
    # an x_0 error d is an epsilon error sqrt(snr) d and a v error d / sqrt(1 - a)
    assert torch.allclose(w_eps * snr, snr.clamp(max=5.0), rtol=1e-5)
    assert torch.allclose(w_v * (snr + 1), snr.clamp(max=5.0), rtol=1e-5)
    assert torch.equal(sched.loss_weight("v", t, None), torch.ones(4))
    with pytest.raises(ValueError, match="unknown prediction 'x0'"):
        sched.target("x0", x_t, t, e)
