"""The run's training curves: every loss term the method reports, per epoch, one panel each
(figures/training_curves.png, kind "training curves"), so that a reader sees whether a run had
converged, stalled or diverged without opening provenance.json."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

KIND = "training curves"
FILE = "training_curves.png"


def loss_terms(history: Sequence[Mapping[str, float]]) -> list[str]:
    """The terms recorded in the history, in first-seen order, 'epoch' left out."""
    terms: list[str] = []
    for entry in history:
        terms += [key for key in entry if key != "epoch" and key not in terms]
    return terms


def draw_training_curves(history: Sequence[Mapping[str, float]], target: Path, title: str,
                         lr_steps: Sequence[int] = ()) -> Path | None:
    """Draw one panel per loss term against the epoch (1-based), log-scaled where every value is
    positive, with a dashed line after each epoch in lr_steps (1-based: the last epoch at the
    old learning rate). None (nothing drawn) for under two epochs or a history without terms."""
    terms = loss_terms(history)
    if len(history) < 2 or not terms:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(terms))
    rows = math.ceil(len(terms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, term in zip(axes.flat, terms):
        points = [(entry["epoch"] + 1, entry[term]) for entry in history
                  if isinstance(entry.get(term), (int, float)) and math.isfinite(entry[term])]
        if points:
            epochs, values = zip(*points)
            ax.plot(epochs, values, lw=1.2)
            if min(values) > 0:
                ax.set_yscale("log")
        for step in lr_steps:
            ax.axvline(step + 0.5, color="grey", ls="--", lw=0.8)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(which="both", labelsize=8)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    note = " (dashed: learning-rate steps)" if lr_steps else ""
    fig.suptitle(f"{title}: training loss terms per epoch{note}", fontsize=10)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def lr_step_epochs(config: Mapping[str, object]) -> list[int]:
    """Epochs (1-based) after which a step-decay schedule (torch's StepLR, stepped once an epoch)
    lowers the learning rate, from the method's lr_step_epochs setting; [] for methods without one."""
    every, epochs = config.get("lr_step_epochs"), config.get("epochs")
    if not isinstance(every, int) or not isinstance(epochs, int) or every <= 0:
        return []
    return list(range(every, epochs, every))


def write_for_run(folder: Path, history: Sequence[Mapping[str, float]], config: Mapping[str, object],
                  title: str) -> dict[str, Path]:
    """The run's training curves in `folder`, as {KIND: file} for figures.json; {} if none drawn."""
    drawn = draw_training_curves(history, Path(folder) / FILE, title, lr_step_epochs(config))
    return {KIND: drawn} if drawn is not None else {}
