"""The training flow: volumes in, a checkpoint folder (weights, card, samples) out."""

from __future__ import annotations

from prefect import flow

from diffrecon.io.training_slices import volume_files
from diffrecon.recon.diffusion.training import TrainConfig
from diffrecon.tasks.training import train_task

__all__ = ["TrainConfig", "train_prior", "volume_files"]


@flow(name="train-prior")
def train_prior(files: list[str], cfg: TrainConfig, out_dir: str, work_dir: str,
                device: str = "auto", val_fraction: float = 0.1) -> dict:
    """Train a prior on NIfTI volumes (validation split by volume); resumable."""
    return train_task(files, cfg, out_dir, work_dir, device, val_fraction)
