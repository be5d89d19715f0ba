"""The classification report (dcbench.classification_report) as Markdown tables and as a figure
of its confusion matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcbench import atomic

HOW_TO_READ = (
    "How to read it: each confusion matrix counts test particles by true class (rows) and by cluster "
    "(columns). Clusters carry no names, so each is matched to one class by the Hungarian algorithm (the "
    "one-to-one matching that puts the most particles on the diagonal) and named after it. *Matched accuracy* "
    "is the share of particles on that diagonal; *chance* is the matched accuracy of random clusters of the "
    "same sizes (the mean over 1000 seeded shuffles), which matching alone reaches on no signal. Per class: "
    "precision = the share of its cluster that truly is that class, recall = the share of the class that "
    "landed in its cluster, F1 their harmonic mean, support = its particles. A class left without a cluster "
    "scores 0.")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    from tabulate import tabulate

    return tabulate([[_cell(c) for c in row] for row in rows], headers=[_cell(h) for h in header],
                    tablefmt="github", disable_numparse=True)


def _column_name(cluster: dict[str, Any]) -> str:
    matched = cluster["matched_to"]
    return f"{matched} (cluster {cluster['id']})" if matched is not None else f"unmatched (cluster {cluster['id']})"


def _section_markdown(section: dict[str, Any], what: str) -> list[str]:
    """Summary line, confusion matrix and per-class table of one matched section."""
    names = [c["name"] for c in section["classes"]]
    confusion = []
    for i, (name, counts) in enumerate(zip(names, section["confusion"])):
        cells = [f"**{v}**" if j == i and section["clusters"][j]["matched_to"] is not None else str(v)
                 for j, v in enumerate(counts)]
        confusion.append([name, *cells, sum(counts)])
    macro = section["macro"]
    per_class = [[c["name"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", c["support"]]
                 for c in section["per_class"]]
    per_class.append(["macro average", f"{macro['precision']:.3f}", f"{macro['recall']:.3f}",
                      f"{macro['f1']:.3f}", section["n"]])
    return [f"**Matched accuracy {section['matched_accuracy']:.3f}** (chance {section['chance_accuracy']:.3f}); "
            f"{section['n']} particles, {section['k']} clusters.", "",
            _table([f"true {what} \\ cluster", *map(_column_name, section["clusters"]), "total"], confusion), "",
            _table([what, "precision", "recall", "F1", "support"], per_class), ""]


def markdown(report: dict[str, Any], figure: str | None = None) -> str:
    """The report as a Markdown page; `figure`: the confusion-matrix PNG's path relative to the page."""
    title = " on ".join(str(report[key]) for key in ("method", "dataset") if report.get(key))
    about = ", ".join(part for part in (report.get("preset"), f"seed {report['seed']}") if part)
    lines = [f"# Classification report{': ' + title if title else ''}", "",
             f"{about}; {report['n_test']} test particles. Written by dcbench (`dcbench report RUN_DIR` rewrites "
             "it from the run's codes.npz).", "", HOW_TO_READ, "", "## Compositions", ""]
    composition = report["composition"]
    if "skipped" in composition:
        lines += [f"Not scored: {composition['skipped']}.", ""]
    else:
        lines += [f"Clusters: {report['composition_source']}.", "", *_section_markdown(composition, "composition")]
    conformation = report.get("conformation")
    if conformation is None:
        lines += ["## Conformations", "", "The test split has no conformation labels.", ""]
    else:
        lines += _conformation_markdown(conformation, report["seed"])
    if figure:
        lines += ["## Figure", "", f"![Confusion matrices, rows normalised]({figure})", ""]
    return "\n".join(lines)


def _conformation_markdown(conformation: dict[str, Any], seed: int) -> list[str]:
    scored = conformation["compositions_scored"]
    lines = ["## Conformations within each composition", "",
             f"Clusters: k-means on the {conformation['code']} codes of each true composition's particles, with k = "
             f"the number of conformations present in it (10 initialisations, seed {seed}).", ""]
    if scored:
        lines += [f"**Mean matched accuracy over {scored} composition{'s' if scored > 1 else ''}: "
                  f"{conformation['mean_matched_accuracy']:.3f}** (chance {conformation['mean_chance_accuracy']:.3f}).",
                  ""]
    summary = []
    for entry in conformation["per_composition"]:
        if "skipped" in entry:
            summary.append([entry["composition"], "", "", "", "", f"not scored: {entry['skipped']}"])
        else:
            summary.append([entry["composition"], len(entry["classes"]), entry["n"],
                            f"{entry['matched_accuracy']:.3f}", f"{entry['chance_accuracy']:.3f}",
                            f"{entry['macro']['f1']:.3f}"])
    lines += [_table(["composition", "conformations", "particles", "matched accuracy", "chance", "macro F1"],
                     summary), ""]
    for entry in conformation["per_composition"]:
        if "skipped" not in entry:
            lines += [f"### {entry['composition']}", "", *_section_markdown(entry, "conformation")]
    return lines


def summary_line(report: dict[str, Any]) -> str:
    """One line: the matched accuracies and their chance levels."""
    composition = report["composition"]
    parts = [f"compositions: not scored ({composition['skipped']})" if "skipped" in composition else
             f"compositions: matched accuracy {composition['matched_accuracy']:.3f} "
             f"(chance {composition['chance_accuracy']:.3f})"]
    conformation = report.get("conformation")
    if conformation is not None:
        parts.append("conformations: none scored" if not conformation["compositions_scored"] else
                     f"conformations: mean matched accuracy {conformation['mean_matched_accuracy']:.3f} "
                     f"(chance {conformation['mean_chance_accuracy']:.3f}) over "
                     f"{conformation['compositions_scored']} compositions")
    return "; ".join(parts)


def _panels(report: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(title, section, prefix to drop from tick labels: the composition the title names)."""
    panels = []
    if "skipped" not in report["composition"]:
        panels.append(("compositions", report["composition"], ""))
    for entry in (report.get("conformation") or {}).get("per_composition", []):
        if "skipped" not in entry:
            panels.append((f"conformations of {entry['composition']}", entry, f"{entry['composition']}/"))
    return panels


def confusion_figure(report: dict[str, Any], target: Path) -> Path | None:
    """One heat map per confusion matrix, coloured by the share of each true class (row) and
    annotated with counts; None (and no file) when nothing was scored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = _panels(report)
    if not panels:
        Path(target).unlink(missing_ok=True)  # a stale figure would contradict the report
        return None
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    side = max(3.2, 0.45 * max(len(p["confusion"][0]) for _, p, _ in panels) + 2.2)
    fig, axes = plt.subplots(rows, columns, figsize=(side * columns, side * rows + 0.6), dpi=110, squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, section, prefix) in zip(axes.flat, panels):
        counts = np.asarray(section["confusion"], dtype=float)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.6 else "black")
        ax.set_xticks(range(counts.shape[1]), [(c["matched_to"] or f"c{c['id']}").removeprefix(prefix)
                                               for c in section["clusters"]], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(counts.shape[0]), [c["name"].removeprefix(prefix) for c in section["classes"]],
                      fontsize=7)
        ax.set_xlabel("cluster (named by its matched class)", fontsize=7)
        ax.set_ylabel("true class", fontsize=7)
        ax.set_title(f"{title}\nmatched accuracy {section['matched_accuracy']:.2f} "
                     f"(chance {section['chance_accuracy']:.2f})", fontsize=8)
    atomic.write_with(target, lambda handle: fig.savefig(handle, format="png", bbox_inches="tight"))
    plt.close(fig)
    return target
