"""The restricted unpickler: numpy arrays load, anything that would run code is refused."""

from __future__ import annotations

import gzip
import io
import pickle

import numpy as np
import pytest
from fixtures_data import (
    eval_pickle_bytes,
    malicious_pickle_bytes,
    object_array_pickle_bytes,
    py2_array_pickle,
)

from dcbench.errors import DataError
from dcbench.safe_pickle import load_numpy_pickle


def _nested() -> dict:
    return {
        "images": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "labels": [np.array([1, 2, 3], dtype=np.int64), np.array([True, False])],
        "meta": (np.float64(2.5), np.int64(7), "text", 3, None),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "big_endian": np.arange(4, dtype=">u4"),
    }


def _assert_same(loaded: dict, expected: dict) -> None:
    assert set(loaded) == set(expected)
    np.testing.assert_array_equal(loaded["images"], expected["images"])
    assert loaded["images"].dtype == np.float32
    for got, want in zip(loaded["labels"], expected["labels"], strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    assert loaded["meta"] == expected["meta"]
    np.testing.assert_array_equal(loaded["fortran"], expected["fortran"])
    # (numpy itself restores big-endian arrays as native ones below protocol 5: compare values)
    np.testing.assert_array_equal(loaded["big_endian"], expected["big_endian"])


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("compressed", [False, True])
def test_numpy_pickles_round_trip(tmp_path, protocol, compressed):
    data = pickle.dumps(_nested(), protocol=protocol)
    path = tmp_path / "data.pkl"
    path.write_bytes(gzip.compress(data) if compressed else data)
    _assert_same(load_numpy_pickle(path), _nested())  # gzip detected from magic bytes
    _assert_same(load_numpy_pickle(path, gzipped=compressed), _nested())


def test_file_objects_are_accepted(tmp_path):
    data = gzip.compress(pickle.dumps(_nested(), protocol=2))
    _assert_same(load_numpy_pickle(io.BytesIO(data)), _nested())


def test_python2_pickle_with_numpy_core_names_and_str_buffers():
    array = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    loaded = load_numpy_pickle(io.BytesIO(py2_array_pickle(array)))
    np.testing.assert_array_equal(loaded, array)
    assert loaded.dtype == np.float32


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_os_system_is_refused_and_not_run(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(malicious_pickle_bytes(marker, protocol))
    with pytest.raises(DataError) as error:
        load_numpy_pickle(path)
    message = str(error.value)
    assert str(path) in message and "system" in message and "\n" not in message
    assert not marker.exists()


def test_eval_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(eval_pickle_bytes(marker)))
    with pytest.raises(DataError, match=r"builtins\.eval"):
        load_numpy_pickle(path)
    assert not marker.exists()


def test_code_hidden_inside_an_object_array_is_refused(tmp_path):
    benign = np.array([np.zeros(2), "text", 3], dtype=object)
    loaded = load_numpy_pickle(io.BytesIO(pickle.dumps(benign, protocol=2)))
    np.testing.assert_array_equal(loaded[0], np.zeros(2))
    marker = tmp_path / "pwned"
    with pytest.raises(DataError, match="system"):
        load_numpy_pickle(io.BytesIO(object_array_pickle_bytes(marker)))
    assert not marker.exists()


def test_codecs_other_than_latin1_are_refused():
    # Python 3 protocol 2 pickles carry bytes through _codecs.encode(text, 'latin1'); a zlib
    # codec there could inflate a small file into a huge one.
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(DataError, match="zlib"):
        load_numpy_pickle(io.BytesIO(payload))


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_pickle_is_a_data_error_naming_the_file(tmp_path, compressed):
    data = pickle.dumps(_nested(), protocol=2)
    data = gzip.compress(data) if compressed else data
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.pkl"):
        load_numpy_pickle(path)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"\x1f\x8bgarbage"])
def test_garbage_is_a_data_error(tmp_path, content):
    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad.pkl"):
        load_numpy_pickle(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_numpy_pickle(tmp_path / "absent.pkl")
