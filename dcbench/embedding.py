"""2D embeddings of codes, drawn as scatter plots coloured by class.

t-SNE from scikit-learn by default; UMAP (umap-learn, the `umap` extra) when it is installed.
At most `max_points` codes are embedded (a seeded, class-stratified-by-chance subset): t-SNE on
all 10,000 MNIST test codes takes minutes on 2 cores and draws the same picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcbench import atomic


def embed_2d(codes: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """(N, d) codes -> ((N, 2) points, name of the algorithm used)."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.shape[1] <= 2:  # already drawable
        points = codes if codes.shape[1] == 2 else np.column_stack([codes[:, 0], np.zeros(len(codes))])
        return points, "raw"
    try:
        import umap  # type: ignore[import-not-found]
    except ImportError:
        umap = None
    if umap is not None:
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(codes), "UMAP"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(codes) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(codes), "t-SNE"


def embedding_figure(codes: np.ndarray, labels: np.ndarray, target: Path, title: str, seed: int = 0,
                     class_names: list[str] | None = None, max_points: int = 2000) -> Path:
    """Write a PNG scatter plot of a 2D embedding of `codes`, one colour per label."""
    return embedding_panels(codes, [(title, labels, class_names)], target, seed, max_points)


Panel = tuple[str, np.ndarray, list[str] | None]  # (title, labels, label names)


def embedding_panels(codes: np.ndarray, panels: list[Panel], target: Path, seed: int = 0,
                     max_points: int = 2000) -> Path:
    """One 2D embedding of `codes`, drawn once per panel with that panel's labels as colours
    (e.g. composition on the left, conformation on the right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = np.arange(len(codes))
    if len(codes) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(codes), max_points, replace=False))
    points, algorithm = embed_2d(codes[keep], seed)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), dpi=120, squeeze=False)
    for ax, (title, labels, names) in zip(axes[0], panels):
        labels = np.asarray(labels)[keep]
        classes = np.unique(labels)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for k, label in enumerate(classes):
            mask = labels == label
            name = names[int(label)] if names and 0 <= int(label) < len(names) else str(label)
            ax.scatter(points[mask, 0], points[mask, 1], s=4, color=cmap(k % cmap.N), label=name, alpha=0.8)
        ax.set_title(f"{title} ({algorithm})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False, ncol=2 if len(classes) > 10 else 1)
    fig.tight_layout()
    atomic.write_with(target, lambda handle: fig.savefig(handle, format="png"))
    plt.close(fig)
    return target
