"""The settings of each sampler family, the one place where their defaults live (the flow's
PriorRef and the CLI's flags take their defaults from here). torch-free, so the config and
the CLI import it without loading torch.

``nfe`` always means network evaluations (diffusion steps) per slice.
"""

from __future__ import annotations

from dataclasses import dataclass

# DDS's noise mixing where a run does not set it, chosen on training slices (IXI for MRI,
# the pulmonary and aorta CT volumes): one sample is best at 1.0 (DDS +0.2-0.4 dB over
# 0.85, dds-tv +0.03-0.2); the mean of K > 1 samples (K = 8, --branch-steps 14) at 0.85
# (MRI DDS level with 1.0, CT DDS +0.16-0.19 dB over it), the value the shipped error
# model and calibration factors were fitted with
ETA_ONE_SAMPLE = 1.0
ETA_SAMPLES = 0.85


def sampler_eta(eta: float | None, samples: int) -> float:
    """The eta a run of ``samples`` samples per slice uses: ``eta`` where set, else
    ETA_ONE_SAMPLE for one sample and ETA_SAMPLES for several."""
    if eta is not None:
        return eta
    return ETA_ONE_SAMPLE if samples == 1 else ETA_SAMPLES


@dataclass
class DDSConfig:
    nfe: int = 50
    eta: float | None = None  # None: sampler_eta's default for the run's number of samples
    cg_iters: int = 5
    gamma: float | None = None  # None: noiseless data consistency
    clip: bool = True  # clip Tweedie's x0 to the model's range [-1, 1]
    seed: int = 0
    scale_factor: float = 1.0  # MRI: multiplies the estimated per-slice image scale
    # K > 1 samples (run.draw_samples): 0 draws each sample's whole trajectory; n > 0 shares
    # the first nfe - n steps among the K samples and draws only the last n per sample
    # (network work per slice nfe - n + K n instead of K nfe; dds and dds-tv)
    branch_steps: int = 0


@dataclass
class DDSTVConfig(DDSConfig):
    """dds-tv: DDS whose data consistency is ``tv_iters`` ADMM iterations of the in-plane
    TV-regularised problem, min 0.5 ||A x - y||^2 + tv_lam TV(x), started at Tweedie's
    estimate (z and u carried over from the previous step with ``tv_carry``, else
    z = D x0, u = 0). The weight is in the units the classical ADMM-TV uses (MRI:
    k-space scaled to max |y| = 1; CT: data units), so the flow passes the modality's
    ADMM-TV weight; 0 is plain DDS. ADMM's rho is 10 tv_lam, as in ADMM-TV."""

    tv_lam: float = 0.0
    tv_iters: int = 4  # chosen on IXI training slices (benchmarks/tune_dds_tv.py)
    # carry ADMM's z and u from one diffusion step to the next (as dds-3d-tv does along z):
    # the steps together make one long ADMM run whose x restarts at each Tweedie estimate
    tv_carry: bool = True


@dataclass
class DPSConfig:
    steps: int = 1000
    step_size: float = 1.0  # zeta: the step is zeta / ||y - A x0_hat|| (DPS paper)
    eta: float = 1.0  # 1: DDPM ancestral sampling; 0: DDIM
    clip: bool = True
    seed: int = 0
    scale_factor: float = 1.0


@dataclass
class DDS3DConfig(DDSConfig):
    lam: float = 0.04  # TV along z (DDS's CT default for 8 views); 0 with rho 0: no TV
    rho: float = 10.0
    slice_batch: int = 32  # slices per network call
    pattern: str = "AAB"  # perpendicular priors: A primary, B auxiliary, per diffusion step
    # MRI: the object is known to be real (a magnitude volume, e.g. z super-resolution of
    # reconstructed images): Tweedie's estimate keeps its real part before data consistency.
    # The complex priors learnt random smooth phases, which data with a large null space
    # (z-SR, 3D Cartesian) do not remove: on B4 their imaginary parts dominated the error.
    real: bool = False
