"""STAND-IN for Hydra's `drgnai` program, for dcbench's tests only. It trains nothing.

It accepts the `setup` and `train` commands as the real program does (ml-struct-bio/hydra:
src/command_line.py, src/configuration.py, src/reconstruct.py), checks what dcbench hands it, and
writes outputs in Hydra's documented layout:

- `setup OUT --particles P --ctf C ...`: checks P is a float32 MRC image stack of N square images
  of an even size and C a pickled float32 (N, 9) cryoDRGN CTF array (box size, pixel size = the
  stack's, defocus U = V >= 0 Å, ...), writes OUT/configs.yaml (block YAML: particles, ctf, pose,
  quick_config, outdir = OUT/out) and creates OUT/out.
- `test`: prints "Installation was successful!", as the real one does when it imports.
- `train OUT --no-analysis`: refuses configs.yaml keys Hydra does not know, needs n_classes >= 2
  (and equal to $DRGNAI_STANDIN_EXPECT_CLASSES when set), an integer seed >= 0, and counts epochs
  as Hydra does: a pretraining epoch -1, then E = max(2, n_imgs_pose_search // N + 1) (0 if
  n_imgs_pose_search is 0) + epochs_sgd epochs. After each it appends
  "# =====> SGD Epoch: e finished in ...; total loss = x" to OUT/out/training.log (not stdout,
  like Hydra's file logger) and, for epoch -1, pose-search epochs and e % log_heavy_interval == 0,
  pickles the (N, K) float64 posteriors to OUT/out/p_classes.<e>.pkl. Particle i's class at
  epoch e is (i + e) % K; epoch -1's rows are NaN (Hydra leaves rows it did not visit unset).

Test knobs (environment): DRGNAI_STANDIN_FAIL_AT=e exits 1 after epoch e with an error on stderr;
DRGNAI_STANDIN_NAN_AT=e logs a NaN loss for epoch e and then sleeps 60 s (the caller must stop
it); DRGNAI_STANDIN_EVIL=PATH makes the last p_classes pickle one that would create the folder
PATH when unpickled with plain pickle; DRGNAI_STANDIN_SLEEP=s pauses s seconds per epoch.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np

# TrainingConfigurations.defaults' keys in Hydra's src/configuration.py: any other key is refused.
HYDRA_KEYS = set("""
outdir quick_config particles ctf pose dataset server datadir ind labels relion31 no_trans use_gt_poses
refine_gt_poses use_gt_trans load initial_conf log_interval log_heavy_interval verbose_time shuffle lazy
num_workers max_threads fast_dataloading shuffler_size batch_size_known_poses batch_size_hps batch_size_sgd
hypervolume_optimizer_type pose_table_optimizer_type conf_table_optimizer_type conf_encoder_optimizer_type
score_table_optimizer_type lr lr_pose_table lr_conf_table lr_conf_encoder lr_score_table wd n_imgs_pose_search
epochs_sgd pose_only_phase output_mask add_one_frequency_every n_frequencies_per_epoch max_freq
window_radius_gt_real l_start_fm beta_conf trans_l1_regularizer l2_smoothness_regularizer variational_het z_dim
std_z_init use_conf_encoder depth_cnn channels_cnn kernel_size_cnn resolution_encoder n_classes std_noise
explicit_volume hypervolume_layers hypervolume_dim pe_type pe_dim feat_sigma hypervolume_domain pe_type_conf
n_imgs_pretrain pretrain_with_gt_poses l_start l_end n_iter t_extent t_n_grid t_x_shift t_y_shift
no_trans_search_at_pose_search n_kept_poses base_healpy subtomogram_averaging n_tilts dose_per_tilt
angle_per_tilt n_tilts_pose_search average_over_tilts tilt_axis_angle dose_exposure_correction seed
color_palette test_installation
""".split())


def fail(message: str) -> None:
    print(f"drgnai stand-in: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_inputs(particles: Path, ctf: Path) -> int:
    """The number of particles, after checking the stack and the CTF pickle agree."""
    if not particles.is_file() or not ctf.is_file():
        fail(f"missing input: {particles if not particles.is_file() else ctf}")
    with mrcfile.open(particles, permissive=False) as mrc:
        if not mrc.is_image_stack():
            fail(f"{particles} is not an MRC image stack")
        data, pixel = np.asarray(mrc.data), float(mrc.voxel_size.x)
    if data.dtype != np.float32 or data.ndim != 3 or data.shape[1] != data.shape[2] or data.shape[1] % 2:
        fail(f"particles must be float32 (N, D, D) with D even, got {data.dtype} {data.shape}")
    if not np.isfinite(data).all():
        fail("particles hold NaN")
    with open(ctf, "rb") as handle:
        table = pickle.load(handle)
    if not isinstance(table, np.ndarray) or table.dtype != np.float32 or table.shape != (len(data), 9):
        fail(f"ctf must be a float32 ({len(data)}, 9) array, got {getattr(table, 'shape', type(table))}")
    box, apix, dfu, dfv, _angle, kv, cs, w, _phase = table.T
    if not (np.all(box == data.shape[1]) and np.allclose(apix, pixel) and np.all(dfu == dfv) and np.all(dfu >= 0)
            and np.all(kv > 0) and np.all(cs >= 0) and np.all((w >= 0) & (w <= 1))):
        fail(f"ctf columns disagree with the stack (box {data.shape[1]}, pixel {pixel}): {table[0].tolist()}")
    return len(data)


def read_configs(path: Path) -> dict[str, object]:
    """Top-level `key: scalar` lines of the block YAML (nested blocks are kept as text)."""
    configs: dict[str, object] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith((" ", "-", "#")):
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if key in configs:
            fail(f"configs.yaml has '{key}' twice")
        try:
            configs[key] = int(value)
        except ValueError:
            configs[key] = None if value in ("", "null") else value
    return configs


def setup(args: argparse.Namespace) -> None:
    out = Path(args.outdir).resolve()
    check_inputs(Path(args.particles), Path(args.ctf))
    if args.reconstruction_type != "het" or args.pose_estimation != "abinit":
        fail("dcbench should ask for --reconstruction-type het --pose-estimation abinit")
    (out / "out").mkdir(parents=True, exist_ok=True)
    (out / "configs.yaml").write_text(
        f"particles: {Path(args.particles).resolve()}\nctf: {Path(args.ctf).resolve()}\npose: null\n"
        f"quick_config:\n  capture_setup: {args.capture_setup}\n  reconstruction_type: {args.reconstruction_type}\n"
        f"  pose_estimation: {args.pose_estimation}\n  conf_estimation: {args.conf_estimation}\n"
        f"outdir: {out / 'out'}\n")
    print(f"drgnai stand-in: set up {out}")


class _Evil:
    """Unpickling this calls os.mkdir(path): what a malicious p_classes file could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def train(args: argparse.Namespace) -> None:
    out = Path(args.outdir).resolve()
    configs = read_configs(out / "configs.yaml")
    unknown = sorted(set(configs) - HYDRA_KEYS)
    if unknown:
        fail(f"Unrecognized configuration parameter `{unknown[0]}`!")
    n = check_inputs(Path(str(configs["particles"])), Path(str(configs["ctf"])))
    k, seed = configs.get("n_classes", 1), configs.get("seed", -1)
    expected = os.environ.get("DRGNAI_STANDIN_EXPECT_CLASSES")
    if not isinstance(k, int) or k < 2 or (expected and k != int(expected)):
        fail(f"n_classes must be an integer >= 2{' equal to ' + expected if expected else ''}, got {k!r}")
    if not isinstance(seed, int) or seed < 0:
        fail(f"seed must be an integer >= 0, got {seed!r}")
    n_imgs = int(configs.get("n_imgs_pose_search", 500000))
    search = max(2, n_imgs // n + 1) if n_imgs > 0 else 0
    epochs = search + int(configs.get("epochs_sgd", 100))
    interval = int(configs.get("log_heavy_interval", 5))
    fail_at = int(os.environ.get("DRGNAI_STANDIN_FAIL_AT", "-2"))
    nan_at = int(os.environ.get("DRGNAI_STANDIN_NAN_AT", "-2"))
    evil = os.environ.get("DRGNAI_STANDIN_EVIL")
    pause = float(os.environ.get("DRGNAI_STANDIN_SLEEP", "0.01"))
    print(f"drgnai stand-in: {n} particles, {k} classes, {search} pose-search + {epochs - search} SGD epochs")
    log = out / "out" / "training.log"
    (out / "out" / "standin.pid").write_text(str(os.getpid()))  # lets a test check that it was stopped
    for epoch in range(-1, epochs):
        time.sleep(pause)
        loss = float("nan") if epoch == nan_at else 1.0 / (epoch + 2)
        with open(log, "a") as handle:
            handle.write(f"# =====> SGD Epoch: {epoch} finished in 0:00:00.010000; total loss = {loss:.6f}\n")
        if epoch == nan_at:
            time.sleep(60)
        if epoch < 0 or epoch < search or epoch % interval == 0:
            if epoch < 0:
                p = np.full((n, k), np.nan)
            else:
                p = np.full((n, k), 0.1 / (k - 1))
                p[np.arange(n), (np.arange(n) + epoch) % k] = 0.9
            payload = _Evil(evil) if evil and epoch == epochs - 1 else p
            with open(out / "out" / f"p_classes.{epoch}.pkl", "wb") as handle:
                pickle.dump(payload, handle)
        if epoch == fail_at:
            print("Traceback (most recent call last):\nRuntimeError: stand-in failure", file=sys.stderr)
            sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="drgnai")
    commands = parser.add_subparsers(required=True)
    p = commands.add_parser("setup")
    p.add_argument("outdir")
    p.add_argument("--particles", required=True)
    p.add_argument("--ctf", required=True)
    p.add_argument("--capture-setup", default="spa", choices=["spa", "et"])
    p.add_argument("--reconstruction-type", default="homo", choices=["het", "homo"])
    p.add_argument("--pose-estimation", default="abinit", choices=["abinit", "refine", "fixed"])
    p.add_argument("--conf-estimation", default="autodecoder", choices=["encoder", "autodecoder", "refine"])
    p.set_defaults(func=setup)
    t = commands.add_parser("train")
    t.add_argument("outdir")
    t.add_argument("--no-analysis", action="store_true")
    t.set_defaults(func=train)
    check = commands.add_parser("test")  # Hydra's installation check, as `dcbench hydra setup` runs it
    check.set_defaults(func=lambda _: print("Installation was successful!"))
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
