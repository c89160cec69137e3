"""Checkpoint folders: config.json + model.safetensors + card.md. Loading never unpickles."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from pydantic import ValidationError

from diffrecon.common.files import path_digest
from diffrecon.recon.diffusion.networks import EpsNetwork, build_network
from diffrecon.recon.diffusion.prior import Prior, PriorConfig

FILES = ("config.json", "model.safetensors", "card.md")
#: weights_dtype int8: the key of a quantised tensor's per-output-channel scales
INT8_SCALE = ".int8_scale"


class PriorLoadError(ValueError):
    """A checkpoint folder that is missing, corrupt or inconsistent; names the folder."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"prior {Path(path).name}: {problem}")


def folder_digest(path: str | Path) -> str:
    """sha256 over config.json and model.safetensors (the prior's identity in cache keys)."""
    return path_digest(path, names=("config.json", "model.safetensors"))


def read_config(path: str | Path) -> PriorConfig:
    path = Path(path)
    if not path.is_dir():
        raise PriorLoadError(path, "folder does not exist")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise PriorLoadError(path, f"missing {', '.join(missing)}")
    try:
        raw = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise PriorLoadError(path, f"config.json is not valid JSON ({exc})") from None
    try:
        return PriorConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PriorLoadError(path, f"config.json: {where}: {first['msg']}") from None


def load_prior(path: str | Path, device: torch.device | str = "cpu",
               autocast: bool = True, compile: bool = False) -> Prior:
    """Validate and load a checkpoint folder into a :class:`Prior` (float32 weights;
    ``autocast`` and ``compile`` as in :class:`Prior`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_config(path)
    try:
        net = build_network(cfg.architecture, cfg.network)
    except Exception as exc:
        raise PriorLoadError(path, f"cannot build {cfg.architecture} from config.json "
                                   f"({type(exc).__name__}: {exc})") from None
    in_ch = cfg.network.get("in_channels")
    if in_ch != len(cfg.channels) + 2 * cfg.positions:
        declared = f"{len(cfg.channels)} ({', '.join(cfg.channels)})"
        if cfg.positions:
            declared += " + 2 position channels (positions: true)"
        elif in_ch == len(cfg.channels) + 2:
            declared += "; positions: false, but it has room for 2 position channels"
        raise PriorLoadError(path, f"network takes {in_ch} channels but config.json declares "
                                   f"{declared}")
    try:
        state = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PriorLoadError(path, f"model.safetensors is corrupt ({exc})") from None
    state = _dequantised(path, state, cfg.weights_dtype)
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise PriorLoadError(
            path,
            f"weights do not match the {cfg.architecture} in config.json: "
            f"{len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})",
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise PriorLoadError(path, f"weight {k} has shape {tuple(state[k].shape)}, "
                                       f"the config's network expects {tuple(v.shape)}")
        if not torch.isfinite(state[k].float()).all():
            raise PriorLoadError(path, f"weight {k} contains NaN or Inf")
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    eps_net = EpsNetwork(net, cfg.architecture, len(cfg.channels), positions=cfg.positions)
    return Prior(eps_net, cfg, folder_digest(path), device=device, autocast=autocast,
                 compile=compile)


def quantise_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q, scale) with w ~ q * scale (scale per row of
    w's first dimension, the largest |w| of the row over 127)."""
    rows = w.detach().float().reshape(w.shape[0], -1)
    scale = rows.abs().amax(dim=1).clamp_min(1e-12) / 127
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(w.shape), scale


def _stored(state: dict[str, torch.Tensor], weights_dtype: str) -> dict[str, torch.Tensor]:
    """The tensors as model.safetensors holds them for ``weights_dtype``."""
    if weights_dtype != "int8":
        dtype = getattr(torch, weights_dtype)
        return {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
    out = {}
    for k, v in state.items():
        v = v.detach().to("cpu")
        if v.is_floating_point() and v.ndim >= 2:
            out[k], out[k + INT8_SCALE] = (t.contiguous() for t in quantise_int8(v))
        elif v.is_floating_point():
            out[k] = v.to(torch.float16).contiguous()
        else:  # counters and other integer buffers as they are
            out[k] = v.contiguous()
    return out


def _dequantised(path: Path, state: dict[str, torch.Tensor], weights_dtype: str
                 ) -> dict[str, torch.Tensor]:
    """float32 weights from model.safetensors, checked against config.json's
    ``weights_dtype`` (a PriorLoadError naming the field where they disagree)."""
    int8 = [k for k, v in state.items() if v.dtype == torch.int8]
    scales = [k for k in state if k.endswith(INT8_SCALE)]
    if weights_dtype != "int8":
        if int8 or scales:
            raise PriorLoadError(path, f"config.json: weights_dtype is {weights_dtype} but "
                                       f"model.safetensors holds int8 weights or scales "
                                       f"(e.g. {(int8 + scales)[0]})")
        return state
    if not int8:
        raise PriorLoadError(path, "config.json: weights_dtype is int8 but model.safetensors "
                                   "holds no int8 weights")
    for k in scales:
        if k.removesuffix(INT8_SCALE) not in int8:
            raise PriorLoadError(path, f"model.safetensors (weights_dtype int8): scale {k} has "
                                       "no int8 weight")
    out = {k: v for k, v in state.items() if k not in scales}
    for k in int8:
        scale = state.get(k + INT8_SCALE)
        if scale is None:
            raise PriorLoadError(path, f"model.safetensors (weights_dtype int8): weight {k} has "
                                       f"no scale {k + INT8_SCALE}")
        q = state[k]
        if tuple(scale.shape) != (q.shape[0],) or not scale.is_floating_point() or not bool(
                (torch.isfinite(scale.float()) & (scale.float() > 0)).all()):
            raise PriorLoadError(path, f"model.safetensors (weights_dtype int8): scale "
                                       f"{k + INT8_SCALE} must hold "
                                       f"{q.shape[0]} positive finite numbers, one per output "
                                       f"channel (shape {tuple(scale.shape)})")
        out[k] = q.float() * scale.float().reshape(-1, *([1] * (q.ndim - 1)))
    return out


def save_prior(path: str | Path, net: torch.nn.Module, config: PriorConfig, card: str) -> Path:
    """Write a checkpoint folder atomically (a temporary folder, then rename into place).

    ``net`` is the bare network (not the EpsNetwork wrapper); weights are stored in the
    config's ``weights_dtype`` (int8: :func:`quantise_int8` per output channel).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(net, EpsNetwork):
        net = net.net
    state = _stored(net.state_dict(), config.weights_dtype)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o755)
    try:
        (tmp / "config.json").write_text(json.dumps(config.model_dump(), indent=2) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"name": config.name})
        (tmp / "card.md").write_text(card)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a PyTorch ``.pt`` file with ``weights_only=True`` (never unpickles
    arbitrary objects). Accepts a bare state dict or one under 'model'/'state_dict'/'ema'."""
    path = Path(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PriorLoadError(path, f"cannot load as a weights-only PyTorch file "
                                   f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if isinstance(obj, dict):
        for key in ("ema", "model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PriorLoadError(path, "file does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}
