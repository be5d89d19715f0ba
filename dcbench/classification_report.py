"""Classification report of a run's test split, as SHREC'19/'21 cryo-ET classification reports
show them: per confusion matrix (true class x cluster), clusters matched one-to-one to classes by
the Hungarian algorithm, the matched accuracy, the chance level and per-class precision, recall,
F1 and support.

- Compositions: the method's own classes (Codes.assignments, e.g. Hydra) where it has them, else
  k-means on the test content codes with k = the number of true compositions (dcbench.clustering,
  as the `ari` metric clusters them).
- Conformations: within each true composition, k-means on the codes that hold conformation (the
  method's `conformation_code`, default "content", as for ARI(conformation)) with k = the number of
  conformations present there; a composition with one conformation, with no more particles than
  conformations, or a method without codes is listed as skipped, as ARI(conformation) skips it.
  Conformation labels are ids into DataBundle.conformation_names, shared by all compositions
  (subtomo-sim's hinge angles, the label files' names), so each composition's rows are the
  conformations present in it.
- Chance: the mean matched accuracy of CHANCE_DRAWS random relabellings of the same particles
  with the same cluster sizes (the clusters' ids shuffled over the particles, seeded), which is
  what matching alone buys on no signal: 1/k for many particles in balanced classes and clusters,
  more for few particles or unbalanced ones.

The runner writes the report (classification_report.json, .md and .png in the run folder) for
every run whose test split has conformation labels; `dcbench report RUN_DIR` rewrites it from a
finished run's codes.npz, also for a run without conformation labels (then composition only).
Both list the .md and .png in the run's figures.json (REPORT_KINDS), which the leaderboard links.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dcbench import atomic
from dcbench.api import Codes, DataBundle, Method
from dcbench.clustering import kmeans
from dcbench.errors import DcbenchError

REPORT_JSON = "classification_report.json"
REPORT_MD = "classification_report.md"
REPORT_PNG = "classification_report.png"
REPORT_KINDS = {REPORT_MD: "classification report", REPORT_PNG: "confusion matrices"}  # file -> the board's link
FORMAT = "dcbench classification report 1"
CHANCE_DRAWS = 1000


def _name(names: Sequence[str] | None, label: int) -> str:
    return str(names[label]) if names is not None and 0 <= label < len(names) else str(label)


def _confusion(true_index: np.ndarray, cluster_index: np.ndarray, n_classes: int, n_clusters: int) -> np.ndarray:
    return np.bincount(true_index * n_clusters + cluster_index, minlength=n_classes * n_clusters).reshape(
        n_classes, n_clusters)


def _shuffled_confusions(true_index: np.ndarray, cluster_index: np.ndarray, shape: tuple[int, int],
                         seed: int) -> np.ndarray:
    """(CHANCE_DRAWS, classes, clusters) confusion matrices of the clusters' ids shuffled over
    the particles (same cluster sizes), all drawn at once."""
    shuffled = np.random.default_rng(seed).permuted(np.tile(cluster_index, (CHANCE_DRAWS, 1)), axis=1)
    cells = shape[0] * shape[1]
    flat = (np.arange(CHANCE_DRAWS)[:, None] * cells + true_index[None] * shape[1] + shuffled).ravel()
    return np.bincount(flat, minlength=CHANCE_DRAWS * cells).reshape(CHANCE_DRAWS, *shape)


def _matched_accuracy(confusion: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(confusion, maximize=True)
    return float(confusion[rows, cols].sum() / confusion.sum()), rows, cols


def matched_section(true: np.ndarray, clusters: np.ndarray, names: Sequence[str] | None, seed: int) -> dict[str, Any]:
    """Confusion matrix of true labels x clusters, clusters matched to classes (Hungarian, most
    particles on the diagonal), matched accuracy, chance and per-class scores. Columns are ordered
    so that each class's matched cluster sits on the diagonal; clusters matched to no class (more
    clusters than classes) come last, and a class matched to no cluster (fewer) scores 0."""
    true, clusters = np.asarray(true, np.int64), np.asarray(clusters, np.int64)
    classes, true_index = np.unique(true, return_inverse=True)
    cluster_ids, cluster_index = np.unique(clusters, return_inverse=True)
    confusion = _confusion(true_index, cluster_index, len(classes), len(cluster_ids))
    accuracy, rows, cols = _matched_accuracy(confusion)
    match = dict(zip(rows.tolist(), cols.tolist()))  # class index -> cluster index
    order = [match[i] for i in range(len(classes)) if i in match]
    order += [j for j in range(len(cluster_ids)) if j not in order]
    class_of = {j: i for i, j in match.items()}
    per_class = []
    for i, label in enumerate(classes.tolist()):
        support = int(confusion[i].sum())
        j = match.get(i)
        hits = int(confusion[i, j]) if j is not None else 0
        predicted = int(confusion[:, j].sum()) if j is not None else 0
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"id": label, "name": _name(names, label),
                          "cluster": None if j is None else int(cluster_ids[j]),
                          "precision": precision, "recall": recall, "f1": f1, "support": support})
    draws = [_matched_accuracy(c)[0] for c in _shuffled_confusions(true_index, cluster_index, confusion.shape, seed)]
    return {
        "n": int(len(true)), "k": int(len(cluster_ids)),
        "classes": [{"id": c["id"], "name": c["name"]} for c in per_class],
        # column j: cluster id, and the class it was matched to (None: unmatched)
        "clusters": [{"id": int(cluster_ids[j]),
                      "matched_to": per_class[class_of[j]]["name"] if j in class_of else None} for j in order],
        "confusion": confusion[:, order].tolist(),
        "matched_accuracy": accuracy,
        "chance_accuracy": float(np.mean(draws)),
        "per_class": per_class,
        "macro": {key: float(np.mean([c[key] for c in per_class])) for key in ("precision", "recall", "f1")},
    }


def build_report(labels: np.ndarray, content: np.ndarray, transformation: np.ndarray, seed: int, *,
                 conformation: np.ndarray | None = None, assignments: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None, conformation_names: Sequence[str] | None = None,
                 conformation_code: str = "content", about: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report (a JSON-ready dict) of a test split: true compositions `labels`, codes (N, d)
    and optionally the true conformations and the method's own class assignments. `about` (method,
    dataset, preset, seed ...) is copied into it for the title."""
    labels = np.asarray(labels, np.int64)
    report: dict[str, Any] = {"format": FORMAT, **(about or {}), "seed": int(seed), "n_test": int(len(labels))}
    k = len(np.unique(labels))
    if assignments is not None:
        report["composition_source"] = "the method's own class assignments"
        report["composition"] = matched_section(labels, assignments, class_names, seed)
    elif content.shape[1] == 0:
        report["composition_source"] = None
        report["composition"] = {"skipped": "the method has neither content codes nor class assignments"}
    elif len(labels) <= k:
        report["composition_source"] = None
        report["composition"] = {"skipped": f"{len(labels)} test particles cannot form {k} clusters"}
    else:
        report["composition_source"] = f"k-means on the content codes (k = {k}, 10 initialisations, seed {seed})"
        report["composition"] = matched_section(labels, kmeans(content, k, seed), class_names, seed)
    report["conformation"] = None if conformation is None else _conformations(
        labels, np.asarray(conformation, np.int64), transformation if conformation_code == "transformation"
        else content, seed, class_names, conformation_names, conformation_code)
    return report


def _conformations(labels: np.ndarray, conformation: np.ndarray, codes: np.ndarray, seed: int,
                   class_names: Sequence[str] | None, conformation_names: Sequence[str] | None,
                   which: str) -> dict[str, Any]:
    per_composition = []
    for composition in np.unique(labels).tolist():
        members = labels == composition
        present = len(np.unique(conformation[members]))
        entry: dict[str, Any] = {"composition": _name(class_names, composition), "composition_id": composition}
        if codes.shape[1] == 0:
            entry["skipped"] = "the method has no codes to cluster"
        elif present < 2:
            entry["skipped"] = "one conformation: nothing to separate"
        elif members.sum() <= present:
            entry["skipped"] = f"{int(members.sum())} particles cannot form {present} clusters"
        else:
            clusters = kmeans(codes[members], present, seed)
            entry.update(matched_section(conformation[members], clusters, conformation_names, seed))
        per_composition.append(entry)
    scored = [e for e in per_composition if "skipped" not in e]

    def mean(key: str) -> float | None:
        return float(np.mean([e[key] for e in scored])) if scored else None

    return {"code": which, "compositions_scored": len(scored), "mean_matched_accuracy": mean("matched_accuracy"),
            "mean_chance_accuracy": mean("chance_accuracy"), "per_composition": per_composition}


def write_report(folder: Path, report: dict[str, Any]) -> list[Path]:
    """Write the report's JSON, Markdown and confusion-matrix PNG into `folder`; returns their paths."""
    from dcbench.classification_report_render import confusion_figure, markdown

    folder = Path(folder)
    figure = confusion_figure(report, folder / REPORT_PNG)  # None when nothing was scored
    atomic.write_json(folder / REPORT_JSON, report)
    atomic.write_text(folder / REPORT_MD, markdown(report, REPORT_PNG if figure else None))
    return [folder / REPORT_JSON, folder / REPORT_MD, *([figure] if figure else [])]


def write_for_run(run_dir: Path, method: Method, data: DataBundle, test_codes: Codes, seed: int) -> dict[str, Path]:
    """The runner's hook: the report of a run, written into its folder only where the test split
    has conformation labels (a 3D dataset's); returns {kind: file} of what the board links (the
    Markdown, the confusion matrices), {} when nothing was written."""
    from dcbench.records import read_json_or_none

    test = data.test
    if test.conformation is None:
        return {}
    config = read_json_or_none(Path(run_dir) / "config.json")
    about = _about(config if isinstance(config, dict) else {})  # as `dcbench report` reads it back
    report = build_report(test.content, test_codes.content, test_codes.transformation, seed,
                          conformation=test.conformation, assignments=test_codes.assignments,
                          class_names=data.class_names, conformation_names=data.conformation_names,
                          conformation_code=method.conformation_code, about=about)
    return linked(write_report(run_dir, report))


def linked(paths: list[Path]) -> dict[str, Path]:
    """{kind: file} of the report files the leaderboard links, among those written."""
    return {REPORT_KINDS[path.name]: path for path in paths if path.name in REPORT_KINDS}


CODES_FILE = "codes.npz"  # written by dcbench.runner.save_codes


def read_run_codes(run_dir: Path) -> dict[str, np.ndarray]:
    import zipfile

    path = run_dir / CODES_FILE
    if not path.is_file():
        raise DcbenchError(f"{run_dir} has no {CODES_FILE}: the run did not get as far as encoding "
                           "(its provenance.json says how far it got)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DcbenchError(f"{path} is not a readable codes file ({type(exc).__name__}: {exc})") from None
    missing = [key for key in ("test_content", "test_transformation", "test_labels") if key not in arrays]
    if missing:
        raise DcbenchError(f"{path} lacks {', '.join(missing)}; it was not written by dcbench's runner")
    return arrays


def _names_from_data(config: dict[str, Any], seed: int) -> tuple[list[str] | None, list[str] | None]:
    """Class and conformation names of the run's dataset, loaded again with its recorded settings
    (for runs whose codes.npz predates the names being saved there)."""
    from dcbench.registry import get_registry
    from dcbench.runner import load_data

    dataset_cls = get_registry().load("dataset", str(config.get("dataset")))
    data = load_data(dataset_cls, config.get("data") or {}, config.get("data_root"), seed)  # as the run loaded it
    return data.class_names, data.conformation_names


def report_from_run(run_dir: Path, load_names: bool = False) -> dict[str, Any]:
    """The report of a finished run, from its codes.npz and config.json, without retraining.
    Class names come from codes.npz (runs since the report exists), else from the dataset loaded
    again when `load_names`, else they are the label ids."""
    from dcbench.registry import get_registry

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    arrays = read_run_codes(run_dir)
    seed = int(config["seed"])
    class_names, conformation_names = ([str(v) for v in arrays[key].tolist()] if key in arrays else None
                                       for key in ("class_names", "conformation_names"))
    if class_names is None and load_names:
        class_names, conformation_names = _names_from_data(config, seed)
    registry = get_registry()
    method = str(config["method"])
    # which code holds conformation is the method's claim (as for ARI); an unknown method: the default
    which = (registry.load("method", method) if method in registry.names("method") else Method).conformation_code
    return build_report(arrays["test_labels"], arrays["test_content"], arrays["test_transformation"], seed,
                        conformation=arrays.get("test_conformation"), assignments=arrays.get("test_assignments"),
                        class_names=class_names, conformation_names=conformation_names, conformation_code=which,
                        about=_about(config))


def _about(config: dict[str, Any]) -> dict[str, Any]:
    """What the report's title names, from a run's config.json (the runner passes the same)."""
    return {"method": config.get("method"), "dataset": config.get("dataset"), "preset": config.get("preset_label")}


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's config.json, checked to name a method, a dataset and a seed."""
    from dcbench.records import read_json_or_none

    if not Path(run_dir).is_dir():
        raise DcbenchError(f"{run_dir} is not a folder; give a run folder (runs/<dataset>/<method>/<run>)")
    config = read_json_or_none(Path(run_dir) / "config.json")
    if not isinstance(config, dict) or not isinstance(config.get("seed"), int) or "method" not in config \
            or not isinstance(config.get("dataset"), str):
        raise DcbenchError(f"{run_dir} has no readable config.json with a method, dataset and seed; is it a dcbench "
                           "run folder?")
    return config


def run_dataset(run_dir: Path) -> str:
    """The dataset a finished run used (its config.json)."""
    return str(read_run_config(run_dir)["dataset"])


def rewrite(run_dir: Path, load_names: bool = False) -> str:
    """`dcbench report`: rewrite a finished run's report files (and list them in its
    figures.json, for the board); returns what to tell the user."""
    from dcbench.classification_report_render import summary_line
    from dcbench.records import write_figures

    report = report_from_run(run_dir, load_names)
    paths = write_report(run_dir, report)
    write_figures(run_dir, linked(paths), merge=True)
    return "\n".join([summary_line(report), *(f"wrote {path}" for path in paths)])
