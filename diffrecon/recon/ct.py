"""CT projectors (parallel and fan beam), their matched adjoints, and FBP, in torch.

Coordinates follow astra-toolbox's 2D conventions so results compare directly: an
(H, W) image has pixel (row r, col c) centred at x = (c - (W - 1) / 2) * p,
y = ((H - 1) / 2 - r) * p for pixel size p; detector bin k sits at
u = (k - (n - 1) / 2) * spacing along the detector axis (cos t, sin t) of view angle t.
Parallel rays run along (sin t, -cos t); a fan's source sits at R_so (sin t, -cos t) and
its flat detector's centre at -R_od (sin t, -cos t) (astra's ``fanflat``); an equi-angular
(curved) detector spaces its bins by equal angles seen from the source.

The projector is Joseph's method (astra's ``linear``): along each ray, one linear
interpolation between the two nearest pixel centres per image column (or row, for
steep rays), weighted by the path length per column. Its entries are computed once per
geometry; see CTProjector for the ways they are applied. The adjoint is the transpose of
the same entries, so it is matched exactly.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from diffrecon.recon.operators import LinearOperator


@dataclass(frozen=True)
class CTGeometry:
    """A 2D CT geometry; ``kind`` is 'parallel', 'fan-flat' or 'fan-equiangular'.

    angles in radians; det_spacing in image units (mm) for parallel and flat detectors,
    in radians for an equi-angular detector; distances in mm.
    """

    kind: str
    angles: tuple[float, ...]
    n_det: int
    det_spacing: float = 1.0
    source_origin: float = 0.0
    origin_det: float = 0.0
    image_shape: tuple[int, int] = (128, 128)
    pixel_size: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("parallel", "fan-flat", "fan-equiangular"):
            raise ValueError(f"unknown CT geometry {self.kind!r}")
        if self.kind != "parallel" and self.source_origin <= 0:
            raise ValueError("a fan beam needs source_origin > 0 (mm)")

    @classmethod
    def parallel(cls, angles: np.ndarray | Sequence[float], n_det: int, det_spacing: float = 1.0,
                 image_shape: tuple[int, int] = (128, 128), pixel_size: float = 1.0
                 ) -> CTGeometry:
        return cls("parallel", tuple(float(a) for a in np.asarray(angles)), int(n_det),
                   float(det_spacing), image_shape=tuple(image_shape), pixel_size=pixel_size)

    @classmethod
    def fan(cls, angles: np.ndarray | Sequence[float], n_det: int, det_spacing: float,
            source_origin: float, origin_det: float, detector: str = "flat",
            image_shape: tuple[int, int] = (128, 128), pixel_size: float = 1.0) -> CTGeometry:
        kind = {"flat": "fan-flat", "equiangular": "fan-equiangular"}[detector]
        return cls(kind, tuple(float(a) for a in np.asarray(angles)), int(n_det),
                   float(det_spacing), float(source_origin), float(origin_det),
                   tuple(image_shape), pixel_size)

    @property
    def n_views(self) -> int:
        return len(self.angles)

    def rays(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(points, unit directions) of the rays of the given views, each (V * n_det, 2)."""
        t = np.asarray(self.angles, dtype=np.float64)[views][:, None]
        k = (np.arange(self.n_det) - (self.n_det - 1) / 2)[None, :]
        ux, uy = np.cos(t), np.sin(t)  # detector axis
        rx, ry = np.sin(t), -np.cos(t)  # from the source side through the origin
        if self.kind == "parallel":
            u = k * self.det_spacing
            px, py = u * ux, u * uy
            dx, dy = np.broadcast_to(rx, px.shape), np.broadcast_to(ry, py.shape)
        else:
            sx, sy = self.source_origin * rx, self.source_origin * ry
            if self.kind == "fan-flat":
                u = k * self.det_spacing
                qx = -self.origin_det * rx + u * ux
                qy = -self.origin_det * ry + u * uy
                dx, dy = qx - sx, qy - sy
            else:  # equi-angular: rotate the central ray (source -> origin) by gamma_k
                g = k * self.det_spacing
                cx, cy = -rx, -ry
                dx = cx * np.cos(g) - cy * np.sin(g)
                dy = cx * np.sin(g) + cy * np.cos(g)
            px, py = np.broadcast_to(sx, dx.shape), np.broadcast_to(sy, dy.shape)
        norm = np.hypot(dx, dy)
        pts = np.stack([px, py], -1).reshape(-1, 2)
        dirs = (np.stack([dx, dy], -1) / norm[..., None]).reshape(-1, 2)
        return pts, dirs


def joseph_entries(geom: CTGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Sparse entries (ray index, pixel index, weight) of Joseph's projector: the samples
    of each ray's walk (:func:`ray_lines`) with their two interpolation weights."""
    h, w = geom.image_shape
    flat_all, a, b, scale = ray_lines(geom)
    ray_ids, pix_ids, vals = [], [], []
    for flat, n_steps, n_other in ((True, w, h), (False, h, w)):
        sel = np.flatnonzero(flat_all if flat else ~flat_all)
        if len(sel) == 0:
            continue
        steps = np.arange(n_steps)[None, :]
        other = a[sel, None] + b[sel, None] * steps  # fractional row (flat) or column
        lo = np.floor(other).astype(np.int64)
        frac = other - lo
        for idx, wt in ((lo, 1 - frac), (lo + 1, frac)):
            ok = (idx >= 0) & (idx < n_other) & (wt > 0)
            st = np.broadcast_to(steps, ok.shape)[ok]
            oi = idx[ok]
            ray_ids.append(np.broadcast_to(sel[:, None], ok.shape)[ok])
            pix_ids.append(oi * w + st if flat else st * w + oi)
            vals.append((wt * scale[sel, None])[ok])
    if not ray_ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), len(a)
    return np.concatenate(ray_ids), np.concatenate(pix_ids), np.concatenate(vals), len(a)


def ray_lines(geom: CTGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each ray as Joseph's method walks it: (flat, a, b, scale), one entry per ray.

    A flat ray (|dx| >= |dy|) samples every image column s at the fractional row
    a + b s; a steep ray samples every row s at the fractional column a + b s; scale is
    the path length per step (pixel size / |dx| or / |dy|).
    """
    h, w = geom.image_shape
    p = geom.pixel_size
    pts, dirs = geom.rays(np.arange(geom.n_views))
    px, py = pts[:, 0] / p, pts[:, 1] / p
    dx, dy = dirs[:, 0], dirs[:, 1]
    flat = np.abs(dx) >= np.abs(dy)
    sx = np.where(flat, dx, 1.0)  # no division by ~0 in the branch not taken
    sy = np.where(flat, 1.0, dy)
    a = np.where(flat, (h - 1) / 2 - (py + (-(w - 1) / 2 - px) / sx * dy),
                 px + ((h - 1) / 2 - py) / sy * dx + (w - 1) / 2)
    b = np.where(flat, -dy / sx, -dx / sy)
    scale = p / np.where(flat, np.abs(dx), np.abs(dy))
    return flat, a, b, scale


_KERNELS: dict = {}
_KERNEL_LOCK = threading.Lock()  # numba's workqueue layer must not be entered twice at once


def _kernels():
    """Joseph's projector and its transpose as numba kernels (compiled once, cached).

    Both walk rays: ``src`` is (O + 2, S, B), the image (or its transpose, for steep
    rays) zero-padded by one row at either end of the interpolated axis O, with the B
    slices innermost so one set of weights serves the whole batch. The transpose
    scatters into one accumulator per thread (rays split between threads), summed after.
    """
    if not _KERNELS:
        import numba

        def jit(fn: Callable) -> Callable:
            """Compiled in parallel; cached on disk where numba finds a writable place
            (beside this file or the user's cache folder), else compiled per process."""
            try:
                return numba.njit(parallel=True, fastmath=True, cache=True)(fn)
            except RuntimeError:  # "cannot cache function ...: no locator available"
                return numba.njit(parallel=True, fastmath=True)(fn)

        @jit
        def project(src: np.ndarray, a: np.ndarray, b: np.ndarray, scale: np.ndarray,
                    out: np.ndarray) -> None:
            o, s_len, nb = src.shape[0] - 2, src.shape[1], src.shape[2]
            for r in numba.prange(a.shape[0]):
                ar, br = a[r], b[r]
                acc = np.zeros(nb, src.dtype)
                for s in range(s_len):
                    pos = ar + br * s
                    if pos < -1 or pos >= o:
                        continue
                    lo = int(math.floor(pos))
                    f = pos - lo
                    g = 1 - f
                    for j in range(nb):
                        acc[j] += g * src[lo + 1, s, j] + f * src[lo + 2, s, j]
                for j in range(nb):
                    out[r, j] = acc[j] * scale[r]

        @jit
        def backproject(sino: np.ndarray, a: np.ndarray, b: np.ndarray, scale: np.ndarray,
                        out: np.ndarray) -> None:
            n_acc, o, s_len, nb = out.shape[0], out.shape[1] - 2, out.shape[2], out.shape[3]
            n = a.shape[0]
            for t in numba.prange(n_acc):
                acc = out[t]
                for r in range(t * n // n_acc, (t + 1) * n // n_acc):
                    ar, br, sc = a[r], b[r], scale[r]
                    for s in range(s_len):
                        pos = ar + br * s
                        if pos < -1 or pos >= o:
                            continue
                        lo = int(math.floor(pos))
                        f = pos - lo
                        g = 1 - f
                        for j in range(nb):
                            v = sino[r, j] * sc
                            acc[lo + 1, s, j] += g * v
                            acc[lo + 2, s, j] += f * v

        @jit
        def fan_backproject(q: np.ndarray, angles: np.ndarray, geo: np.ndarray,
                            out: np.ndarray) -> None:
            # q (views, n, B); geo = (source-origin, bin spacing, pixel size, flat?)
            h, w, nb = out.shape
            n = q.shape[1]
            d, spacing, p, flat = geo[0], geo[1], geo[2], geo[3] > 0
            cos_t, sin_t = np.cos(angles), np.sin(angles)
            for r in numba.prange(h):
                y = ((h - 1) / 2 - r) * p
                for c in range(w):
                    x = (c - (w - 1) / 2) * p
                    for v in range(angles.shape[0]):
                        su = x * cos_t[v] + y * sin_t[v]
                        dist = d - (x * sin_t[v] - y * cos_t[v])
                        if flat:
                            pos = d * su / dist / spacing + (n - 1) / 2
                            wt = (d / dist) ** 2
                        else:
                            pos = math.atan2(-su, dist) / spacing + (n - 1) / 2
                            wt = 1 / (su * su + dist * dist)
                        if pos < -1 or pos >= n:
                            continue
                        lo = int(math.floor(pos))
                        f = pos - lo
                        for j in range(nb):
                            val = 0.0
                            if lo >= 0:
                                val += (1 - f) * q[v, lo, j]
                            if lo + 1 < n:
                                val += f * q[v, lo + 1, j]
                            out[r, c, j] += wt * val

        _KERNELS.update(project=project, backproject=backproject,
                        fan_backproject=fan_backproject)
    return _KERNELS


_MATRICES: dict = {}
_LINES: dict = {}


class CTProjector(LinearOperator):
    """Slice-stacked 2D projector: x (..., H, W) -> sinogram (..., views, n_det), and back.

    Backends, all computing the same entries: ``"matrix"`` builds the sparse system matrix
    and its transpose once per geometry, dtype and device (the fastest to apply, in seconds
    to build: the CPU default up to ``max_nnz`` entries, e.g. 128 x 128 at 180 views);
    ``"kernel"`` (the CPU default above that) runs Joseph's method as compiled ray-walking
    kernels batched over slices; ``"torch"`` (the default on other devices) walks the rays
    with torch gathers (forward) and scatter-adds (adjoint), in chunks of ``chunk_elems``
    samples.
    """

    slab = 16  # slices per kernel call (bounds the per-thread accumulators)

    def __init__(self, geometry: CTGeometry, backend: str = "auto",
                 chunk_elems: int = 2**25, max_nnz: int = 20_000_000) -> None:
        if backend not in ("auto", "kernel", "torch", "matrix"):
            raise ValueError(f"unknown CT projector backend {backend!r}; "
                             "auto, kernel, torch or matrix")
        self.geom = geometry
        self.backend = backend
        self.chunk_elems = chunk_elems
        self.max_nnz = max_nnz

    def _backend(self, device: torch.device) -> str:
        if self.backend != "auto":
            return self.backend
        if device.type != "cpu":
            return "torch"
        h, w = self.geom.image_shape
        nnz = self.geom.n_views * self.geom.n_det * 2 * max(h, w)
        return "matrix" if nnz <= self.max_nnz else "kernel"

    def _lines(self, dtype: torch.dtype):
        key = (self.geom, dtype)
        if key not in _LINES:
            flat, a, b, scale = ray_lines(self.geom)
            np_dtype = np.float32 if dtype == torch.float32 else np.float64
            _LINES[key] = tuple((np.flatnonzero(sel), a[sel].astype(np_dtype),
                                 b[sel].astype(np_dtype), scale[sel].astype(np_dtype))
                                for sel in (flat, ~flat))
        return _LINES[key]

    def _kernel_apply(self, t: torch.Tensor, adjoint: bool) -> torch.Tensor:
        """Run the kernels on (B, H, W) images or (B, views * n_det) sinograms."""
        import numba

        if t.dtype not in (torch.float32, torch.float64):
            t = t.double()
        h, w = self.geom.image_shape
        n_rays = self.geom.n_views * self.geom.n_det
        k = _kernels()
        lines = self._lines(t.dtype)
        threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        outs = []
        with _KERNEL_LOCK:
            numba.set_num_threads(threads)
            for b0 in range(0, t.shape[0], self.slab):
                part = t[b0:b0 + self.slab]
                nb = part.shape[0]
                if not adjoint:
                    sino = np.zeros((n_rays, nb), dtype=lines[0][1].dtype)
                    for (rays, a, b, scale), img in zip(lines, (part, part.transpose(1, 2))):
                        if len(rays) == 0:
                            continue
                        src = torch.nn.functional.pad(img.permute(1, 2, 0), (0, 0, 0, 0, 1, 1))
                        out = np.empty((len(rays), nb), dtype=sino.dtype)
                        k["project"](src.contiguous().numpy(), a, b, scale, out)
                        sino[rays] = out
                    outs.append(torch.from_numpy(sino).T)
                else:
                    img = torch.zeros(nb, h, w, dtype=t.dtype)
                    vals = part.T.contiguous().numpy()
                    for i, (rays, a, b, scale) in enumerate(lines):
                        if len(rays) == 0:
                            continue
                        o, s_len = (h, w) if i == 0 else (w, h)
                        acc = np.zeros((threads, o + 2, s_len, nb), dtype=vals.dtype)
                        k["backproject"](np.ascontiguousarray(vals[rays]), a, b, scale, acc)
                        back = torch.from_numpy(acc.sum(0)[1:-1]).permute(2, 0, 1)
                        img += back if i == 0 else back.transpose(1, 2)
                    outs.append(img)
        return torch.cat(outs)

    def _torch_apply(self, t: torch.Tensor, adjoint: bool) -> torch.Tensor:
        """The kernels' walk in torch on (B, H, W) images or (B, rays) sinograms: per chunk
        of rays, the sample positions a + b s, gathered (forward) or scatter-added (adjoint)
        on the zero-padded (B, O + 2, S) image."""
        h, w = self.geom.image_shape
        dev, dt, nb = t.device, t.dtype, t.shape[0]
        out = (torch.zeros(nb, h, w, dtype=dt, device=dev) if adjoint else
               torch.zeros(nb, self.geom.n_views * self.geom.n_det, dtype=dt, device=dev))
        for i, (rays, a, b, scale) in enumerate(self._lines(dt)):
            if len(rays) == 0:
                continue
            o, s_len = (h, w) if i == 0 else (w, h)
            steps = torch.arange(s_len, device=dev, dtype=dt)
            if adjoint:
                src = torch.zeros(nb, (o + 2) * s_len, dtype=dt, device=dev)
            else:
                img = t if i == 0 else t.transpose(1, 2)
                src = torch.nn.functional.pad(img, (0, 0, 1, 1)).reshape(nb, -1)
            rays_t = torch.from_numpy(rays).to(dev)
            chunk = max(1, self.chunk_elems // (s_len * max(nb, 1)))
            for r0 in range(0, len(rays), chunk):
                sl = slice(r0, r0 + chunk)
                av, bv, sc = (torch.from_numpy(v[sl]).to(dev, dt) for v in (a, b, scale))
                pos = av[:, None] + bv[:, None] * steps[None, :]
                ok = (pos >= -1) & (pos < o)
                lo = pos.floor().clamp(-1, o - 1)
                f = torch.where(ok, pos - lo, 0)
                g = torch.where(ok, 1 - f, 0)
                i0 = ((lo.long() + 1) * s_len + steps.long()[None, :]).reshape(-1)
                i1 = i0 + s_len
                if adjoint:
                    v = t[:, rays_t[sl]] * sc
                    src.index_add_(1, i0, (v[:, :, None] * g).reshape(nb, -1))
                    src.index_add_(1, i1, (v[:, :, None] * f).reshape(nb, -1))
                else:
                    val = (src[:, i0].reshape(nb, -1, s_len) * g
                           + src[:, i1].reshape(nb, -1, s_len) * f).sum(-1)
                    out[:, rays_t[sl]] = val * sc
            if adjoint:
                back = src.reshape(nb, o + 2, s_len)[:, 1:-1]
                out += back if i == 0 else back.transpose(1, 2)
        return out

    def _matrices(self, dtype: torch.dtype, device: torch.device):
        key = (self.geom, dtype, str(device))
        if key not in _MATRICES:
            r, c, v, n = joseph_entries(self.geom)
            h, w = self.geom.image_shape
            idx = torch.from_numpy(np.stack([r, c]))
            a = torch.sparse_coo_tensor(idx, torch.from_numpy(v).to(dtype), (n, h * w),
                                        check_invariants=False)
            a = a.coalesce().to(device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR is in beta"
                _MATRICES[key] = (a.to_sparse_csr(), a.t().coalesce().to_sparse_csr())
        return _MATRICES[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.geom.image_shape
        lead = x.shape[:-2]
        out_shape = (*lead, self.geom.n_views, self.geom.n_det)
        backend = self._backend(x.device)
        if backend == "matrix":
            a, _ = self._matrices(x.dtype, x.device)
            return (a @ x.reshape(-1, h * w).T).T.reshape(out_shape)
        apply = self._kernel_apply if backend == "kernel" else self._torch_apply
        return apply(x.reshape(-1, h, w), False).to(x.dtype).reshape(out_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        h, w = self.geom.image_shape
        lead = y.shape[:-2]
        flat = y.reshape(-1, self.geom.n_views * self.geom.n_det)
        backend = self._backend(y.device)
        if backend == "matrix":
            _, at = self._matrices(y.dtype, y.device)
            return (at @ flat.T).T.reshape(*lead, h, w)
        apply = self._kernel_apply if backend == "kernel" else self._torch_apply
        return apply(flat, True).to(y.dtype).reshape(*lead, h, w)


def ramp_filter(n_det: int, spacing: float = 1.0, window: str = "ram-lak",
                dtype: torch.dtype = torch.float64, equiangular: bool = False) -> torch.Tensor:
    """Frequency response (length of the zero-padded FFT) of the discrete ramp filter.

    Built from the spatial-domain ramp (Kak & Slaney: h[0] = 1/(4 s^2), h[odd n] =
    -1/(n pi s)^2), which avoids the DC error of a sampled |f|, then windowed:
    ram-lak (none), shepp-logan (sinc) or hann.
    """
    size = 2 ** int(math.ceil(math.log2(2 * n_det)))
    n = torch.cat([torch.arange(0, size // 2 + 1), torch.arange(-size // 2 + 1, 0)]).to(dtype)
    h = torch.zeros(size, dtype=dtype)
    h[0] = 1 / (4 * spacing**2)
    odd = n.remainder(2) == 1
    h[odd] = -1 / (math.pi * n[odd] * spacing) ** 2
    if equiangular:  # the fan's kernel in angle: h(gamma) (gamma / sin gamma)^2
        g = n * spacing
        h = h * torch.where(g == 0, torch.ones_like(g), g / torch.sin(g)) ** 2
    filt = torch.fft.fft(h).real * spacing  # times the sampling step: a Riemann sum
    f = torch.fft.fftfreq(size, dtype=dtype)  # cycles per sample, |f| <= 0.5
    if window == "shepp-logan":
        filt = filt * torch.sinc(f)  # torch.sinc(z) = sin(pi z) / (pi z)
    elif window == "hann":
        filt = filt * (0.5 + 0.5 * torch.cos(2 * math.pi * f))
    elif window != "ram-lak":
        raise ValueError(f"unknown FBP filter {window!r}; ram-lak, shepp-logan or hann")
    return filt


def cg_ls(sinogram: torch.Tensor, projector: CTProjector, lam: float = 0.0, iters: int = 30,
          x0: torch.Tensor | None = None) -> torch.Tensor:
    """Least squares by CG on the normal equations: (A^T A + lam I) x = A^T y, per slice."""
    from diffrecon.recon.solvers import conjugate_gradient

    b = projector.adjoint(sinogram)
    x, _ = conjugate_gradient(lambda v: projector.normal(v) + lam * v, b, x0=x0,
                              max_iter=iters, tol=1e-7)
    return x


def tv_ct(sinogram: torch.Tensor, projector: CTProjector, lam: float = 1.0,
          iters: int = 40, cg_iters: int = 5, rho: float | None = 10.0,
          along_z: bool = False) -> torch.Tensor:
    """ADMM-TV for CT: min 0.5 ||A x - y||^2 + lam TV(x), TV isotropic in-plane per slice,
    or, with ``along_z``, over (z, rows, cols) of the slice stack (one problem per volume,
    so neighbouring slices regularise each other).

    Started from 10 CG-LS iterations (A^T y itself is far off the image's scale).
    """
    from diffrecon.recon.solvers import admm_tv

    x0 = cg_ls(sinogram, projector, iters=10)
    dims, batch = ((-3, -2, -1), 0) if along_z else ((-2, -1), 1)
    return admm_tv(projector.normal, projector.adjoint(sinogram), lam, dims=dims, rho=rho,
                   iters=iters, cg_iters=cg_iters, periodic=False, x0=x0, batch_dims=batch)


def _filter_rows(sinogram: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Convolve each view with a ramp filter given as its zero-padded frequency response."""
    n = sinogram.shape[-1]
    padded = torch.nn.functional.pad(sinogram, (0, filt.shape[0] - n))
    return torch.fft.ifft(torch.fft.fft(padded, dim=-1) * filt.to(sinogram.device),
                          dim=-1).real[..., :n].to(sinogram.dtype)


def parker_weights(geom: CTGeometry, gamma: np.ndarray) -> np.ndarray | None:
    """Parker's (1982) weights (views, bins) for a short fan-beam scan, or None for a full
    rotation; gamma is each bin's fan angle (radians, positive towards the side a
    ray's conjugate is measured at beta + pi + 2 gamma)."""
    t = np.asarray(geom.angles, dtype=np.float64)
    step = np.median(np.diff(t)) if len(t) > 1 else 2 * np.pi
    cover = abs(step) * len(t)
    if cover >= 2 * np.pi - 1e-6:
        return None
    delta = float(np.abs(gamma).max())
    need = np.pi + 2 * delta
    if cover < need - 1e-6:
        raise ValueError(
            f"fan-beam FBP needs a full rotation or a short scan of at least 180 degrees plus "
            f"the fan angle ({np.degrees(need):.1f} degrees); these {len(t)} views cover "
            f"{np.degrees(cover):.1f} degrees: use cg-ls or admm-tv")
    beta = ((t - t[0]) * np.sign(step))[:, None]
    delta = max(delta, (float(beta.max()) - np.pi) / 2)  # an over-scan widens the ramps
    g = gamma[None, :] * np.sign(step)
    w = np.ones((len(t), len(gamma)))
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.sin(np.pi / 4 * beta / (delta - g)) ** 2
        fall = np.sin(np.pi / 4 * (np.pi + 2 * delta - beta) / (delta + g)) ** 2
    w = np.where(beta < 2 * delta - 2 * g, rise, w)
    w = np.where(beta > np.pi - 2 * g, fall, w)
    return np.nan_to_num(np.clip(w, 0, 1))


def _fan_fbp(sinogram: torch.Tensor, geom: CTGeometry, window: str,
             chunk_elems: int = 8_000_000, kernel: bool | None = None) -> torch.Tensor:
    """Fan-beam FBP (Kak & Slaney ch. 3): cosine pre-weighting, the ramp (in angle for an
    equi-angular detector, on the detector scaled to the origin for a flat one), and a
    pixel-driven backprojection weighted by the inverse squared distance to the source
    (a numba kernel on the CPU, the same formulas vectorised in torch elsewhere).
    A full rotation counts each ray twice (factor 1/2); a short scan uses Parker's weights.
    """
    d, od, n = geom.source_origin, geom.origin_det, geom.n_det
    dev, dt = sinogram.device, sinogram.dtype
    k = np.arange(n) - (n - 1) / 2
    if geom.kind == "fan-flat":
        spacing = geom.det_spacing * d / (d + od)  # on the virtual detector through the origin
        s = k * spacing
        pre = d / np.sqrt(d**2 + s**2)
        gamma = -np.arctan(s / d)
    else:
        spacing = geom.det_spacing
        gamma = k * spacing
        pre = d * np.cos(gamma)
    parker = parker_weights(geom, gamma)
    weights = pre[None, :] * (0.5 if parker is None else parker)
    t = np.asarray(geom.angles, dtype=np.float64)
    dbeta = abs(np.median(np.diff(t))) if len(t) > 1 else 2 * np.pi
    q = sinogram * torch.from_numpy(weights).to(dev, dt)
    filt = ramp_filter(n, spacing, window, dtype=dt, equiangular=geom.kind != "fan-flat")
    q = _filter_rows(q, filt)
    h, w = geom.image_shape
    p = geom.pixel_size
    lead = sinogram.shape[:-2]
    q = q.reshape(-1, geom.n_views * n)
    if dev.type == "cpu" if kernel is None else kernel:
        import numba

        qk = q.reshape(-1, geom.n_views, n).permute(1, 2, 0).contiguous().numpy()
        acc = np.zeros((h, w, qk.shape[2]), dtype=qk.dtype)
        geo = np.array([d, spacing, p, float(geom.kind == "fan-flat")])
        with _KERNEL_LOCK:
            numba.set_num_threads(max(1, min(torch.get_num_threads(),
                                             numba.config.NUMBA_NUM_THREADS)))
            _kernels()["fan_backproject"](qk, t, geo, acc)
        out = torch.from_numpy(acc).permute(2, 0, 1).reshape(-1, h * w)
        return (out * dbeta).reshape(*lead, h, w)
    x = ((torch.arange(w, device=dev, dtype=dt) - (w - 1) / 2) * p)[None, :]
    y = (((h - 1) / 2 - torch.arange(h, device=dev, dtype=dt)) * p)[:, None]
    out = torch.zeros(q.shape[0], h * w, dtype=dt, device=dev)
    angles = torch.from_numpy(t).to(dev, dt)
    vc = max(1, chunk_elems // (h * w * max(1, q.shape[0])))
    for v0 in range(0, geom.n_views, vc):  # the same, vectorised for other devices
        th = angles[v0:v0 + vc, None, None]
        su = x * torch.cos(th) + y * torch.sin(th)
        dist = d - (x * torch.sin(th) - y * torch.cos(th))
        if geom.kind == "fan-flat":
            pos = d * su / dist / spacing + (n - 1) / 2
            wt = (d / dist) ** 2
        else:
            pos = torch.atan2(-su, dist) / spacing + (n - 1) / 2
            wt = 1 / (su**2 + dist**2)
        lo = pos.floor()
        f = pos - lo
        lo = lo.long()
        base = (torch.arange(v0, v0 + th.shape[0], device=dev) * n)[:, None, None]
        for idx, c in ((lo, 1 - f), (lo + 1, f)):
            ok = (idx >= 0) & (idx < n)
            flat_idx = (base + idx.clamp(0, n - 1)).reshape(1, -1).expand(q.shape[0], -1)
            vals = torch.gather(q, 1, flat_idx).reshape(q.shape[0], -1, h * w)
            out += (vals * (c * wt * ok).reshape(1, -1, h * w)).sum(1)
    return (out * dbeta).reshape(*lead, h, w)


def fbp(sinogram: torch.Tensor, projector: CTProjector, window: str = "ram-lak"
        ) -> torch.Tensor:
    """Filtered backprojection. Parallel beams over [0, pi): ramp-filter each view along
    the detector, backproject with the adjoint, scale by pi / views. Fan beams (flat or
    equi-angular detector, a full rotation or a short scan): see ``_fan_fbp``."""
    geom = projector.geom
    if geom.kind != "parallel":
        return _fan_fbp(sinogram, geom, window)
    filtered = _filter_rows(sinogram, ramp_filter(geom.n_det, geom.det_spacing, window,
                                                   dtype=sinogram.dtype))
    return projector.adjoint(filtered) * (math.pi / geom.n_views) / geom.pixel_size
