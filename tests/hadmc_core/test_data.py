import numpy as np
import pytest

from hadmc_core import settings
from hadmc_core.data import load_dataset
from hadmc_core.errors import DatasetError, UnknownNameError


def test_digits_splits_are_fixed_and_disjoint():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert (len(a.train), len(a.val), len(a.test)) == (1257, 269, 271)
    assert np.array_equal(a.test.x, b.test.x)
    assert a.num_classes == 10 and a.in_channels == 1 and a.image_size == (8, 8)
    assert len(a.train) + len(a.val) + len(a.test) == 1797


def test_fashion_mnist_official_splits():
    try:
        d = load_dataset("fashion-mnist")
    except DatasetError as e:
        pytest.fail(f"Fashion-MNIST must be installed for the tests (CI installs it): {e}")
    assert (len(d.train), len(d.val), len(d.test)) == (55000, 5000, 10000)
    assert d.train.x.shape[1:] == (1, 28, 28) and abs(float(d.train.x.mean())) < 1e-3
    assert sorted(np.unique(d.test.y)) == list(range(10))


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("HADMC_FASHION_MNIST_DIR", str(tmp_path))
    settings.get_settings.cache_clear()
    try:
        with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
            load_dataset("fashion-mnist")
    finally:
        settings.get_settings.cache_clear()


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (100, 16, 16, 3), dtype=np.uint8),
             y=rng.integers(0, 4, 100))
    d = load_dataset(str(tmp_path / "d.npz"))
    assert d.in_channels == 3 and (len(d.train), len(d.val), len(d.test)) == (80, 10, 10)


@pytest.mark.parametrize("x,y,match", [
    (np.zeros((20, 5)), np.zeros(20, int), "images must be"),
    (np.zeros((20, 8, 8)), np.zeros(19, int), "1-D array of 20"),
    (np.zeros((20, 8, 8)), -np.ones(20, int), "labels must be >= 0"),
    (np.zeros((20, 8, 8)), np.full(20, 0.5), "labels must be integers"),
], ids=["flat-images", "label-count", "negative-label", "float-label"])
def test_bad_npz_is_rejected(tmp_path, x, y, match):
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(DatasetError, match=match):
        load_dataset(str(tmp_path / "bad.npz"))


def test_truncated_npz(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.zeros((20, 8, 8)), y=np.zeros(20, int))
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated or not a valid"):
        load_dataset(str(tmp_path / "t.npz"))


def test_image_folder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(np.full((12, 12), i * 20, np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_dataset(str(tmp_path))
    assert d.num_classes == 2 and d.image_size == (12, 12)


def test_unknown_dataset():
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        load_dataset("imagenet")


def test_random_bytes_are_not_called_pickle(tmp_path) -> None:
    bad = tmp_path / "noise.npz"
    bad.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(DatasetError, match="not a valid .npz file") as e:
        load_dataset(str(bad))
    assert "pickle" not in str(e.value)


@pytest.mark.parametrize("shape", [(40, 12, 10), (40, 3, 12, 10), (40, 12, 10, 3)],
                         ids=["nhw", "nchw", "nhwc"])
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "deflated"])
def test_describe_npz_agrees_with_load_dataset(tmp_path, shape, save):
    from hadmc_core.data import describe_npz

    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    save(path, x=rng.integers(0, 255, shape, dtype=np.uint8), y=rng.integers(0, 4, 40))
    d = load_dataset(str(path))
    assert describe_npz(path, max_bytes=2**20, max_samples=40) == {
        "num_classes": d.num_classes, "in_channels": d.in_channels,
        "image_size": list(d.image_size),
        "samples": {"train": len(d.train), "val": len(d.val), "test": len(d.test)}}


def test_npz_whose_header_declares_more_than_it_holds_is_refused(tmp_path):
    """numpy would try to allocate what the header declares (here 4 TB) before reading."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**9, 1, 32, 32)})
    y = io.BytesIO()
    np.lib.format.write_array(y, np.zeros(20, np.int64))
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as z:
        z.writestr("x.npy", header.getvalue() + bytes(64))
        z.writestr("y.npy", y.getvalue())
    with pytest.raises(DatasetError, match="declares"):
        load_dataset(str(tmp_path / "lie.npz"))
