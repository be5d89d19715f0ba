"""The figures every run leaves in its `figures/` folder, by kind (the leaderboard's link):

- embedding, content_embedding.png: a 2D embedding of the test content codes coloured by
  content class and, where the dataset has conformation labels, a second panel of the same
  points by conformation; none for zero-width content codes (methods such as Hydra that only
  assign classes).
- transfer grid, transfer_grid.png (generative methods): Dec(c, z) swapped across one test input
  per class; volumes show their central slice.
- montage, volume_montage.png (volumes): slice-by-slice montage of one test input per class and,
  for generative methods, its reconstruction Dec(c, z) beneath it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcbench.api import Codes, DataBundle, Method
from dcbench.finite import checked_decode


def write_run_figures(method: Method, data: DataBundle, test_codes: Codes, folder: Path, title: str,
                      seed: int) -> dict[str, Path]:
    """Draw the run's figures into `folder`; returns {kind: file} of those drawn."""
    from dcbench.embedding import embedding_panels
    from dcbench.figures import one_per_class, transfer_grid, volume_montage

    test = data.test
    panels = [(f"{title}: test content codes by class", test.content, data.class_names)]
    if test.conformation is not None:
        panels.append(("... and by conformation", test.conformation, data.conformation_names))
    drawn: dict[str, Path] = {}
    if test_codes.content.shape[1] > 0:  # zero-width: nothing to embed
        drawn["embedding"] = embedding_panels(test_codes.content, panels, folder / "content_embedding.png", seed)
    if method.generative:
        drawn["transfer grid"] = transfer_grid(method, test, folder / "transfer_grid.png")
    if test.x.ndim == 5:
        idx = one_per_class(test)
        rows = [test.x[idx]]
        if method.generative:
            codes = method.encode(test.x[idx])
            rows.append(checked_decode(method, codes.content, codes.transformation, "the volume montage"))
        # input above its reconstruction, class by class
        drawn["montage"] = volume_montage(np.stack(rows, 1).reshape(-1, *test.x.shape[1:]),
                                          folder / "volume_montage.png", step=2)
    return drawn
