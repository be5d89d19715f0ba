"""Rigid-body motions of parts of an atomic model: the conformations that the real-protein dataset
adds to the deposited models (a DNA end unwrapping, a receptor-binding domain swinging up, a
barrel gate opening). Pure numpy; coordinates in Å.

A motion is a rotation R about a pivot p followed by a translation t: x -> R (x - p) + p + t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcbench_plugins.subtomo.rotations import axis_angle_matrix


@dataclass(frozen=True)
class RigidMotion:
    rotation: np.ndarray  # (3, 3)
    pivot: np.ndarray  # (3,)
    translation: np.ndarray  # (3,)

    def apply(self, coords: np.ndarray) -> np.ndarray:
        return (coords - self.pivot) @ self.rotation.T + self.pivot + self.translation

    def fraction(self, t: float) -> RigidMotion:
        """The motion t of the way along (0: none, 1: all of it): the rotation's angle scaled by t
        about the same axis and pivot, the translation scaled by t."""
        angle, axis = rotation_angle_axis(self.rotation)
        rotation = np.eye(3) if angle == 0 else axis_angle_matrix(axis, np.degrees(angle) * t)
        return RigidMotion(rotation, self.pivot, self.translation * t)

    def conjugated(self, frame: RigidMotion) -> RigidMotion:
        """This motion carried by `frame` (e.g. a symmetry operator) onto another copy: F M F^-1."""
        rotation = frame.rotation @ self.rotation @ frame.rotation.T
        pivot = frame.apply(self.pivot[None])[0]
        return RigidMotion(rotation, pivot, frame.rotation @ self.translation)


def rotation_about(axis: np.ndarray, degrees: float, pivot: np.ndarray) -> RigidMotion:
    return RigidMotion(axis_angle_matrix(axis, degrees), np.asarray(pivot, dtype=np.float64), np.zeros(3))


def translation(vector: np.ndarray) -> RigidMotion:
    return RigidMotion(np.eye(3), np.zeros(3), np.asarray(vector, dtype=np.float64))


def rotation_angle_axis(rotation: np.ndarray) -> tuple[float, np.ndarray]:
    """(angle in radians, unit axis) of a rotation matrix."""
    angle = float(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0)))
    if angle < 1e-9:
        return 0.0, np.array([0.0, 0.0, 1.0])
    if np.pi - angle < 1e-6:  # 180 degrees: the axis is the eigenvector of eigenvalue 1
        values, vectors = np.linalg.eigh((rotation + rotation.T) / 2)
        return angle, vectors[:, int(np.argmax(values))]
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    return angle, axis / np.linalg.norm(axis)


def superpose(moving: np.ndarray, target: np.ndarray) -> RigidMotion:
    """The least-squares rigid motion taking `moving` (N, 3) onto `target` (N, 3) (Kabsch), with
    the pivot at moving's centroid."""
    if moving.shape != target.shape or len(moving) < 3:
        raise ValueError(f"need two matched sets of at least 3 points, got {moving.shape} and {target.shape}")
    centre_m, centre_t = moving.mean(0), target.mean(0)
    covariance = (moving - centre_m).T @ (target - centre_t)
    u, _, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rotation = vt.T @ np.diag([1.0, 1.0, sign]) @ u.T
    return RigidMotion(rotation, centre_m, centre_t - centre_m)


def rmsd(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.sqrt(((first - second) ** 2).sum(1).mean()))


def principal_axes(coords: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(weighted centroid, (3, 3) principal axes as rows, largest spread first)."""
    weights = np.ones(len(coords)) if weights is None else weights
    centre = (weights[:, None] * coords).sum(0) / weights.sum()
    centred = coords - centre
    covariance = (weights[:, None] * centred).T @ centred / weights.sum()
    values, vectors = np.linalg.eigh(covariance)
    return centre, vectors[:, ::-1].T
