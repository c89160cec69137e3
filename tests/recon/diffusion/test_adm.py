"""The ADM UNet against guided-diffusion's own outputs and the official checkpoint layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffrecon.recon.diffusion.adm import ADMConfig, ADMUNet
from tests.conftest import SHARED

ADM = SHARED / "vectors" / "adm"


@pytest.fixture(scope="module")
def vectors():
    if not ADM.exists():
        pytest.skip(f"reference vectors not available: {ADM}")
    return ADM


@pytest.mark.parametrize("name", ["mri_like", "ct_like"])
def test_small_models_load_strict_and_reproduce_reference(vectors, name):
    from safetensors.torch import load_file

    cfgs = json.loads((vectors / "adm_small_configs.json").read_text())
    net = ADMUNet(ADMConfig.from_guided_diffusion(cfgs[name]["config"])).eval()
    net.load_state_dict(load_file(str(vectors / f"adm_{name}_state_dict.safetensors")),
                        strict=True)
    assert sum(p.numel() for p in net.parameters()) == cfgs[name]["n_params"]
    io = np.load(vectors / f"adm_{name}_io.npz")
    with torch.no_grad():
        y = net(torch.from_numpy(io["x"]), torch.from_numpy(io["t"]))
    ref = torch.from_numpy(io["y"])
    rel = float((y - ref).norm() / ref.norm())
    assert rel < 1e-5, rel


@pytest.mark.parametrize("name", ["fastmri_knee_320_complex", "AAPM256"])
def test_official_configs_have_exactly_the_published_layout(vectors, name):
    layout = json.loads((vectors / "official_checkpoint_layouts.json").read_text())[name]
    with torch.device("meta"):
        net = ADMUNet(ADMConfig.from_guided_diffusion(layout["config"]))
    got = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    expected = [(k, list(s)) for k, s in layout["state_dict"]]
    assert got == expected
    assert sum(v.numel() for v in net.state_dict().values()) == layout["n_params"]


def test_registry_configs_match_the_official_layouts(vectors):
    from diffrecon.recon.diffusion.registry import DDS_CHECKPOINTS

    layouts = json.loads((vectors / "official_checkpoint_layouts.json").read_text())
    for kind, official in (("mri-knee-320", "fastmri_knee_320_complex"),
                           ("ct-aapm-256", "AAPM256")):
        ours = ADMConfig.from_guided_diffusion(DDS_CHECKPOINTS[kind]["adm"])
        theirs = ADMConfig.from_guided_diffusion(layouts[official]["config"])
        assert ours == theirs
