"""Procedural pseudo-atomic complexes: the offline stand-in for the paper's 18 PDB structures.

Three compositions, each built from rigid ellipsoidal domains filled with pseudo-atoms (about one
per residue volume, 120 Å^3, weight 7 like an average non-hydrogen atom: at 1 nm voxels and 20 Å
resolution a residue-level model gives the same map as an all-atom one). Each composition has
six conformations: its moving domains swing about a hinge by 0, 15, ..., 75 degrees, moving
their centres by up to about 50 Å (5 voxels) - from subtle (one voxel apart) to obvious.
Every shape carries an off-axis knob that breaks exact rotational symmetry, but the knobs are
small: at low resolution each complex is nearly two-fold symmetric (a turn of about 170 degrees
correlates 0.99 with the original at 64 Å), which is why the fsc metric's alignment keeps several
candidate orientations; the hinged dimer is also nearly symmetric about its long axis. Extents stay within a 200 Å
sphere so that a randomly rotated particle shifted by 3 voxels stays inside a 32^3 box of 1 nm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dcbench_plugins.subtomo.rotations import axis_angle_matrix

VOLUME_PER_PSEUDO_ATOM = 120.0  # Å^3, about one residue
PSEUDO_ATOM_WEIGHT = 7.0
HINGE_ANGLES = (0.0, 15.0, 30.0, 45.0, 60.0, 75.0)


@dataclass(frozen=True)
class Domain:
    centre: tuple[float, float, float]  # Å
    radii: tuple[float, float, float]  # ellipsoid semi-axes along x, y, z, Å
    moving: bool = False  # swings about the composition's hinge


@dataclass(frozen=True)
class Blueprint:
    """A composition: its domains and the hinge its moving domains swing about."""

    name: str
    domains: tuple[Domain, ...]
    hinge_point: tuple[float, float, float]
    hinge_axis: tuple[float, float, float]


@dataclass
class AtomicModel:
    """One structure: pseudo-atom coordinates (Å) and weights, with its labels."""

    name: str
    composition: str
    conformation: str
    coords: np.ndarray
    weights: np.ndarray = field(repr=False)


BLUEPRINTS = (
    # two lobes joined at a hinge, opening like a clam
    Blueprint("hinged-dimer", (
        Domain((-38.0, 0.0, 0.0), (36.0, 26.0, 22.0)),
        Domain((-50.0, 24.0, 14.0), (12.0, 12.0, 12.0)),
        Domain((36.0, 0.0, 0.0), (32.0, 22.0, 20.0), moving=True),
        Domain((64.0, -16.0, 0.0), (12.0, 10.0, 10.0), moving=True),
    ), hinge_point=(0.0, 0.0, 0.0), hinge_axis=(0.0, 0.0, 1.0)),
    # a flat base with a fixed and a moving arm, closing like pliers
    Blueprint("clamp", (
        Domain((0.0, -32.0, 0.0), (52.0, 18.0, 28.0)),
        Domain((-34.0, 14.0, 0.0), (13.0, 32.0, 16.0)),
        Domain((-34.0, 44.0, 14.0), (10.0, 10.0, 10.0)),
        Domain((34.0, 16.0, 0.0), (13.0, 30.0, 16.0), moving=True),
    ), hinge_point=(34.0, -14.0, 0.0), hinge_axis=(0.0, 0.0, -1.0)),
    # a barrel with a lid that lifts about a hinge on its rim
    Blueprint("lidded-barrel", (
        Domain((0.0, 0.0, -18.0), (38.0, 38.0, 40.0)),
        Domain((-30.0, 26.0, -46.0), (12.0, 12.0, 12.0)),
        Domain((0.0, 0.0, 34.0), (34.0, 30.0, 10.0), moving=True),
        Domain((-22.0, 0.0, 46.0), (10.0, 10.0, 8.0), moving=True),
    ), hinge_point=(36.0, 0.0, 28.0), hinge_axis=(0.0, 1.0, 0.0)),
)


def _fill_ellipsoid(domain: Domain, rng: np.random.Generator) -> np.ndarray:
    """Pseudo-atoms uniformly inside the ellipsoid, as many as its volume holds."""
    radii = np.asarray(domain.radii)
    count = max(1, round(4.0 / 3.0 * np.pi * radii.prod() / VOLUME_PER_PSEUDO_ATOM))
    points = rng.normal(size=(count, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    points *= rng.uniform(size=(count, 1)) ** (1.0 / 3.0)  # uniform in the unit ball
    return np.asarray(domain.centre) + points * radii


def build(blueprint: Blueprint, hinge_degrees: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of the blueprint with its moving domains swung by hinge_degrees. The same rng
    state gives the same pseudo-atoms, so conformations differ only by the hinge motion."""
    rotation = axis_angle_matrix(np.asarray(blueprint.hinge_axis), hinge_degrees)
    pivot = np.asarray(blueprint.hinge_point)
    parts = []
    for domain in blueprint.domains:
        atoms = _fill_ellipsoid(domain, rng)
        if domain.moving:
            atoms = (atoms - pivot) @ rotation.T + pivot
        parts.append(atoms)
    coords = np.concatenate(parts)
    return coords, np.full(len(coords), PSEUDO_ATOM_WEIGHT)


def complexes(seed: int = 0, angles: tuple[float, ...] = HINGE_ANGLES) -> list[AtomicModel]:
    """The 3 compositions x len(angles) conformations, composition by composition."""
    models = []
    for index, blueprint in enumerate(BLUEPRINTS):
        for angle in angles:
            rng = np.random.default_rng([seed, index])  # same atoms in every conformation
            coords, weights = build(blueprint, angle, rng)
            conformation = f"hinge{angle:g}"
            models.append(AtomicModel(f"{blueprint.name}-{conformation}", blueprint.name, conformation,
                                      coords, weights))
    return models
