from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffrecon.recon.diffusion.checkpoint import PriorLoadError, load_prior, save_prior
from diffrecon.recon.diffusion.networks import build_network, monai_unet_args
from diffrecon.recon.diffusion.prior import Normalisation, Prior, PriorConfig
from diffrecon.recon.diffusion.registry import (
    import_adm_checkpoint,
    import_dds,
    list_priors,
    resolve_prior,
)
from tests.recon.diffusion.test_adm import ADM


def tiny_config(name="tiny", modality="mri", dtype="float32"):
    ch = 2 if modality == "mri" else 1
    return PriorConfig(
        name=name, modality=modality, architecture="monai-diffusion-unet",
        network=monai_unet_args(ch, base=8, mult=(1, 2), attention=(False, True),
                                head_channels=8),
        image_size=16, channels=["real", "imag"] if ch == 2 else ["intensity"],
        orientation="axial", weights_dtype=dtype,
        normalisation=Normalisation(kind="complex" if ch == 2 else "ct-window"),
    )


@pytest.fixture
def saved(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(0)
    net = build_network(cfg.architecture, cfg.network)
    return save_prior(tmp_path / "tiny", net, cfg, "# tiny\n"), net


def test_roundtrip_is_bit_exact(saved):
    path, net = saved
    prior = load_prior(path)
    for k, v in net.state_dict().items():
        assert torch.equal(prior.net.net.state_dict()[k], v)
    x = torch.randn(3, 2, 16, 16)
    with torch.no_grad():
        expected = net(x, torch.tensor([0, 10, 999]))
    assert torch.equal(prior.eps(x, torch.tensor([0, 10, 999])), expected)
    assert len(prior.digest) == 64
    assert {p.name for p in path.iterdir()} == {"config.json", "model.safetensors", "card.md"}


def test_float16_weights_load_as_float32(tmp_path):
    cfg = tiny_config(dtype="float16")
    net = build_network(cfg.architecture, cfg.network)
    prior = load_prior(save_prior(tmp_path / "h", net, cfg, "# h\n"))
    w = next(prior.net.parameters())
    assert w.dtype == torch.float32
    assert (tmp_path / "h" / "model.safetensors").stat().st_size < 0.6 * 4 * sum(
        p.numel() for p in net.parameters())


def test_corrupted_or_mismatched_folders_give_clear_errors(saved, tmp_path):
    path, _ = saved
    (path / "card.md").unlink()
    with pytest.raises(PriorLoadError, match=r"^prior tiny: missing card\.md"):
        load_prior(path)
    (path / "card.md").write_text("# tiny\n")

    good = (path / "config.json").read_text()
    (path / "config.json").write_text("{not json")
    with pytest.raises(PriorLoadError, match="config.json is not valid JSON"):
        load_prior(path)
    bad = json.loads(good)
    bad["normalisation"] = {"kind": "zscore"}
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(PriorLoadError, match=r"config\.json: normalisation\.kind"):
        load_prior(path)
    bad = json.loads(good)
    bad["channels"] = ["intensity"]
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(PriorLoadError, match="network takes 2 channels but config.json declares 1"):
        load_prior(path)
    bad = json.loads(good)
    bad["positions"] = True
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(PriorLoadError, match=r"^prior tiny: network takes 2 channels but "
                       r"config\.json declares 2 \(real, imag\) \+ 2 position channels"):
        load_prior(path)
    bad["positions"] = "maybe"
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(PriorLoadError, match=r"config\.json: positions: Input should be a "
                                             "valid boolean"):
        load_prior(path)
    bad = json.loads(good)
    bad["network"]["channels"] = [16, 32]
    bad["network"]["norm_num_groups"] = 8
    (path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(PriorLoadError, match="has shape"):
        load_prior(path)
    (path / "config.json").write_text(good)

    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PriorLoadError, match="model.safetensors is corrupt"):
        load_prior(path)
    with pytest.raises(PriorLoadError, match="folder does not exist"):
        load_prior(tmp_path / "nothing")


def test_import_adm_checkpoint_from_pt_reproduces_reference(tmp_path):
    if not ADM.exists():
        pytest.skip(f"reference vectors not available: {ADM}")
    from safetensors.torch import load_file

    cfgs = json.loads((ADM / "adm_small_configs.json").read_text())
    pt = tmp_path / "small.pt"
    torch.save({"model": load_file(str(ADM / "adm_mri_like_state_dict.safetensors"))}, pt)
    out = import_adm_checkpoint(pt, tmp_path / "imported", cfgs["mri_like"]["config"],
                                "small-mri", "mri", ["real", "imag"], {"kind": "complex"}, None,
                                "test model")
    prior = load_prior(out)
    io = np.load(ADM / "adm_mri_like_io.npz")
    eps = prior.eps(torch.from_numpy(io["x"]), torch.from_numpy(io["t"]))
    ref = torch.from_numpy(io["y"])[:, :2]  # learn_sigma: epsilon is the first half
    assert float((eps - ref).norm() / ref.norm()) < 1e-5
    # the same file checked against the wrong layout is refused, naming the file
    with pytest.raises(PriorLoadError, match=r"^prior small\.pt: weights do not match"):
        import_dds(pt, "ct-aapm-256", tmp_path / "wrong")


class Evil:
    """An arbitrary object: unpickling it would run code of the file's choosing."""


def test_pickled_objects_are_never_loaded(tmp_path):
    pt = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, pt)
    with pytest.raises(PriorLoadError, match="cannot load as a weights-only PyTorch file"):
        import_dds(pt, "mri-knee-320", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown DDS checkpoint kind 'knee'"):
        import_dds(pt, "knee", tmp_path / "out")


def test_list_and_resolve(saved, tmp_path):
    path, _ = saved
    (tmp_path / "broken").mkdir()
    rows = {d.name: (cfg, problem) for d, cfg, problem in list_priors(tmp_path)}
    assert rows["tiny"][0].name == "tiny"
    assert rows["broken"][0] is None and "missing" in rows["broken"][1]
    assert isinstance(resolve_prior(path), Prior)
    with pytest.raises(PriorLoadError, match="no such folder or shipped prior"):
        resolve_prior("brain-t1-nonexistent")


def test_int8_weights_are_a_quarter_of_the_bytes_and_checked_at_load(tmp_path):
    """weights_dtype int8: kernels stored as int8 with one scale per output channel (each
    weight within half a step of its value), the rest float16; a folder whose config and
    weights disagree about it is refused naming the field."""
    from safetensors.torch import load_file, save_file

    from diffrecon.recon.diffusion.checkpoint import INT8_SCALE, quantise_int8

    cfg = tiny_config(dtype="int8")
    torch.manual_seed(0)
    net = build_network(cfg.architecture, cfg.network)
    with torch.no_grad():  # MONAI zero-initialises the output layer: give it weights
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    path = save_prior(tmp_path / "q", net, cfg, "# q\n")
    n = sum(p.numel() for p in net.parameters())
    stored = load_file(str(path / "model.safetensors"))
    assert sum(v.numel() * v.element_size() for v in stored.values()) < 0.3 * 4 * n
    prior = load_prior(path)
    loaded = prior.net.net.state_dict()
    for k, v in net.state_dict().items():
        if v.ndim >= 2:
            _, scale = quantise_int8(v)
            err = (loaded[k] - v).abs().reshape(v.shape[0], -1).amax(dim=1)
            assert bool((err <= scale / 2 + 1e-7).all()), k
        else:
            assert torch.equal(loaded[k], v.half().float())
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        exact = net(x, t)
    assert float((prior.eps(x, t) - exact).norm() / exact.norm()) < 0.02

    kernel = next(k for k, v in stored.items() if v.dtype == torch.int8)
    good = (path / "config.json").read_text()

    def refused(state, config, match):
        save_file(state, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(config))
        with pytest.raises(PriorLoadError, match=match):
            load_prior(path)

    as_fp16 = {**json.loads(good), "weights_dtype": "float16"}
    refused(stored, as_fp16, r"^prior q: config\.json: weights_dtype is float16 but "
                             r"model\.safetensors holds int8 weights or scales")
    no_scale = {k: v for k, v in stored.items() if k != kernel + INT8_SCALE}
    refused(no_scale, json.loads(good), rf"model\.safetensors \(weights_dtype int8\): weight "
                                        rf"{kernel} has no scale")
    bad = dict(stored)
    bad[kernel + INT8_SCALE] = -bad[kernel + INT8_SCALE]
    refused(bad, json.loads(good), "must hold .* positive finite numbers, one per output")
    floats = {k: v.float() for k, v in stored.items() if not k.endswith(INT8_SCALE)}
    refused(floats, json.loads(good), "weights_dtype is int8 but model.safetensors holds no "
                                      "int8 weights")
    refused(stored, {**json.loads(good), "weights_dtype": "int4"},
            r"config\.json: weights_dtype: Input should be")


def test_prior_convert_rewrites_the_weights_and_says_so_on_the_card(saved, tmp_path, capsys):
    from diffrecon.cli import main

    path, net = saved
    (path / "samples.png").write_bytes(b"png")
    assert main(["prior", "convert", str(path), "--weights-dtype", "int8",
                 "--out", str(tmp_path / "q8")]) == 0
    assert "int8 weights" in capsys.readouterr().out
    q = load_prior(tmp_path / "q8")
    assert q.config.weights_dtype == "int8" and q.config.network == json.loads(
        (path / "config.json").read_text())["network"]
    card = (tmp_path / "q8" / "card.md").read_text()
    assert card.startswith("# tiny") and "re-stored as int8 (from float32)" in card
    assert (tmp_path / "q8" / "samples.png").read_bytes() == b"png"
    assert main(["prior", "convert", str(tmp_path / "q8"), "--weights-dtype", "float16",
                 "--out", str(tmp_path / "q8")]) == 0  # in place: the sheet survives
    assert (tmp_path / "q8" / "samples.png").read_bytes() == b"png"
    assert load_prior(tmp_path / "q8").config.weights_dtype == "float16"
