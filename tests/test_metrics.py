"""D-scores on codes where the right answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dcbench.api import Codes, DataBundle, MetricInput, Split
from dcbench_plugins.metrics.dscore import DScore


def test_dscore_is_one_for_label_codes_and_near_chance_for_noise() -> None:
    rng = np.random.default_rng(0)
    labels = {s: rng.integers(0, 10, n) for s, n in (("train", 600), ("test", 300))}
    x = {s: np.zeros((len(labels[s]), 1, 4, 4), np.float32) for s in labels}
    onehot = {s: np.eye(10)[labels[s]] for s in labels}
    noise = {s: rng.normal(size=(len(labels[s]), 10)) for s in labels}
    data = DataBundle(Split(x["train"], labels["train"]), Split(x["test"], labels["test"]))
    inputs = MetricInput(Codes(onehot["train"], noise["train"]), Codes(onehot["test"], noise["test"]), data,
                         method=None, seed=0)
    scores = DScore().compute(inputs)
    assert scores["D(c|c)"] == 1.0
    assert scores["D(c|z)"] < 0.25
    assert DScore.columns == {"D(c|c)": "max", "D(c|z)": "min"}


# ----------------------------------------------------------------------- S(z), SAP(c), recon


class StubMethod:
    """Encodes with a given function of the inputs; decodes to a given array."""

    generative = True

    def __init__(self, z_of, decoded=None) -> None:
        self.z_of, self.decoded = z_of, decoded

    def encode(self, x: np.ndarray) -> Codes:
        return Codes(np.zeros((len(x), 2)), self.z_of(x))

    def decode(self, content: np.ndarray, transformation: np.ndarray) -> np.ndarray:
        return self.decoded[: len(content)]


def bundle(n: int = 60, seed: int = 0) -> DataBundle:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 12, 12)).astype(np.float32)
    return DataBundle(Split(x, rng.integers(0, 3, n)), Split(x.copy(), rng.integers(0, 3, n)))


def sz_of(method, data: DataBundle) -> float:
    from dcbench_plugins.metrics.sz import SZ

    return SZ().compute(MetricInput(None, None, data, method, seed=0))["S(z)"]


def test_sz_is_one_for_a_constant_or_collapsed_z_and_low_for_a_z_that_carries_the_input() -> None:
    data = bundle()
    assert sz_of(StubMethod(lambda x: np.tile([0.3, -2.0, 1.0], (len(x), 1))), data) == pytest.approx(1.0)
    assert sz_of(StubMethod(lambda x: np.zeros((len(x), 3))), data) == pytest.approx(1.0)
    # z = centred values of the central pixels (never padding): two different noise images give
    # near-orthogonal codes, E|cos| about 0.2 for 16 dimensions
    pixels = lambda x: x[:, :, 4:8, 4:8].reshape(len(x), -1) - 0.5  # noqa: E731
    assert sz_of(StubMethod(pixels), data) < 0.3


def test_rotate_batch_turns_images_by_the_given_angle() -> None:
    from dcbench_plugins.metrics.sz import rotate_batch

    image = np.zeros((1, 1, 9, 9), np.float32)
    image[0, 0, 4, 4:] = 1.0  # a ray from the centre to the right edge
    turned = rotate_batch(image, np.array([np.pi / 2]))[0, 0]
    ray = np.rot90(image[0, 0])  # the same ray turned a quarter: up or down depending on convention
    assert np.allclose(turned, ray, atol=1e-5) or np.allclose(turned, np.rot90(image[0, 0], -1), atol=1e-5)


def test_sap_is_the_gap_between_the_best_and_second_best_single_dimension() -> None:
    from dcbench_plugins.metrics.sap import SAP, sap_gap

    assert sap_gap(np.array([0.2, 0.9, 0.5])) == pytest.approx(0.4)
    rng = np.random.default_rng(1)
    labels = {s: rng.integers(0, 2, 400) for s in ("train", "test")}
    codes = {s: np.column_stack([labels[s] * 4.0 - 2 + 0.1 * rng.normal(size=400), rng.normal(size=(400, 3))])
             for s in labels}
    x = np.zeros((400, 1, 2, 2), np.float32)
    data = DataBundle(Split(x, labels["train"]), Split(x, labels["test"]))
    inputs = MetricInput(Codes(codes["train"], codes["train"]), Codes(codes["test"], codes["test"]), data,
                         method=None, seed=0)
    # dimension 0 tells the class (accuracy 1), the others are at chance (about 0.5)
    assert SAP().compute(inputs)["SAP(c)"] == pytest.approx(0.5, abs=0.1)
    label_only = np.column_stack([labels["test"], labels["test"]]).astype(float)
    tied = MetricInput(Codes(label_only, label_only), Codes(label_only, label_only),
                       DataBundle(Split(x, labels["test"]), Split(x, labels["test"])), None, 0)
    assert SAP().compute(tied)["SAP(c)"] == pytest.approx(0.0)  # two equally good dimensions: no gap


def test_recon_is_zero_for_a_perfect_decoder_the_mse_otherwise_and_nan_without_decoder() -> None:
    from dcbench_plugins.metrics.recon import Recon

    data = bundle(n=10)
    test_codes = Codes(np.zeros((10, 2)), np.zeros((10, 2)))

    def recon_of(method) -> float:
        return Recon().compute(MetricInput(test_codes, test_codes, data, method, 0))["recon MSE"]

    assert recon_of(StubMethod(None, decoded=data.test.x)) == pytest.approx(0.0)
    assert recon_of(StubMethod(None, decoded=data.test.x + 0.5)) == pytest.approx(0.25)
    from dcbench.metric_contract import score_metrics

    discriminative = StubMethod(None)
    discriminative.generative = False  # declared `requires`: not applicable, decode never called
    scoring = score_metrics([Recon()], MetricInput(test_codes, test_codes, data, discriminative, 0))
    assert np.isnan(scoring.scores["recon MSE"]) and "generative" in scoring.not_applicable["recon"]


def test_embedding_figure_writes_a_png_coloured_by_class(tmp_path) -> None:
    from PIL import Image

    from dcbench.embedding import embed_2d, embedding_figure

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    codes = rng.normal(size=(60, 5)) + labels[:, None] * 5
    points, algorithm = embed_2d(codes, seed=0)
    assert points.shape == (60, 2) and algorithm in ("t-SNE", "UMAP")
    target = embedding_figure(codes, labels, tmp_path / "figures" / "embedding.png", "test",
                              class_names=["a", "b", "c"])
    assert Image.open(target).size[0] > 100


def test_ari_is_one_for_codes_that_are_the_labels_and_near_zero_for_noise() -> None:
    from dcbench_plugins.metrics.ari import ARI

    rng = np.random.default_rng(0)
    composition = np.repeat(np.arange(3), 40)
    conformation = np.tile(np.repeat(np.arange(2), 20), 3)
    x = np.zeros((120, 1, 4, 4, 4), np.float32)
    data = DataBundle(Split(x, composition, conformation), Split(x, composition, conformation))
    exact = np.column_stack([np.eye(3)[composition] * 10, np.eye(2)[conformation]])  # composition dominates
    noise = rng.normal(size=(120, 5))

    def ari(content, transformation, method=None) -> dict[str, float]:
        codes = Codes(content, transformation)
        return ARI().compute(MetricInput(codes, codes, data, method, seed=0))

    assert ari(exact, noise) == {"ARI(composition)": 1.0, "ARI(conformation)": 1.0}
    scores = ari(noise, noise)
    assert abs(scores["ARI(composition)"]) < 0.1 and abs(scores["ARI(conformation)"]) < 0.2

    class ConformationInZ:
        conformation_code = "transformation"

    assert ari(noise, exact, ConformationInZ())["ARI(conformation)"] == 1.0
    no_conformation = DataBundle(Split(x, composition), Split(x, composition))
    codes = Codes(exact, noise)
    assert math.isnan(ARI().compute(MetricInput(codes, codes, no_conformation, None, 0))["ARI(conformation)"])
