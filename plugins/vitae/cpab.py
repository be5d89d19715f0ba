"""CPAB diffeomorphisms (continuous piecewise-affine velocity fields, integrated) from libcpab.

libcpab (the maintained PyTorch fork of SkafteNicki/libcpab) is used for the tessellation, its
basis and its integrator. Two of its habits are kept away from dcbench:

- `Cpab(...)` writes its basis cache as a pickle into `site-packages/../basis_files/` and, on
  later calls, `pickle.load`s whatever file sits there under the expected name. dcbench never
  unpickles files without restriction and never writes into site-packages, so `DcbenchCpab`
  builds the same object with its basis folder under dcbench's cache and always recomputes the
  basis (override=True: a small SVD, milliseconds for the tessellations used here). libcpab
  still dumps its pickle there; nothing ever reads it.
- `import libcpab` tries to JIT-compile C sources that the package does not ship (so libcpab
  always runs its pure-PyTorch "slow" integrator): torch logs "No CUDA runtime is found" and
  makes empty build folders under ~/.cache/torch_extensions. The import happens lazily, here,
  with that one log line filtered and the build folders redirected into dcbench's cache.

Only zero-boundary tessellations are offered: libcpab's non-zero-boundary 2D basis uses
`np.bool`, which current numpy no longer has (and the VITAE reference uses zero_boundary=True).

Warps follow the convention of dcbench's other spatial transformers: warp(x, T)(p) = x(T(p)),
sampled bilinearly with F.grid_sample (faster than libcpab's gather-based interpolation, and
the same for interior points). CPAB acts on [0, 1]^2 with the first coordinate along the image
width; pixel centres sit at ((j + 0.5) / W, (i + 0.5) / H). With zero boundary velocity the
square's border is fixed, so content never leaves the image.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from dcbench.paths import cache_dir

_NO_CUDA_LOG = "No CUDA runtime is found"


class _DropNoCudaLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _NO_CUDA_LOG not in record.getMessage()


def libcpab_cache() -> Path:
    """Where libcpab's files go: under dcbench's cache ($DCBENCH_CACHE overrides it)."""
    return cache_dir() / "libcpab"


@contextlib.contextmanager
def _quiet_libcpab_import() -> Iterator[None]:
    """Drop torch's 'No CUDA runtime' log line and keep the empty JIT build folders that
    libcpab's import makes out of ~/.cache/torch_extensions, for the duration of the import."""
    log = logging.getLogger("torch.utils.cpp_extension")
    log_filter = _DropNoCudaLog()
    log.addFilter(log_filter)
    before = os.environ.get("TORCH_EXTENSIONS_DIR")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(libcpab_cache() / "torch_extensions")
    try:
        yield
    finally:
        log.removeFilter(log_filter)
        if before is None:
            os.environ.pop("TORCH_EXTENSIONS_DIR", None)
        else:
            os.environ["TORCH_EXTENSIONS_DIR"] = before


@functools.cache
def _cpab_class() -> type:
    """DcbenchCpab, defined on first use so that importing this module does not import libcpab."""
    with _quiet_libcpab_import():
        import libcpab
        from libcpab.tesselation import Tesselation2D

    class DcbenchCpab(libcpab.Cpab):
        """libcpab.Cpab for 2D, zero boundary, with the basis folder under dcbench's cache and
        the basis always recomputed. Cpab.__init__ is not called because it creates
        site-packages/../basis_files before anything can redirect it; this sets the same
        attributes for the 2D case (libcpab 0.1.3)."""

        def __init__(self, tess_size: Sequence[int], basis_dir: Path, device: str = "cpu") -> None:
            if len(tess_size) != 2 or not all(int(n) > 0 for n in tess_size):
                raise ValueError(f"tess_size must be two positive integers, got {list(tess_size)}")
            nc = [int(n) for n in tess_size]
            p = libcpab.cpab.params()
            p.nc, p.ndim, p.Ashape = nc, 2, [2, 3]
            p.zero_boundary, p.valid_outside, p.volume_perservation = True, False, False
            p.domain_min, p.domain_max = [0, 0], [1, 1]
            p.inc = [1.0 / n for n in nc]
            p.nstepsolver, p.numeric_grad, p.use_slow = 50, False, False
            p.nC, p.params_pr_cell = 4 * nc[0] * nc[1], 6
            basis_dir.mkdir(parents=True, exist_ok=True)
            self._dir = str(basis_dir) + os.sep  # libcpab joins it as a string prefix
            self.params = p
            # override=True: compute the basis, never read a cached pickle.
            self.tesselation = Tesselation2D(nc, p.domain_min, p.domain_max, True, False, self._dir, True)
            p.constrain_mat, p.basis = self.tesselation.L, self.tesselation.B
            p.D, p.d = p.basis.shape
            self.device = device

    return DcbenchCpab


def make_cpab(tess_size: Sequence[int], nstepsolver: int = 50, device: str = "cpu") -> Any:
    """A libcpab.Cpab (2D, zero boundary) whose files live under dcbench's cache."""
    cpab = _cpab_class()(tess_size, libcpab_cache() / "basis_files", device)
    cpab.set_solver_params(nstepsolver=int(nstepsolver))
    return cpab


def unit_grid(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixel centres in CPAB's [0, 1]^2 domain, (2, H*W), first row along the width, in the
    row-major order of an (H, W) image."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)])


def sample_at(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of x (N, C, H, W) at points (N, 2, H*W) in [0, 1]^2, zeros outside."""
    n, _, h, w = x.shape
    grid = (points * 2 - 1).transpose(1, 2).reshape(n, h, w, 2)  # [0, 1] -> grid_sample's [-1, 1]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
