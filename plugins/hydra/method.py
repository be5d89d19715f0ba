"""`hydra`: Hydra (Levy et al., NeurIPS 2024, a mixture of neural fields for cryo-EM) run as an
external program and scored like any method.

fit() writes the train and test inputs (the runner hands a transductive method both, labels
withheld) as Hydra's 2D particle stack and CTF pickle (convert.py), runs `drgnai setup`, sets
`n_classes`, the epochs and the seed in the experiment's configs.yaml, runs `drgnai train` with
its output in <run>/hydra/drgnai.log (one progress line per Hydra epoch), and reads the newest
p_classes.<epoch>.pkl with restricted unpickling. Hydra gives a class per particle, not codes:
encode() returns zero-width content and transformation codes and the classes as assignments,
for the particles Hydra was trained on only. See docs/hydra.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.api import Codes, Method, RunContext, Split
from dcbench.errors import DcbenchError
from dcbench_plugins.hydra import convert, program

CTF_MODES = ("auto", "none", "manual")


def check_settings(config: dict[str, Any]) -> None:
    """Refuse settings Hydra cannot run with, in one line, before any work."""
    epochs, search = int(config["epochs"]), int(config["pose_search_epochs"])
    if epochs < 1:
        raise DcbenchError(f"hydra: epochs must be at least 1, got {epochs}")
    if search == 1 or search < 0 or search > epochs:
        raise DcbenchError(f"hydra: pose_search_epochs must be 0 or 2 .. epochs ({epochs}), got {search} "
                           "(Hydra searches poses for at least 2 epochs when it searches at all)")
    if int(config["n_classes"]) != 0 and int(config["n_classes"]) < 2:
        raise DcbenchError(f"hydra: n_classes must be 0 (the number of compositions) or at least 2, "
                           f"got {config['n_classes']}")
    if config["ctf"] not in CTF_MODES:
        raise DcbenchError(f"hydra: ctf must be one of {', '.join(CTF_MODES)}, got '{config['ctf']}'")
    if float(config["pixel_size"]) < 0 or int(config["summary_every"]) < 1:
        raise DcbenchError("hydra: pixel_size must be >= 0 (0: the dataset's) and summary_every >= 1")
    program.parse_assignments(str(config["extra_configs"]))


class Hydra(Method):
    name = "hydra"
    generative = False
    transductive = True  # Hydra classifies the particles it trained on; it has no encoder for new ones

    @classmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
        paper = preset == "paper"
        return {
            # Hydra epochs in all (pose search, then SGD on the poses found); the paper: 130, 30 of them pose search
            "epochs": 130 if paper else 8,
            "pose_search_epochs": 30 if paper else 2,
            "n_classes": 0,  # Hydra's K; 0: the number of content classes (compositions) in the data
            "seed_offset": 0,  # Hydra's seed is the run's seed plus this
            # drgnai, or the Python environment that has it; empty: $DCBENCH_HYDRA_EXE, else PATH, else the
            # environment `dcbench hydra setup` built
            "exe": "",
            "pixel_size": 0.0,  # Å; 0: the dataset's voxel size (subtomo-sim: 10 Å), else 1 without a CTF
            "ctf": "auto",  # auto: the dataset's CTF where known, else none; none: flat; manual: the ctf_* below
            "ctf_defocus_um": -5.0,  # dcbench's convention: negative = underfocus
            "ctf_voltage_kv": 300.0,
            "ctf_cs_mm": 1.7,
            "ctf_amplitude_contrast": 0.1,
            # p_classes are written at most this many epochs apart (Hydra's log_heavy_interval, adjusted so
            # that the last epoch is always written); every write also saves volumes and weights
            "summary_every": 5,
            "extra_setup_args": "",  # appended to `drgnai setup` (e.g. "--conf-estimation encoder")
            "extra_configs": "",  # "key=value ..." written into configs.yaml last (YAML scalars, e.g. z_dim=8)
        }

    @classmethod
    def supports(cls, input_shape: tuple[int, ...]) -> str | None:
        shape = tuple(input_shape)
        if len(shape) not in (3, 4) or shape[0] != 1:
            return "takes single-channel 2D images or 3D volumes only (Hydra reads one 2D image per particle)"
        if shape[-1] != shape[-2] or shape[-1] % 2:
            return "needs square images (or volumes with square slices) of an even size, as Hydra does"
        return None

    @classmethod
    def check_config(cls, config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        check_settings(config)

    @classmethod
    def check_ready(cls, config: dict[str, Any]) -> None:
        program.find_drgnai(str(config["exe"]))  # after check_config: the settings are usable

    @classmethod
    def external_programs(cls, config: dict[str, Any]) -> list[str]:
        try:
            return [str(program.find_drgnai(str(config["exe"])))]
        except DcbenchError:  # not found: show what the setting names
            return [str(config["exe"]).strip() or f"drgnai (from ${program.ENV_VAR} or PATH)"]

    def __init__(self, config: dict[str, Any], input_shape: tuple[int, ...], device: str, seed: int) -> None:
        super().__init__(config, input_shape, device, seed)
        check_settings(config)
        self.exe = program.find_drgnai(str(config["exe"]))
        # drgnai picks its own device (the first GPU torch sees); --device cpu hides the GPUs from it
        self.hide_gpus = device == "cpu"
        self.device = "cpu" if self.hide_gpus else "external: drgnai's choice"
        self.assignments: np.ndarray | None = None
        self.posteriors: np.ndarray | None = None
        self.digests: np.ndarray | None = None
        self.hydra_epoch = -1

    # ------------------------------------------------------------------ settings from the data

    def _n_classes(self, facts: Mapping[str, Any]) -> int:
        k = int(self.config["n_classes"]) or int(facts.get("n_classes") or 0)
        if k < 2:
            raise DcbenchError("hydra: the data have fewer than 2 content classes; set n_classes (--set n_classes=K)")
        return k

    def _ctf(self, facts: Mapping[str, Any]) -> dict[str, float] | None:
        mode = self.config["ctf"]
        if mode == "manual":
            return {key: float(self.config[f"ctf_{key}"])
                    for key in ("defocus_um", "voltage_kv", "cs_mm", "amplitude_contrast")}
        return facts.get("ctf") if mode == "auto" else None

    def _pixel_size(self, facts: Mapping[str, Any], ctf: dict[str, float] | None) -> float:
        size = float(self.config["pixel_size"]) or float(facts.get("voxel") or 0.0)
        if size > 0:
            return size
        if ctf is not None:
            raise DcbenchError("hydra: the dataset does not say its pixel size, which a CTF needs; "
                               "set pixel_size (--set pixel_size=ANGSTROM)")
        return 1.0

    @staticmethod
    def _workdir(context: RunContext) -> Path:
        if context.work_dir is not None:  # <run>/hydra
            return Path(context.work_dir)
        return Path(tempfile.mkdtemp(prefix="dcbench-hydra-"))

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.hide_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    # ------------------------------------------------------------------ the Method interface

    def fit(self, train: Split, context: RunContext) -> None:
        n_classes, ctf = self._n_classes(context.data_facts), self._ctf(context.data_facts)
        folder = self._workdir(context)
        if folder.exists():
            shutil.rmtree(folder)  # ours, from an earlier attempt of this run: Hydra starts afresh
        folder.mkdir(parents=True)
        inputs = convert.write_inputs(train.x, folder, self._pixel_size(context.data_facts, ctf), ctf)
        self.digests = convert.input_digests(train.x)
        # absolute: drgnai writes the experiment's outdir into configs.yaml as given (a relative runs dir would
        # tie it to this working directory); the log keeps the runs dir as given, for messages
        experiment, log = (folder / "experiment").absolute(), folder / "drgnai.log"
        env = self._environment()
        setup = program.setup_command(self.exe, experiment, inputs.particles, inputs.ctf,
                                      str(self.config["extra_setup_args"]))
        program.run_logged(setup, log, env)

        epochs, search = int(self.config["epochs"]), int(self.config["pose_search_epochs"])
        settings = {
            "n_classes": str(n_classes),
            "seed": str(self.seed + int(self.config["seed_offset"])),
            # Hydra's pose-search epochs are max(2, n_imgs_pose_search // N + 1): (search - 1) N images give `search`
            "n_imgs_pose_search": str((search - 1) * inputs.count if search else 0),
            "epochs_sgd": str(epochs - search),
            "log_heavy_interval": str(program.heavy_interval(epochs, int(self.config["summary_every"]))),
            **program.parse_assignments(str(self.config["extra_configs"])),
        }
        configs = experiment / "configs.yaml"
        if not configs.is_file():
            raise DcbenchError(f"drgnai setup wrote no {configs}; see {log}")
        program.set_configs(configs, settings)
        train_argv = program.train_command(self.exe, experiment)
        facts = {"exe": str(self.exe), "setup": setup, "train": train_argv, "configs": settings,
                 "particles": str(inputs.particles), "ctf": str(inputs.ctf), "count": inputs.count,
                 "box": inputs.box, "ctf_parameters": ctf, "log": str(log)}
        program.write_json(folder / "adapter.json", facts)

        out_dir = experiment / "out"
        watcher = program.EpochWatcher([log, out_dir / "training.log"], out_dir)

        def report() -> None:
            for epoch, terms in watcher.poll():
                context.on_epoch(epoch, terms)

        program.run_logged(train_argv, log, env, on_poll=report)
        written = {e: p for e, p in program.p_classes_files(out_dir).items() if e >= 0}
        if not written:
            raise DcbenchError(f"drgnai train wrote no p_classes.<epoch>.pkl in {out_dir} (is n_classes >= 2?); "
                               f"see {log}")
        self.hydra_epoch = max(written)
        self.posteriors = program.read_p_classes(written[self.hydra_epoch], inputs.count)
        self.assignments = self.posteriors.argmax(axis=1).astype(np.int64)
        program.write_json(folder / "adapter.json", {**facts, "p_classes": str(written[self.hydra_epoch]),
                                                     "hydra_epoch": self.hydra_epoch})

    def encode(self, x: np.ndarray) -> Codes:
        """Zero-width codes and Hydra's class of each input, which must be one it trained on
        (matched by the SHA-256 of its bytes; repeats of one input take its rows in turn)."""
        if self.assignments is None or self.digests is None:
            raise DcbenchError("hydra: encode() before fit() or load_state()")
        rows_of: dict[bytes, list[int]] = {}
        for row, digest in enumerate(self.digests):
            rows_of.setdefault(digest.tobytes(), []).append(row)
        used: dict[bytes, int] = {}
        rows = []
        for i, digest in enumerate(convert.input_digests(x)):
            key = digest.tobytes()
            if key not in rows_of:
                raise DcbenchError(f"hydra classifies only the particles it was trained on (it is transductive); "
                                   f"input {i} of {len(x)} is not one of them")
            rows.append(rows_of[key][used.get(key, 0) % len(rows_of[key])])
            used[key] = used.get(key, 0) + 1
        empty = np.zeros((len(x), 0), dtype=np.float32)
        return Codes(empty, empty.copy(), self.assignments[np.asarray(rows, dtype=np.int64)])

    def save(self, path: Path) -> None:
        if self.assignments is None:
            raise DcbenchError("hydra: nothing to save before fit()")
        with open(path, "wb") as handle:
            np.savez(handle, assignments=self.assignments, posteriors=self.posteriors, digests=self.digests,
                     hydra_epoch=np.asarray(self.hydra_epoch))

    def load_state(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as state:
            self.assignments = state["assignments"]
            self.posteriors = state["posteriors"]
            self.digests = state["digests"]
            self.hydra_epoch = int(state["hydra_epoch"])
