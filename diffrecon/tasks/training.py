"""Prefect task around recon.diffusion.training: progress artifact, card artifact, resume."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.cache_policies import NO_CACHE

if TYPE_CHECKING:
    from diffrecon.recon.diffusion.training import TrainConfig


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, tags=["gpu"],
      task_run_name="train-{cfg.name}")
def train_task(files: list[str], cfg: TrainConfig, out_dir: str, work_dir: str, device: str,
               val_fraction: float) -> dict:
    """Slice the volumes, train (resuming from work_dir after a crash or a retry)."""
    from pathlib import Path

    import torch

    from diffrecon.io.training_slices import load_slices, split_by_volume
    from diffrecon.recon.diffusion.training import train
    from diffrecon.tasks.common import resolve_device

    log = get_run_logger()
    paths = [Path(f) for f in files]
    train_files, val_files = split_by_volume(paths, val_fraction)
    train_set = load_slices(train_files, cfg.modality, cfg.orientation, *cfg.storage())
    val_set = load_slices(val_files, cfg.modality, cfg.orientation, *cfg.storage())
    log.info("%d training slices from %d volumes, %d validation slices from %d volumes",
             len(train_set.images), len(train_files), len(val_set.images), len(val_files))
    progress_id = create_progress_artifact(progress=0.0, key=None,
                                           description=f"training {cfg.name}")

    def report(step: int, total: int, loss: float) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(progress_id, progress=100.0 * step / total)
        log.info("step %d/%d loss %.4f", step, total, loss)

    dev = resolve_device(device)
    torch.set_float32_matmul_precision("high")
    result = train(train_set, val_set, cfg, out_dir, work_dir, device=dev, callback=report)
    card = (Path(out_dir) / "card.md").read_text()
    create_markdown_artifact(markdown=card.replace("![samples](samples.png)", ""),
                             key=None, description=f"card of {cfg.name}")
    return {"step": result.step, "val_loss": result.val_loss, "seconds": result.seconds,
            "images_per_second": result.images_per_second, "prior": result.prior_path,
            "samples": result.samples_png, "hardware": result.hardware,
            "final_loss": sum(result.losses[-100:]) / max(1, len(result.losses[-100:]))}
