from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch

from diffrecon.io.training_slices import (
    load_slices,
    split_by_volume,
    volume_files,
    volume_slices,
)
from diffrecon.recon.diffusion.checkpoint import load_prior
from diffrecon.recon.diffusion.schedule import VPSchedule
from diffrecon.recon.diffusion.training import TrainConfig, make_batch, train


def write_volumes(folder, n=3, shape=(24, 28, 20), seed=0):
    """Blobby synthetic head-like volumes (2 mm, RAS) as NIfTI files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    for i in range(n):
        c = rng.uniform(-0.2, 0.2, 3)
        vol = ((x - c[0]) ** 2 / 0.5 + (y - c[1]) ** 2 / 0.6 + (z - c[2]) ** 2 / 0.7 < 1)
        vol = vol * (100 + 50 * np.sin(6 * x + i))
        nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([2, 2, 2, 1.0])),
                 str(folder / f"vol{i:02d}.nii.gz"))
    return folder


def tiny_cfg(**kw):
    base = dict(name="tiny", modality="mri", size=16, steps=8, batch_size=4, lr=2e-3,
                warmup=1, checkpoint_every=4, n_samples=2, sample_steps=2, base_channels=8,
                channel_mult=(1, 2), attention=(False, True), weights_dtype="float32")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def slices(tmp_path):
    files = volume_files([write_volumes(tmp_path / "vols")])
    tr, va = split_by_volume(files, 0.34)
    assert [f.name for f in va] == ["vol02.nii.gz"]
    return (load_slices(tr, "mri", "axial", 16), load_slices(va, "mri", "axial", 16))


def test_slices_follow_the_benchmark_layout(tmp_path):
    folder = write_volumes(tmp_path / "v", n=1, shape=(10, 12, 14))
    vol = nib.load(str(folder / "vol00.nii.gz")).get_fdata()
    s = volume_slices(folder / "vol00.nii.gz", "mri", "axial", 16, min_fraction=-1.0)
    # axial slice z: flipud(vol[:, :, z].T), padded centrally from 12 x 10 to 16 x 16
    z = 7
    expected = np.pad(np.flipud(vol[:, :, z].T), ((2, 2), (3, 3)))
    assert np.allclose(s[z], expected / expected.max(), atol=1e-6)
    assert s.shape == (14, 16, 16)
    cor = volume_slices(folder / "vol00.nii.gz", "mri", "coronal", 16, min_fraction=-1.0)
    assert cor.shape == (12, 16, 16)


def test_batches_are_a_function_of_seed_and_step(slices):
    cfg = tiny_cfg()
    s = VPSchedule()
    a = make_batch(slices[0].images, 5, cfg, s)
    b = make_batch(slices[0].images, 5, cfg, s)
    c = make_batch(slices[0].images, 6, cfg, s)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (4, 2, 16, 16)


def test_loss_decreases_and_checkpoint_loads(slices, tmp_path):
    cfg = tiny_cfg(steps=60, checkpoint_every=60)
    r = train(*slices, cfg, tmp_path / "prior", tmp_path / "work")
    assert np.mean(r.losses[-10:]) < 0.8 * np.mean(r.losses[:10])
    assert r.val_loss is not None and r.val_loss < 1.0
    prior = load_prior(tmp_path / "prior")
    assert prior.config.orientation == "axial" and prior.channels == 2
    card = (tmp_path / "prior" / "card.md").read_text()
    assert "validation split by volume, 1 volumes" in card and "vol02.nii.gz" in card
    assert (tmp_path / "prior" / "samples.png").stat().st_size > 100
    assert len(list((tmp_path / "work" / "samples").glob("step_*.png"))) == 1


def test_resume_reproduces_the_uninterrupted_run(slices, tmp_path):
    cfg = tiny_cfg(steps=8, checkpoint_every=4)
    full = train(*slices, cfg, tmp_path / "a", tmp_path / "wa")

    class Crash(RuntimeError):
        pass

    def crash_at_6(step, total, loss):
        if step == 6:
            raise Crash

    with pytest.raises(Crash):
        train(*slices, replace(cfg, log_every=1), tmp_path / "b", tmp_path / "wb",
              callback=crash_at_6)
    resumed = train(*slices, replace(cfg, log_every=1), tmp_path / "b", tmp_path / "wb")
    assert resumed.losses == full.losses  # bit-exact loss curve
    a, b = load_prior(tmp_path / "a"), load_prior(tmp_path / "b")
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k])
    with pytest.raises(ValueError, match="different training configuration"):
        train(*slices, replace(cfg, lr=1e-3), tmp_path / "b", tmp_path / "wb")


def test_train_flow_and_cli(prefect_harness, tmp_path, capsys):
    from diffrecon.cli import main

    folder = write_volumes(tmp_path / "vols")
    out = tmp_path / "priors" / "tiny-ct"
    rc = main(["train", "--data", str(folder), "--modality", "ct", "--orientation", "coronal",
               "--size", "16", "--out", str(out), "--steps", "4", "--batch", "2",
               "--checkpoint-every", "2", "--base-channels", "8", "--samples", "2",
               "--sample-steps", "2", "--augment", "--data-licence", "synthetic"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "step 4:" in text and "images/s" in text
    prior = load_prior(out)
    assert prior.config.modality == "ct" and prior.config.orientation == "coronal"
    assert prior.config.pixel_mm == (2.0, 2.0)  # the training volumes' (for --grid pixel)
    assert "rotations" in (out / "card.md").read_text()
    assert (tmp_path / "priors" / ".tiny-ct.train" / "state.pt").exists()
    assert main(["prior", "list", "--dir", str(tmp_path / "priors")]) == 0
    listed = capsys.readouterr().out
    assert "tiny-ct" in listed and "coronal" in listed and "steps: 4, batch 2" in listed


def test_prefetched_batches_give_the_same_run(slices, tmp_path):
    """The GPU path (batches drawn ahead on a thread, losses read back every log_every
    steps) trains exactly as the plain loop: same loss curve, same weights."""
    cfg = tiny_cfg(steps=7, checkpoint_every=100, log_every=3)
    plain = train(*slices, cfg, tmp_path / "a", tmp_path / "wa", prefetch=False)
    ahead = train(*slices, cfg, tmp_path / "b", tmp_path / "wb", prefetch=True)
    assert len(ahead.losses) == 7 and ahead.losses == plain.losses
    a, b = load_prior(tmp_path / "a"), load_prior(tmp_path / "b")
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k])


def test_channels_last_training_learns_what_the_plain_layout_learns(slices, tmp_path):
    """channels_last (for GPUs) changes only the memory order: the same loss curve (to float
    rounding) and weights that load as a plain prior."""
    cfg = tiny_cfg(steps=5, checkpoint_every=100)
    plain = train(*slices, cfg, tmp_path / "a", tmp_path / "wa")
    cl = train(*slices, cfg, tmp_path / "b", tmp_path / "wb", channels_last=True)
    assert np.allclose(cl.losses, plain.losses, rtol=1e-4, atol=1e-6)
    # the weights differ by float rounding that Adam's first, sign-like steps magnify in
    # near-zero gradients; compare what the two priors predict
    a, b = load_prior(tmp_path / "a"), load_prior(tmp_path / "b")
    x = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 300, 900])
    with torch.no_grad():
        ea, eb = a.net(x, t), b.net(x, t)
    assert (ea - eb).norm() <= 1e-2 * ea.norm()


def test_pixel_range_stores_slices_at_twice_the_size_and_validates_at_its_upper_end(tmp_path):
    """2 mm volumes stored at 1 mm on a 32 x 32 grid: a 16 x 16 image at 2 mm (the range's
    upper end, where validation sits) covers the whole stored field of view."""
    from diffrecon.recon.diffusion.training import validation_images

    cfg = tiny_cfg(pixel_range=(1.0, 2.0))
    assert cfg.storage() == (32, 1.0)
    folder = write_volumes(tmp_path / "v", n=1)
    stored = volume_slices(folder / "vol00.nii.gz", "mri", "axial", 32, pixel_mm=1.0,
                           min_fraction=-1.0)
    native = volume_slices(folder / "vol00.nii.gz", "mri", "axial", 16, min_fraction=-1.0)
    assert stored.shape[1:] == (32, 32) and stored.shape[0] == native.shape[0]
    val = validation_images(torch.from_numpy(stored), cfg).numpy()
    assert val.shape == native.shape
    # resampled twice (up to 1 mm, back to 2 mm, linear): the native 2 mm slices, blurred by
    # the two resamplings (6 % mean error on these sharp-edged blobs) but not shifted: any
    # one-pixel shift is more than twice as far off
    err = np.abs(val - native).mean()
    assert err < 0.1 * native.mean()
    for shift in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        assert np.abs(np.roll(val, shift, (1, 2)) - native).mean() > 2 * err
    x_t, t, noise = make_batch(stored, 3, cfg, VPSchedule())
    assert x_t.shape == (cfg.batch_size, 2, 16, 16)


def test_init_from_needs_the_same_network(tmp_path, slices):
    out = tmp_path / "p"
    train(*slices, tiny_cfg(steps=2, checkpoint_every=2), out, tmp_path / "w")
    r = train(*slices, tiny_cfg(steps=2, checkpoint_every=2, init_from=str(out)),
              tmp_path / "q", tmp_path / "w2")
    assert r.step == 2
    with pytest.raises(ValueError, match="differs from the one being trained"):
        train(*slices, tiny_cfg(steps=2, base_channels=16, init_from=str(out)),
              tmp_path / "r", tmp_path / "w3")


def test_v_prediction_with_min_snr_trains_and_samples_as_epsilon(slices, tmp_path):
    cfg = tiny_cfg(steps=60, checkpoint_every=60, prediction="v", min_snr=5.0)
    r = train(*slices, cfg, tmp_path / "prior", tmp_path / "work")
    assert np.mean(r.losses[-10:]) < 0.8 * np.mean(r.losses[:10])
    # the validation loss is epsilon MSE whatever the network predicts: comparable
    assert r.val_loss is not None and r.val_loss < 1.0
    prior = load_prior(tmp_path / "prior")
    assert prior.config.prediction == "v"
    assert "- objective: v prediction, min-SNR-5 weights" in \
        (tmp_path / "prior" / "card.md").read_text()
    x_t, t = torch.randn(2, 2, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        raw = prior.net(x_t, t)
    a = prior.schedule.abar(t, x_t)
    assert torch.allclose(prior.eps(x_t, t), a.sqrt() * raw + (1 - a).sqrt() * x_t, atol=1e-5)


def test_jitter_flips_half_the_slices_and_bends_mri_contrast_by_a_gamma():
    """Each jittered axial MRI slice is the ramp or its left-right mirror raised to one gamma
    in [0.8, 1.25]; sagittal slices are never mirrored (their columns run front to back);
    CT slices are returned as they are."""
    from diffrecon.recon.diffusion.training import _jitter

    ramp = torch.linspace(0.05, 0.95, 16)[None, None].expand(64, 16, 16).clone()
    for orientation in ("axial", "sagittal"):
        out = _jitter(ramp, torch.Generator().manual_seed(1), "mri", orientation)
        flipped = 0
        for s in range(64):
            row = out[s, 0]
            mirrored = bool(row[0] > row[-1])
            flipped += mirrored
            src = ramp[s, 0].flip(0) if mirrored else ramp[s, 0]
            g = torch.log(row) / torch.log(src)
            assert float(g.max() - g.min()) < 1e-4
            assert 0.8 - 1e-6 <= float(g.mean()) <= 1.25 + 1e-6
        assert (20 <= flipped <= 44) if orientation == "axial" else flipped == 0
    assert torch.equal(_jitter(ramp, torch.Generator().manual_seed(1), "ct", "axial"), ramp)
    data = torch.rand(6, 16, 16)
    a, b = (make_batch(data, 3, tiny_cfg(jitter=True), VPSchedule()) for _ in range(2))
    plain = make_batch(data, 3, tiny_cfg(), VPSchedule())
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # a function of (data, seed, step)
    assert not torch.equal(a[0], plain[0])


def test_slices_record_the_pixel_sizes_they_have(tmp_path):
    """A coronal slice of a 1 x 2 x 3 mm volume stored with flipped axes has 3 mm rows
    (S) and 1 mm columns (R); resampled slices have the size they were resampled to."""
    from diffrecon.io.training_slices import inplane_spacing, load_slices

    vol = np.random.default_rng(0).random((10, 12, 14)).astype(np.float32) + 1
    nib.save(nib.Nifti1Image(vol, np.diag([-1.0, 2.0, 3.0, 1.0])), str(tmp_path / "v.nii.gz"))
    assert inplane_spacing(tmp_path / "v.nii.gz", "coronal") == (3.0, 1.0)
    assert inplane_spacing(tmp_path / "v.nii.gz", "axial") == (2.0, 1.0)
    assert load_slices([tmp_path / "v.nii.gz"], "mri", "axial", 16).pixel_mm == (1.0, 2.0)
    assert load_slices([tmp_path / "v.nii.gz"], "mri", "axial", 16,
                       pixel_mm=1.5).pixel_mm == (1.5, 1.5)


def test_patch_training_crops_slices_and_applies_the_network_to_whole_images(slices, tmp_path):
    """--patch 8 on 16 x 16 slices: a crop step holds (16 / 8)^2 = 4 times the batch, each
    crop an 8 x 8 window of one training slice; a whole-image step the batch as it is; both
    a function of (seed, step); the trained prior works on whole 16 x 16 images and its card
    says how it was trained; bad sizes and shares are refused with the reason."""
    from diffrecon.recon.diffusion.training import _patches

    data = torch.arange(6 * 16 * 16, dtype=torch.float32).reshape(6, 16, 16)
    crops, tops, lefts = _patches(data, data[:4], torch.Generator().manual_seed(0),
                                  tiny_cfg(patch=8, patch_full=0.0))
    assert crops.shape == (16, 8, 8)
    for c, t, l in zip(crops, tops, lefts):  # a window of one slice: its corner says which
        z, rest = divmod(int(c[0, 0]), 256)
        top, left = divmod(rest, 16)
        assert torch.equal(c, data[z, top:top + 8, left:left + 8]) and (t, l) == (top, left)
    whole, top, left = _patches(data, data[:4], torch.Generator().manual_seed(0),
                                tiny_cfg(patch=8, patch_full=0.999))
    assert torch.equal(whole, data[:4]) and top == left == 0
    cfg = tiny_cfg(patch=8, patch_full=0.5)
    shapes = {make_batch(slices[0].images, s, cfg, VPSchedule())[0].shape for s in range(12)}
    assert shapes == {(16, 2, 8, 8), (4, 2, 16, 16)}
    a, b = (make_batch(slices[0].images, 3, cfg, VPSchedule()) for _ in range(2))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    r = train(*slices, tiny_cfg(patch=8, steps=8, checkpoint_every=8), tmp_path / "prior",
              tmp_path / "work")
    assert r.val_loss is not None and np.isfinite(r.val_loss)
    prior = load_prior(tmp_path / "prior")
    assert prior.config.image_size == 16
    assert "8 x 8 patches on 75 % of the steps" in (tmp_path / "prior" / "card.md").read_text()
    for bad, why in ((dict(patch=7), "a multiple of 2"), (dict(patch=16), "below the image"),
                     (dict(patch=8, patch_full=1.0), r"must be in \[0, 1\)")):
        with pytest.raises(ValueError, match=why):
            tiny_cfg(**bad)


def test_position_channels_say_where_each_pixel_of_a_crop_lies():
    """Positions are pixel centres across the whole image, -1..1: a 4-pixel image's rows
    sit at -0.75, -0.25, 0.25, 0.75; a 4 x 4 crop from row 2, column 4 of an 8 x 8 image
    gets that image's positions; padding continues the line."""
    from diffrecon.recon.diffusion.networks import position_channels

    whole = position_channels(1, 4, 4)
    assert torch.allclose(whole[0, 0, :, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(whole[0, 1, 2], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    crop = position_channels(2, 4, 4, torch.tensor([2, 0]), torch.tensor([4, 0]), (8, 8))
    full = position_channels(1, 8, 8)[0]
    assert torch.equal(crop[0], full[:, 2:6, 4:8]) and torch.equal(crop[1], full[:, :4, :4])
    padded = position_channels(1, 6, 6, -1, -1, (4, 4))
    assert torch.allclose(padded[0, 0, :, 0], torch.tensor([-1.25, -0.75, -0.25, 0.25, 0.75,
                                                            1.25]))


def test_patch_training_with_positions(slices, tmp_path):
    """--positions: every batch carries the crop's (or the whole image's) positions as two
    channels after the image's; the trained prior records it, gets its positions from Prior
    at any size (padding excluded), and a prior without positions starts one with them at
    exactly its own function (zero weights for the new channels)."""
    from diffrecon.recon.diffusion.networks import position_channels

    cfg = tiny_cfg(patch=8, patch_full=0.5, positions=True)
    seen = set()
    for step in range(12):
        x_t, t, noise = make_batch(slices[0].images, step, cfg, VPSchedule())
        assert x_t.shape[1] == 4 and noise.shape[1] == 2
        pos = x_t[:, 2:]
        side = x_t.shape[-1]
        seen.add(side)
        tops = ((pos[:, 0, 0, 0] + 1) * 16 - 1) / 2  # the first pixel's row in the image
        lefts = ((pos[:, 1, 0, 0] + 1) * 16 - 1) / 2
        assert torch.allclose(tops, tops.round(), atol=1e-5)
        assert int(tops.min()) >= 0 and int(tops.max()) <= 16 - side
        assert torch.allclose(pos, position_channels(len(x_t), side, side, tops.round(),
                                                     lefts.round(), (16, 16)))
    assert seen == {8, 16}

    plain = tmp_path / "plain"
    train(*slices, tiny_cfg(steps=4, checkpoint_every=4), plain, tmp_path / "w0")
    r = train(*slices, replace(cfg, steps=0, init_from=str(plain)), tmp_path / "widened",
              tmp_path / "w1")
    assert r.step == 0
    a, b = load_prior(plain), load_prior(tmp_path / "widened")
    assert b.config.positions and b.config.network["in_channels"] == 4
    x, t = torch.randn(2, 2, 11, 11), torch.tensor([30, 700])
    assert torch.allclose(a.eps(x, t), b.eps(x, t), atol=1e-5)

    r = train(*slices, replace(cfg, steps=8, checkpoint_every=8), tmp_path / "prior",
              tmp_path / "w2")
    assert r.val_loss is not None and np.isfinite(r.val_loss)
    prior = load_prior(tmp_path / "prior")
    assert "pixel positions as 2 extra input channels" in \
        (tmp_path / "prior" / "card.md").read_text()
    seen_pos = []
    prior.net.net.register_forward_pre_hook(lambda m, args: seen_pos.append(args[0][:, 2:]))
    out = prior.eps(torch.randn(1, 2, 11, 11), 50)  # padded to 12 for the network (halves once)
    assert out.shape == (1, 2, 11, 11) and seen_pos[0].shape[-1] == 12
    assert torch.allclose(seen_pos[0][..., :11, :11], position_channels(1, 11, 11))
    assert abs(float(seen_pos[0][0, 0, 11, 0]) - 12 / 11) < 1e-6  # the image spans -1..1


def test_a_failing_compiler_does_not_lose_the_training(slices, tmp_path, monkeypatch, capsys):
    """compile_net: if the compiled network raises (e.g. no compiler on the node), training
    goes on uncompiled and says so; the result equals the uncompiled run's."""
    def broken(*a, **k):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler")
        return run

    cfg = tiny_cfg(steps=4, checkpoint_every=4)
    plain = train(*slices, cfg, tmp_path / "a", tmp_path / "wa")
    monkeypatch.setattr(torch, "compile", broken)
    r = train(*slices, cfg, tmp_path / "b", tmp_path / "wb", compile_net=True)
    assert "torch.compile failed at step 0 (RuntimeError: no C++ compiler); training " \
        "continues uncompiled" in capsys.readouterr().out
    assert r.losses == plain.losses
    assert {"step": 0, "compile_failed": "RuntimeError: no C++ compiler"} in r.history

    def backward_fails(module, *a, **k):  # the compiled forward runs; its backward raises
        class Fail(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.clone()

            @staticmethod
            def backward(ctx, g):
                raise RuntimeError("backward graph")

        return lambda x, t: Fail.apply(module(x, t))

    monkeypatch.setattr(torch, "compile", backward_fails)
    r = train(*slices, cfg, tmp_path / "c", tmp_path / "wc", compile_net=True)
    assert "(RuntimeError: backward graph)" in capsys.readouterr().out
    assert r.losses == plain.losses
