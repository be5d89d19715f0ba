"""LineMod loader: crop/pad/resize, sorted order and split, folder and zip forms, the cache."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_data import lm_image, write_lm_train, write_png, zip_folder
from PIL import Image

from dcbench.errors import DataError
from dcbench_plugins.datasets import linemod
from dcbench_plugins.datasets.linemod import LineMod, crop_object


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DCBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "linemod"


def _background(height: int, width: int) -> np.ndarray:
    """Every pixel distinct and nonzero, so a crop's origin is recognisable."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([ys + 1, xs + 1, (ys + xs) % 50 + 100], axis=-1).astype(np.uint8)


def _expected(images, n_train: int) -> tuple[np.ndarray, np.ndarray]:
    crops = [crop_object(im.rgb, im.mask, "fixture").astype(np.float32) / 255 for im in images]
    return np.stack(crops[:n_train]), np.stack(crops[n_train:])


# --------------------------------------------------------------------------------- preprocessing


def test_crop_keeps_an_8px_margin_around_the_mask():
    rgb = _background(100, 120)
    mask = np.zeros((100, 120), dtype=bool)
    mask[20:68, 30:78] = True  # 48x48: with 8 px per side the box is exactly 64x64, no resize
    rgb[mask] = 255
    out = crop_object(rgb, mask, "square")
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    np.testing.assert_array_equal(out.transpose(1, 2, 0), rgb[12:76, 22:86])
    assert (out[:, 8:56, 8:56] == 255).all()  # the object, inside the margin
    assert (out[:, :8] != 255).all() and (out[:, 56:] != 255).all()


def test_a_box_crossing_the_border_is_zero_padded_not_wrapped():
    rgb = _background(100, 120)
    mask = np.zeros((100, 120), dtype=bool)
    mask[0:48, 72:120] = True  # touches the top and right borders
    rgb[mask] = 255
    out = crop_object(rgb, mask, "corner").transpose(1, 2, 0)
    assert (out[:8] == 0).all()  # rows above the image: black
    assert (out[:, 56:] == 0).all()  # columns right of the image: black
    np.testing.assert_array_equal(out[8:, :56], rgb[0:56, 64:120])
    # negative indices would have copied the bottom rows of the image instead
    assert not (out[:8, :56] == rgb[-8:, 64:120]).all()


def test_a_non_square_box_is_resized_to_64x64():
    rgb = _background(100, 120)
    mask = np.zeros((100, 120), dtype=bool)
    mask[40:50, 10:90] = True
    out = crop_object(rgb, mask, "wide")
    crop = rgb[32:58, 2:98]
    expected = np.asarray(Image.fromarray(crop).resize((64, 64), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out.transpose(1, 2, 0), expected)


def test_an_empty_mask_names_the_file():
    with pytest.raises(DataError, match="000007.png has an empty mask"):
        crop_object(_background(20, 20), np.zeros((20, 20), bool), "train/000001/rgb/000007.png")


# --------------------------------------------------------------------------------------- dataset


def test_folder_loads_in_sorted_order_with_the_split(tmp_path, cache):
    tiny = write_lm_train(tmp_path / "lm_train")
    bundle = LineMod(data_root=tmp_path / "lm_train", n_train_per_object=2).load(0)
    assert bundle.class_names == ["000001", "000002", "000005"]
    assert bundle.train.x.shape == (6, 3, 64, 64) and bundle.test.x.shape == (6, 3, 64, 64)
    assert bundle.train.x.dtype == np.float32 and 0 <= bundle.train.x.min() and bundle.train.x.max() <= 1
    np.testing.assert_array_equal(bundle.train.content, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(bundle.test.content, [0, 0, 1, 2, 2, 2])
    train, test = zip(*(_expected(images, 2) for images in tiny.objects.values()), strict=True)
    np.testing.assert_array_equal(bundle.train.x, np.concatenate(train))
    np.testing.assert_array_equal(bundle.test.x, np.concatenate(test))
    assert bundle.provenance["n_train_per_object"] == 2


def test_files_sort_by_number_not_by_listing_order(tmp_path, cache):
    root = tmp_path / "lm"
    images = [lm_image(i, 0) for i in range(3)]
    for name, image in zip(["10", "2", "1"], [images[2], images[1], images[0]], strict=True):
        write_png(root / "train" / "000001" / "rgb" / f"{name}.png", image.rgb)
        write_png(root / "train" / "000001" / "mask" / f"{name}.png", image.mask.astype(np.uint8) * 255)
    bundle = LineMod(data_root=tmp_path, n_train_per_object=1).load(0)  # root/lm/train is found
    expected = [crop_object(im.rgb, im.mask, "").astype(np.float32) / 255 for im in images]
    np.testing.assert_array_equal(bundle.train.x[0], expected[0])  # 1.png
    np.testing.assert_array_equal(bundle.test.x, np.stack(expected[1:]))  # 2.png, then 10.png


@pytest.mark.parametrize("prefix", ["", "lm/"])
def test_zip_and_folder_give_identical_arrays(tmp_path, cache, prefix):
    write_lm_train(tmp_path / "lm_train", mask_style="plain")
    (tmp_path / "zipped").mkdir()
    zip_folder(tmp_path / "lm_train", tmp_path / "zipped" / "lm_train.zip", prefix)
    from_folder = LineMod(data_root=tmp_path, n_train_per_object=2).load(0)  # root/lm_train/train
    from_zip = LineMod(data_root=tmp_path / "zipped", n_train_per_object=2).load(0)
    assert from_zip.provenance["source"].endswith("lm_train.zip")
    assert from_zip.class_names == from_folder.class_names
    for a, b in ((from_zip.train, from_folder.train), (from_zip.test, from_folder.test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.content, b.content)


def test_second_load_comes_from_the_cache(tmp_path, cache, monkeypatch):
    write_lm_train(tmp_path / "lm_train")
    first = LineMod(data_root=tmp_path / "lm_train", n_train_per_object=2).load(0)
    assert first.provenance["decoded_from"] == "PNG files"
    assert len(list(cache.glob("linemod-*.npz"))) == 1

    def no_preprocessing(*args):
        raise AssertionError("preprocessed again instead of using the cache")

    monkeypatch.setattr(linemod, "preprocess", no_preprocessing)
    second = LineMod(data_root=tmp_path / "lm_train", n_train_per_object=2).load(0)
    assert second.provenance["decoded_from"] == "npz cache"
    np.testing.assert_array_equal(second.train.x, first.train.x)
    np.testing.assert_array_equal(second.test.content, first.test.content)
    with pytest.raises(AssertionError, match="preprocessed again"):  # another split: another key
        LineMod(data_root=tmp_path / "lm_train", n_train_per_object=1).load(0)


def test_data_in_the_cache_folder_is_found(tmp_path, cache):
    write_lm_train(tmp_path / "src")
    cache.mkdir(parents=True)
    zip_folder(tmp_path / "src", cache / "lm_train.zip")
    bundle = LineMod(n_train_per_object=2).load(0)
    assert len(bundle.train) == 6


def test_rgb_without_mask_names_the_file(tmp_path, cache):
    write_lm_train(tmp_path / "lm_train")
    (tmp_path / "lm_train" / "train" / "000002" / "mask" / "000001_000000.png").unlink()
    with pytest.raises(DataError, match=r"000002/rgb/000001\.png has no mask"):
        LineMod(data_root=tmp_path / "lm_train", n_train_per_object=2).load(0)


def test_unreadable_png_names_the_file(tmp_path, cache):
    write_lm_train(tmp_path / "lm_train")
    bad = tmp_path / "lm_train" / "train" / "000005" / "rgb" / "000003.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match=r"000005/rgb/000003\.png is not a readable PNG"):
        LineMod(data_root=tmp_path / "lm_train", n_train_per_object=2).load(0)


def test_empty_mask_in_the_data_names_the_file(tmp_path, cache):
    write_lm_train(tmp_path / "lm_train")
    write_png(tmp_path / "lm_train" / "train" / "000001" / "mask" / "000002_000000.png",
              np.zeros((40, 48), np.uint8))
    with pytest.raises(DataError, match=r"000001/rgb/000002\.png has an empty mask"):
        LineMod(data_root=tmp_path / "lm_train", n_train_per_object=2).load(0)


def test_too_few_images_for_the_split_is_a_data_error(tmp_path, cache):
    write_lm_train(tmp_path / "lm_train")
    with pytest.raises(DataError, match="object 000002 .* has 3 images"):
        LineMod(data_root=tmp_path / "lm_train", n_train_per_object=3).load(0)
    with pytest.raises(DataError, match="n_train_per_object=1000 leaves none for test"):
        LineMod(data_root=tmp_path / "lm_train").load(0)  # the paper's default


def test_missing_data_gives_one_line_saying_where_and_how(tmp_path, cache):
    with pytest.raises(DataError) as error:
        LineMod(data_root=tmp_path / "nothing").load(0)
    message = str(error.value)
    assert "\n" not in message and message.startswith("LineMod not found (looked in: ")
    assert str(tmp_path / "nothing") in message and str(cache) in message
    assert "lm_train.zip" in message and "BOP" in message


@pytest.mark.parametrize("value", [0, -3, "abc", 2.5])
def test_bad_n_train_per_object_is_refused(tmp_path, cache, value):
    write_lm_train(tmp_path / "lm_train")
    with pytest.raises(DataError, match="n_train_per_object must be a positive integer"):
        LineMod(data_root=tmp_path / "lm_train", n_train_per_object=value).load(0)


def test_class_attributes():
    assert LineMod.name == "linemod" and LineMod.shape == (3, 64, 64) and LineMod.reported == {}
