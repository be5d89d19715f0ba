"""Shared machinery for methods written in PyTorch: devices, seeding, batching, precision,
state files, and a Method base class that handles encoding and saving.

Imported only by method plugins, never at `dcbench list` / `--help` time.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dcbench import atomic
from dcbench.api import Codes, Method, RunContext, StepProgress
from dcbench.errors import DcbenchError
from dcbench.volume_input import VolumeInput

TRAINING_STATE_FORMAT = 1


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; 'cuda' without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DcbenchError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise DcbenchError(f"unknown device '{device}': use auto, cpu or cuda")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a torch.Generator for the method's own draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: Any) -> None:
    if precision not in PRECISIONS:
        raise DcbenchError(f"unknown precision '{precision}': use {', '.join(PRECISIONS)}")


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The dtype to autocast to for `precision` in {auto, fp32, bf16}; None means fp32."""
    check_precision(precision)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def autocast(device: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def make_adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch has one for the parameters' device: one
    kernel for all parameters instead of a Python loop of small ops on CPU (where torch does
    not default to foreach). The same update rule."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused Adam for this device or torch
        return torch.optim.Adam(params, lr=lr)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_freed_memory_retained = False


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the kernel.

    A CPU training step allocates and frees the same tens of MB of activations every step; by
    default glibc unmaps or trims them and the next step page-faults them in again (about 2000
    faults per DualContrast step on MNIST, see docs/performance.md). This keeps blocks under
    32 MiB on the heap and never trims it, so the process holds its peak memory. Process-wide
    and permanent; a no-op without glibc. Returns whether it applied."""
    global _freed_memory_retained
    if _freed_memory_retained or not sys.platform.startswith("linux"):
        return _freed_memory_retained
    try:
        libc = ctypes.CDLL(None)
        # Set both: fixing either one turns off glibc's dynamic thresholds.
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        ok = False
    _freed_memory_retained = ok
    return ok


def minibatches(n: int, batch_size: int, gen: torch.Generator, shuffle: bool = True) -> Iterator[torch.Tensor]:
    """Index tensors covering 0..n-1 once; the last batch may be smaller (nothing is dropped)."""
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    yield from order.split(batch_size)


class LossMeter:
    """Sums loss terms as detached tensors and averages them at the end of an epoch, so the
    training loop does not synchronise on .item() every step."""

    def __init__(self) -> None:
        self.totals: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for key, value in terms.items():
            value = value.detach().float()
            self.totals[key] = self.totals[key] + value if key in self.totals else value
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: float(v) / max(self.steps, 1) for k, v in self.totals.items()}


class TorchMethod(Method, abc.ABC):
    """A Method whose state is one nn.Module (`self.model`) built by `build_model`.

    Subclasses implement `build_model`, `fit` and `encode_tensor`; this class handles devices,
    batched encoding to numpy, safe state files (weights only, loaded with weights_only=True),
    and resumable training: a fit() that loops through `run_epochs` checkpoints every epoch.
    """

    encode_batch_size = 500
    resumable = True
    # How the networks see volumes (low-pass, binning); build_model may set it from the config.
    # encode() and training_tensor() apply it; a generative method's decode() calls restore().
    volume_input = VolumeInput()

    @classmethod
    def check_config(cls, config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        """The settings TorchMethods share, where the config has them: `precision`, and the
        volume input's `lowpass_sigma` / `bin` (for this shape). Subclasses add their own."""
        if "precision" in config:
            check_precision(config["precision"])
        VolumeInput.from_config(config, input_shape)

    def __init__(self, config: dict[str, Any], input_shape: tuple[int, ...], device: str, seed: int) -> None:
        super().__init__(config, input_shape, resolve_device(device), seed)
        self.generator = seed_everything(seed)
        self.model = self.build_model().to(self.device)

    @abc.abstractmethod
    def build_model(self) -> nn.Module: ...

    @abc.abstractmethod
    def encode_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(content, transformation) codes of a batch, in eval mode."""

    def optimise_epoch(self, data: torch.Tensor, optimizer: torch.optim.Optimizer,
                       step_losses: Callable[[torch.Tensor], dict[str, torch.Tensor]],
                       max_steps: int | None = None, progress: StepProgress | None = None) -> dict[str, float]:
        """One pass over `data` in shuffled minibatches of config['batch_size'] (only the first
        max_steps if given): step_losses(batch) gives the loss terms, 'total' is minimised with
        one optimiser step per batch. Returns the epoch's mean of each term. Each step is
        reported to `progress` if given (the run context's step_progress)."""
        if self.device == "cpu" and self.config.get("retain_freed_memory", True):
            retain_freed_memory()
        self.model.train()
        meter = LossMeter()
        batch_size = int(self.config["batch_size"])
        steps = math.ceil(len(data) / batch_size)
        if max_steps is not None:
            steps = min(steps, max_steps)
        for step, index in enumerate(minibatches(len(data), batch_size, self.generator)):
            if step >= steps:
                break
            terms = step_losses(data[index.to(self.device)])
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            meter.add(terms)
            if progress is not None:  # reads a clock only: no device synchronisation
                progress.step_done(step, steps)
        return meter.means()

    def run_epochs(self, train_one_epoch: Callable[[int], dict[str, float]], context: RunContext,
                   optimizer: torch.optim.Optimizer, scheduler: Any | None = None) -> None:
        """The epoch loop of fit(): train_one_epoch(epoch) -> loss means, then the scheduler's
        step, then context.on_epoch. After an epoch the whole training state (weights, optimiser,
        scheduler, every random generator, epochs done) is written atomically to
        `context.training_state` (at most every `training_state_interval_s`, and after the last
        epoch); when that file exists at the start, training continues after its last epoch and
        ends where an uninterrupted run would have."""
        path = context.training_state
        start = self.restore_training_state(path, optimizer, scheduler)
        epochs = int(self.config["epochs"])
        last_stored = time.monotonic()
        for epoch in range(start, epochs):
            if context.step_progress is not None:
                context.step_progress.epoch_started(epoch)  # after a resume: the estimate counts epochs left
            means = train_one_epoch(epoch)
            if scheduler is not None:
                scheduler.step()
            context.on_epoch(epoch, means)  # raises on a non-finite loss: no checkpoint of a diverged model
            if epoch + 1 == epochs or time.monotonic() - last_stored >= context.training_state_interval_s:
                self.store_training_state(path, epoch + 1, optimizer, scheduler)
                last_stored = time.monotonic()

    def store_training_state(self, path: Path | None, epochs_done: int, optimizer: torch.optim.Optimizer,
                             scheduler: Any | None) -> None:
        """Write the whole training state to `path` atomically (nothing if path is None)."""
        if path is None:
            return
        state = {"format": TRAINING_STATE_FORMAT, "epochs_done": epochs_done,
                 "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": None if scheduler is None else scheduler.state_dict(),
                 "rng": capture_rng_state(self.generator)}
        atomic.write_with(path, lambda handle: torch.save(state, handle))

    def restore_training_state(self, path: Path | None, optimizer: torch.optim.Optimizer,
                               scheduler: Any | None) -> int:
        """Load the training state at `path` if it exists; return the number of epochs it has done."""
        if path is None or not Path(path).exists():
            return 0
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            if state.get("format") != TRAINING_STATE_FORMAT:
                raise ValueError(f"format {state.get('format')!r}, expected {TRAINING_STATE_FORMAT}")
            self.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state["scheduler"] is not None:
                scheduler.load_state_dict(state["scheduler"])
            restore_rng_state(state["rng"], self.generator)
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0]  # torch's own messages run to many lines
            raise DcbenchError(f"cannot continue from the training state {path}: {type(exc).__name__}: {reason}; "
                               "delete it to train this run from the start") from exc
        return int(state["epochs_done"])

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=self.device)

    def training_tensor(self, x: np.ndarray) -> torch.Tensor:
        """The training inputs as the networks see them (`volume_input`), prepared in chunks so
        that filtering a large set needs little more memory than the set."""
        if self.volume_input.identity:
            return self.to_tensor(x)
        return torch.cat([self.volume_input.prepare(self.to_tensor(x[i:i + self.encode_batch_size]))
                          for i in range(0, len(x), self.encode_batch_size)])

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> Codes:
        self.model.eval()
        parts = [self.encode_tensor(self.volume_input.prepare(self.to_tensor(x[i:i + self.encode_batch_size])))
                 for i in range(0, len(x), self.encode_batch_size)]
        content = torch.cat([p[0] for p in parts]).float().cpu().numpy()
        transformation = torch.cat([p[1] for p in parts]).float().cpu().numpy()
        return Codes(content=content, transformation=transformation)

    def save(self, path: Path) -> None:
        torch.save({"model": self.model.state_dict()}, path)

    def load_state(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
        except Exception as exc:
            raise DcbenchError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def capture_rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random generator training may draw from, as tensors and plain Python values (so
    that the file loads with torch.load(weights_only=True))."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"generator": generator.get_state(), "torch": torch.get_rng_state(),
                             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                                       "position": int(position), "has_gauss": int(has_gauss),
                                       "cached_gaussian": float(cached)},
                             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
