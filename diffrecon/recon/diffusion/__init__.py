"""Diffusion priors: schedules, networks, checkpoints, samplers and training."""
