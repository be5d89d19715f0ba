"""The plugin interfaces Dataset, Method and Metric, and the data they exchange (the fourth kind of
plugin, the sweep Executor, is in dcbench.executors).

This module imports only numpy, so third-party plugins can subclass these without pulling in
torch at listing time. Methods that need torch import it inside their own modules.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

Direction = Literal["max", "min"]

# Called by a method once per epoch (or per logging step) with the epoch index and the mean of
# each loss term; the runner turns it into a progress bar and checks the numbers are finite.
EpochCallback = Callable[[int, dict[str, float]], None]


class StepProgress(Protocol):
    """Progress within epochs, which the runner passes to fit() as `RunContext.step_progress`.
    Reporting is optional; a method that reports lets the run show an early estimate of its
    duration and a bar that moves during long epochs. TorchMethod's run_epochs and
    optimise_epoch report for you. Both calls are cheap (they read a clock, never a device)."""

    def epoch_started(self, epoch: int) -> None:
        """Epoch `epoch` (0-based; after a resume, the first epoch not yet trained) begins."""

    def step_done(self, step: int, steps_per_epoch: int) -> None:
        """Optimiser step `step` (0-based, within the epoch) of `steps_per_epoch` is done."""


def _ignore_epoch(epoch: int, losses: dict[str, float]) -> None:
    return None


@dataclass(frozen=True)
class RunContext:
    """What the runner hands a method's fit() besides the data (scikit-learn's way: settings in
    __init__, data and the run's circumstances in fit). Every field has a default, so a test or
    a notebook can call `method.fit(train, RunContext())`.

    on_epoch: call it after each epoch with the epoch index and each loss term's mean; the
      runner's progress bar, which also stops the run on a non-finite loss.
    data_facts: facts about the data beyond the inputs, for methods that model the instrument or
      need a class count: "ctf" (DataBundle.ctf or None), "voxel" (Å per voxel/pixel where known,
      else None) and "n_classes" (how many content classes the data have, as k for clustering;
      never any input's label).
    training_state: the run folder's training-state file, for `resumable` methods (None: keep
      none); training_state_interval_s: the least time between two writes of it (0: after every
      epoch; the last epoch is always written).
    work_dir: a folder of the run's own for files a method makes while training (an external
      program's inputs and outputs): `<run folder>/<method name>`, not made in advance; None
      outside a run: make a temporary one.
    step_progress: where to report epochs starting and optimiser steps done, if the method wants
      to (see StepProgress); None outside a run.

    Also callable as on_epoch, so a method written for the older `fit(train, on_epoch)` runs
    unchanged.
    """

    on_epoch: EpochCallback = _ignore_epoch
    data_facts: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    training_state: Path | None = None
    training_state_interval_s: float = 0.0
    work_dir: Path | None = None
    step_progress: StepProgress | None = None

    def __call__(self, epoch: int, losses: dict[str, float]) -> None:
        self.on_epoch(epoch, losses)


@dataclass
class Split:
    """One split of a dataset.

    x: float32 array (N, C, H, W) for images or (N, 1, D, H, W) for volumes, values in [0, 1]
       for images (volumes may be z-scored).
    content: int array (N,), the content class (digit, object, composition).
    conformation: optional int array (N,), conformation labels where known.
    transform_params: optional float array (N, P), true transformation parameters where known.
    names: optional str array (N,), each input's name where the dataset has one (the file or
       RELION's `N@stack.mrcs` its label file gave): the run's STAR exports carry it.
    """

    x: np.ndarray
    content: np.ndarray
    conformation: np.ndarray | None = None
    transform_params: np.ndarray | None = None
    names: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.ndim not in (4, 5):
            raise ValueError(
                f"inputs must be (N, C, H, W) images or (N, 1, D, H, W) volumes, got shape {self.x.shape}"
            )
        if len(self.content) != len(self.x):
            raise ValueError(f"{len(self.content)} content labels for {len(self.x)} inputs")
        for name in ("conformation", "transform_params", "names"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.x):
                raise ValueError(f"{len(value)} {name} rows for {len(self.x)} inputs")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (1, 28, 28)."""
        return tuple(self.x.shape[1:])


@dataclass
class ReferenceMaps:
    """Noise-free ground-truth volumes of a 3D dataset, one per structure (composition x
    conformation), for metrics that compare reconstructions with the truth (AUC-FSC).

    maps: float32 (M, D, H, W), indexed [z, y, x] like the particles, in the particles' frame
    (centred) but without CTF or noise. content / conformation: (M,) labels in the same code
    space as the splits' labels. voxel: size in Å."""

    maps: np.ndarray
    content: np.ndarray
    conformation: np.ndarray | None = None
    names: list[str] | None = None
    voxel: float = 10.0

    def __post_init__(self) -> None:
        if self.maps.ndim != 4:
            raise ValueError(f"reference maps must be (M, D, H, W), got shape {self.maps.shape}")
        if len(self.content) != len(self.maps):
            raise ValueError(f"{len(self.content)} content labels for {len(self.maps)} reference maps")


@dataclass
class DataBundle:
    """What a dataset hands the runner: a train and a test split plus facts about them."""

    train: Split
    test: Split
    class_names: list[str] | None = None
    # Free-form provenance: files read, checksums verified, preprocessing applied.
    provenance: dict[str, Any] = field(default_factory=dict)
    # 3D datasets: ground-truth maps (None where unknown), names of the conformation labels,
    # and the CTF the particles carry ({defocus_um, voltage_kv, cs_mm, amplitude_contrast},
    # None if none or unknown), so that metrics can phase-flip averages.
    references: ReferenceMaps | None = None
    conformation_names: list[str] | None = None
    ctf: dict[str, float] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.train.shape

    @property
    def n_classes(self) -> int:
        return int(len(np.unique(np.concatenate([self.train.content, self.test.content]))))


class Dataset(abc.ABC):
    """A source of train and test inputs with content labels.

    Subclasses set `name`, `shape` (one input's shape, known before loading so that the runner
    can check a method supports it up front) and `default_metrics`, and implement `load`.
    """

    name: ClassVar[str]
    shape: ClassVar[tuple[int, ...]]
    default_metrics: ClassVar[tuple[str, ...]] = ("dscore",)
    # The tables below default to read-only empty mappings: a subclass assigns its own dict, and
    # one that mutated an inherited default would change every other dataset's.
    # Numbers published in papers for this dataset: {method: {metric column: value}}.
    reported: ClassVar[Mapping[str, Mapping[str, float]]] = MappingProxyType({})
    reported_source: ClassVar[str] = ""
    # Options a user sets with `--set data.<option>=value` (e.g. a file path), with their
    # defaults; the value's type decides how the text is parsed (None or str: kept as text).
    option_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    # The type of an option whose default is None (e.g. {"checksums": dict}); dicts and lists
    # are given as JSON. Values are typed while planning, before any run folder exists.
    option_types: ClassVar[Mapping[str, type]] = MappingProxyType({})

    def __init__(self, data_root: Path | None = None, **options: Any) -> None:
        self.data_root = data_root
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            raise ValueError(f"dataset '{self.name}' has no option(s) {', '.join(unknown)}")
        self.options: dict[str, Any] = {**self.option_defaults, **options}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Raise DcbenchError (one line, naming `data.<option>` and what to set) if an option's
        value is out of range, e.g. a fraction above 1. `options` are every option, typed (the
        defaults with the user's values). Called while planning, before any run folder exists,
        so it must be cheap: no file reading, no downloads (missing files are load()'s errors)."""
        return None

    @abc.abstractmethod
    def load(self, seed: int) -> DataBundle:
        """Return the train and test splits. Splits must not depend on the seed unless the
        dataset is simulated; seeds drive simulation and subsampling only."""


@dataclass
class Codes:
    """Content and transformation codes of a set of inputs, one row per input.

    A method without continuous codes (a classifier such as Hydra) returns zero-width arrays,
    shape (N, 0), and its class per input in `assignments`; metrics that need codes then report
    "not applicable" (NaN), and clustering metrics use the assignments instead of k-means."""

    content: np.ndarray
    transformation: np.ndarray
    assignments: np.ndarray | None = None  # (N,) int: the method's own class of each input

    def __post_init__(self) -> None:
        if len(self.content) != len(self.transformation):
            raise ValueError("content and transformation codes have different lengths")
        if self.assignments is not None and len(self.assignments) != len(self.content):
            raise ValueError("assignments and codes have different lengths")


class Method(abc.ABC):
    """A disentanglement method: trains on a dataset, then encodes inputs into codes.

    Lifecycle used by the runner:
      m = MethodClass(config, input_shape, device, seed); m.fit(train, RunContext(...))
      m.save(path); m.encode(x) -> Codes; m.decode(c, z) if m.generative.
    `config` is the resolved dict of this method's settings (defaults for the preset, then
    the user's overrides); `default_config` lists every setting a user may override.
    """

    name: ClassVar[str]
    generative: ClassVar[bool] = False
    # True when fit() honours `context.training_state`: it rewrites that file (atomically) after
    # every epoch with everything needed to continue, and continues from it when it exists at the
    # start of fit(). `dcbench run --resume` and sweeps then pick a killed run up where it
    # stopped; other methods restart training from scratch in the same run folder.
    resumable: ClassVar[bool] = False
    # True for methods that, like Hydra, assign classes only to the inputs they trained on and
    # cannot encode new ones. The runner then fits on the train and test inputs together (one
    # Split, train rows first, labels withheld as -1: no method learns from labels, so seeing
    # the test inputs this way leaks nothing a clustering method may not use) and encode() is
    # only asked for rows of those same inputs.
    transductive: ClassVar[bool] = False
    # Which code holds the conformation of an object, the method's claim: "content" (a
    # conformation is part of what an object is, not of its pose) or "transformation". The ari
    # metric and the classification report cluster that code within each composition.
    conformation_code: ClassVar[Literal["content", "transformation"]] = "content"

    @classmethod
    @abc.abstractmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
        """Every setting with its default for this preset ('quick' or 'paper') and shape.
        Must contain 'epochs'."""

    @classmethod
    def supports(cls, input_shape: tuple[int, ...]) -> str | None:
        """None if the method can run on inputs of this shape, else a reason why not."""
        return None

    @classmethod
    def check_config(cls, config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        """Raise DcbenchError (one line, naming the setting and what to set) if a setting of this
        resolved configuration is out of the method's own range or unusable for inputs of this
        shape (e.g. a binning factor that does not divide the volume). Called while planning,
        after the generic checks of dcbench.settings_checks, before any run folder exists; it
        must be cheap (build nothing large)."""
        return None

    @classmethod
    def check_ready(cls, config: dict[str, Any]) -> None:
        """Raise DcbenchError (one line) if the method cannot run here with this configuration,
        e.g. an external program it drives is missing. The runner calls it before any work, after
        check_config."""
        return None

    @classmethod
    def external_programs(cls, config: dict[str, Any]) -> list[str]:
        """The programs outside Python this configuration would run (paths or names), if any.
        `dcbench reproduce` shows them and runs them only with --allow-external, because a
        leaderboard row's settings may come from someone else."""
        return []

    def __init__(self, config: dict[str, Any], input_shape: tuple[int, ...], device: str, seed: int) -> None:
        self.config = config
        self.input_shape = tuple(input_shape)
        self.device = device
        self.seed = seed

    def check_initialised(self) -> None:
        """Raise PluginError (one line) if Method.__init__ did not run, so that a subclass whose
        own __init__ forgot super().__init__ fails with what to do instead of an AttributeError
        later. The runner calls it right after building the method."""
        missing = [name for name in ("config", "input_shape", "device", "seed") if not hasattr(self, name)]
        if missing:
            from dcbench.errors import PluginError  # here: this module imports only numpy at load

            raise PluginError(f"method '{getattr(self, 'name', type(self).__name__)}' ({type(self).__qualname__}) "
                              f"has no {', '.join(missing)}: its __init__ must call "
                              "super().__init__(config, input_shape, device, seed)")

    @abc.abstractmethod
    def fit(self, train: Split, context: RunContext) -> None:
        """Train on `train`, calling context.on_epoch(epoch, {loss term: mean}) after each epoch;
        the rest of `context` (data facts, training-state file, work folder, step progress) is
        there to use, not to keep: encode/decode/save must not need it."""

    @abc.abstractmethod
    def encode(self, x: np.ndarray) -> Codes:
        """Encode inputs (N, *input_shape) into deterministic codes (posterior means)."""

    def decode(self, content: np.ndarray, transformation: np.ndarray) -> np.ndarray:
        """Generate inputs from (content, transformation) code pairs; generative methods only."""
        raise TypeError(f"method '{self.name}' is not generative and cannot decode")

    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Write the trained state to `path` (the runner makes the write atomic)."""

    @abc.abstractmethod
    def load_state(self, path: Path) -> None:
        """Restore a state written by `save`; must not execute code from the file."""


@dataclass
class MetricInput:
    """Everything a metric may look at. Codes are of the train and test splits."""

    train_codes: Codes
    test_codes: Codes
    data: DataBundle
    method: Method
    seed: int
    # Where a metric may draw figures of its own (the run's figures/ folder); None: draw none.
    # compute returns the files it drew in MetricResult.figures.
    figures_dir: Path | None = None


@dataclass(frozen=True, eq=False)
class MetricResult(Mapping[str, float]):
    """What compute may return instead of a {column: value} dict: the scores and the figures it
    drew, {kind (the leaderboard's link, e.g. "cluster averages"): file under figures_dir}.
    Reads as the scores mapping itself, so code that indexes a metric's result works with both."""

    scores: Mapping[str, float]
    figures: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))

    def __getitem__(self, column: str) -> float:
        return self.scores[column]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)


class Metric(abc.ABC):
    """A score computed from codes, labels and, where needed, the trained method.

    `columns` maps each number the metric reports to its direction: 'max' if higher is better,
    'min' if lower is better. `compute` returns {column: value} or a MetricResult (with the
    figures it drew); NaN means "not applicable".

    `requires`: what the metric needs, names from dcbench.metric_contract.REQUIREMENTS. The
    runner and `dcbench score` check it first: if one is unmet, compute is not called, every
    column is NaN and the run's provenance.json says why ("not_applicable"). compute still
    returns NaN for what only the data can tell (e.g. fewer than two classes).
    `settings`: every tuning value that can change a number (a subsample size), read as
    `self.settings[...]`; recorded in the run's config.json and leaderboard row
    ("metric_settings"). A subclass changes them with `settings = {**Base.settings, "key": v}`.
    """

    name: ClassVar[str]
    columns: ClassVar[dict[str, Direction]]
    requires: ClassVar[frozenset[str]] = frozenset()
    settings: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        from dcbench.metric_contract import check_requires  # here: this module imports only numpy at load

        # a set or a dict in the class body: stored read-only, names checked when the plugin loads
        cls.requires = check_requires(cls.__qualname__, cls.requires)
        if "settings" in cls.__dict__:
            cls.settings = MappingProxyType(dict(cls.settings))

    @abc.abstractmethod
    def compute(self, inputs: MetricInput) -> Mapping[str, float]:
        ...
