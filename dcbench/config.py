"""Run settings: presets, `--set key=value` overrides, and the resolved configuration."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcbench.errors import DcbenchError, unknown_name_message
from dcbench.settings_checks import check_data_settings, check_method_config

PRESETS = ("quick", "paper")
# Settings the runner itself owns (everything else belongs to the method).
DATA_SETTINGS = {"data.train_size": 0, "data.test_size": 0}


@dataclass
class RunSpec:
    """What the user asked for on the command line."""

    method: str
    dataset: str
    metrics: list[str] = field(default_factory=list)
    seed: int = 0
    preset: str = "quick"
    epochs: int | None = None
    device: str = "auto"
    overrides: dict[str, str] = field(default_factory=dict)
    data_root: Path | None = None
    runs_dir: Path = Path("runs")
    leaderboard_dir: Path | None = Path("leaderboards")
    # The training state is rewritten at most this often (and after the last epoch); 0: every
    # epoch. A 3D DualContrast state is ~2 GB, which costs seconds to write.
    checkpoint_every_s: float = 60.0

    def settings(self) -> dict[str, Any]:
        """What the run is, as JSON: the one shape that a run's config.json, its leaderboard
        row's "spec" and `dcbench reproduce` share. Where and how it runs (folders, device,
        checkpoint interval) is not part of it."""
        return {"method": self.method, "dataset": self.dataset, "seed": int(self.seed), "preset": self.preset,
                "epochs": self.epochs, "overrides": dict(self.overrides), "metrics": list(self.metrics)}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **where: Any) -> RunSpec:
        """The inverse of settings(); `where` gives the rest (runs_dir=..., device=...)."""
        epochs = settings.get("epochs")
        return cls(method=str(settings["method"]), dataset=str(settings["dataset"]), seed=int(settings["seed"]),
                   preset=str(settings["preset"]), epochs=None if epochs is None else int(epochs),
                   overrides={str(k): str(v) for k, v in (settings.get("overrides") or {}).items()},
                   metrics=[str(m) for m in settings.get("metrics") or []], **where)


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['lr=1e-3', 'transform=blur'] -> {'lr': '1e-3', 'transform': 'blur'}."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DcbenchError(f"--set expects key=value, got '{item}'")
        parsed[key.strip()] = value.strip()
    return parsed


def coerce(key: str, text: str, default: Any) -> Any:
    """Convert a --set value to the type of the setting's default."""
    try:
        if isinstance(default, bool):
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise DcbenchError(f"setting '{key}' expects a {type(default).__name__}, got '{text}'") from None
    return text


def coerce_declared(key: str, text: str, default: Any, declared: type | None) -> Any:
    """coerce(), for an option whose type is declared (Dataset.option_types) because its default
    (None) does not show it: dicts and lists are read as JSON."""
    if declared is None or isinstance(default, declared):
        return coerce(key, text, default)
    if declared in (dict, list):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, declared):
            raise DcbenchError(f"setting '{key}' expects a {declared.__name__} written as JSON, got '{text}'")
        return value
    return coerce(key, text, declared())  # bool, int, float, str: the type's zero value gives the type


def resolve_method_config(defaults: dict[str, Any], overrides: dict[str, str], epochs: int | None,
                          method_name: str, option_defaults: dict[str, Any] | None = None,
                          option_types: dict[str, type] | None = None,
                          check_options: Callable[[dict[str, Any]], None] | None = None,
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply overrides to a method's defaults, typed and range-checked. Returns (method config,
    data settings): the runner's data.train_size / data.test_size plus the dataset's own options
    as data.<option> (typed by their defaults, or by `option_types` where the default is None),
    checked by `check_options` (the dataset's Dataset.check_options) when given."""
    config = dict(defaults)
    data = dict(DATA_SETTINGS)
    data.update({f"data.{key}": value for key, value in (option_defaults or {}).items()})
    declared = {f"data.{key}": kind for key, kind in (option_types or {}).items()}
    for key, text in overrides.items():
        short = key.removeprefix("method.")
        if key in data:
            data[key] = coerce_declared(key, text, data[key], declared.get(key))
        elif short in config:
            config[short] = coerce(key, text, config[short])
        else:
            known = sorted(config) + sorted(data)
            raise DcbenchError(unknown_name_message(f"setting for {method_name}", key, known))
    if epochs is not None:
        if epochs < 1:
            raise DcbenchError(f"--epochs must be at least 1, got {epochs}")
        config["epochs"] = epochs
    check_method_config(config, method_name)
    check_data_settings(data)
    if check_options is not None:  # the dataset's own ranges (e.g. a fraction in (0, 1))
        check_options(dataset_options(data))
    return config, data


def dataset_options(data_settings: dict[str, Any]) -> dict[str, Any]:
    """The dataset's own options out of the data settings ({'data.path': p} -> {'path': p})."""
    return {key.removeprefix("data."): value for key, value in data_settings.items() if key not in DATA_SETTINGS}


def preset_label(preset: str, overrides: dict[str, str], epochs: int | None) -> str:
    """The leaderboard's name for a budget: the preset plus whatever the user changed."""
    changes = dict(overrides)
    if epochs is not None:
        changes["epochs"] = str(epochs)
    if not changes:
        return preset
    return preset + " " + " ".join(f"{k.removeprefix('method.')}={v}" for k, v in sorted(changes.items()))
