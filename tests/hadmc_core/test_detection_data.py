"""Detection datasets: COCO and YOLO folders written here, and fashion-mnist-scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hadmc_core.data.detection import boxes_of, fashion_mnist_scenes, load_detection
from hadmc_core.errors import DataError, DatasetError
from hadmc_core.settings import get_settings

N = 12  # at least data.MIN_SAMPLES


def _image(path: Path, w: int = 64, h: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)


def _coco(root: Path, boxes: list[list[float]] | None = None, cat: int = 7) -> Path:
    images, anns = [], []
    for i in range(N):
        _image(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 32})
        for b in boxes or [[4, 2, 20, 10]]:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat,
                         "bbox": b})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def _yolo(root: Path, lines: str = "1 0.5 0.5 0.25 0.5\n", skip_label: int | None = None
          ) -> Path:
    (root / "labels").mkdir(parents=True)
    (root / "data.yaml").write_text("names: [cat, dog]\n")
    for i in range(N):
        _image(root / "images" / f"im{i}.png")
        if i != skip_label:
            (root / "labels" / f"im{i}.txt").write_text(lines)
    return root


def test_coco_reader_letterboxes_and_scales_boxes(tmp_path):
    ds = load_detection(str(_coco(tmp_path)), image_size=128)
    assert ds.class_names == ["dog", "cat"]  # ordered by category id
    assert ds.train.x.shape[1:] == (3, 128, 128) and ds.train.x.dtype == np.float32
    assert ds.train.x.min() >= 0.0 and ds.train.x.max() <= 1.0
    cls, boxes = boxes_of(ds.train.y[0])
    assert cls.tolist() == [1]  # category 7 is the second class
    # 64x32 letterboxed into 128: scale 2; [4, 2, 20, 10] xywh -> x1y1x2y2 * 2
    np.testing.assert_allclose(boxes[0], [8, 4, 48, 24])
    assert len(ds.train) + len(ds.val) + len(ds.test) == N


@pytest.mark.parametrize(("boxes", "cat", "message"), [
    pytest.param([[50, 2, 20, 10]], 7, "outside the 64x32 image", id="outside"),
    pytest.param([[4, 2, 0, 10]], 7, "zero or negative size", id="zero-width"),
    pytest.param([[4, 2, 20, 10]], 99, "category_id 99 is not in 'categories'",
                 id="unknown-category"),
])
def test_coco_reader_refuses_bad_boxes(tmp_path, boxes, cat, message):
    with pytest.raises(DataError, match=message) as e:
        load_detection(str(_coco(tmp_path, boxes, cat)))
    assert "annotations.json: annotation" in str(e.value) and "\n" not in str(e.value)


def test_coco_reader_refuses_non_json_and_missing_image(tmp_path):
    root = _coco(tmp_path / "a")
    (root / "annotations.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"annotations.json: not a JSON annotation file"):
        load_detection(str(root))
    root = _coco(tmp_path / "b")
    (root / "images" / "3.png").unlink()
    with pytest.raises(DatasetError, match=r"image 4 file .*3.png does not exist"):
        load_detection(str(root))


def test_yolo_reader_reads_normalized_boxes_and_images_without_labels(tmp_path):
    ds = load_detection(str(_yolo(tmp_path, skip_label=0)), image_size=64)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    tables = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    counts = sorted(len(boxes_of(t)[0]) for t in tables)
    assert counts == [0] + [1] * (N - 1)  # the image without a label file has no objects
    cls, boxes = boxes_of(next(t for t in tables if (t[:, 0] >= 0).any()))
    # cx 0.5 cy 0.5 w 0.25 h 0.5 of 64x32, letterboxed into 64 (scale 1)
    assert cls.tolist() == [1]
    np.testing.assert_allclose(boxes[0], [24, 8, 40, 24])


@pytest.mark.parametrize(("lines", "message"), [
    pytest.param("5 0.5 0.5 0.2 0.2\n", "line 1: class 5 out of range 0..1", id="class"),
    pytest.param("0 0.95 0.5 0.2 0.2\n", "outside the 64x32 image", id="outside"),
    pytest.param("0 0.5 0.5 0 0.2\n", "zero or negative size", id="zero-size"),
    pytest.param("0 0.5 0.5\n", "expected 'class cx cy w h'", id="fields"),
])
def test_yolo_reader_refuses_bad_labels(tmp_path, lines, message):
    with pytest.raises(DataError, match=message) as e:
        load_detection(str(_yolo(tmp_path, lines)))
    assert ".txt, line 1" in str(e.value)


def test_yolo_reader_refuses_a_label_file_without_its_image(tmp_path):
    root = _yolo(tmp_path)
    (root / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"ghost.txt: label file for a missing image"):
        load_detection(str(root))


def test_a_folder_that_is_neither_is_refused(tmp_path):
    _image(tmp_path / "x.png")
    with pytest.raises(DataError, match="neither a COCO folder"):
        load_detection(str(tmp_path))


needs_fashion = pytest.mark.skipif(
    not (get_settings().fashion_mnist_dir / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs the dataset-fashion-mnist package")


@needs_fashion
def test_scenes_have_tight_boxes_and_are_deterministic():
    a = fashion_mnist_scenes(64, (12, 4, 4), seed=3)
    b = fashion_mnist_scenes(64, (12, 4, 4), seed=3)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert not np.array_equal(a.train.x, fashion_mnist_scenes(64, (12, 4, 4), seed=4).train.x)
    assert a.class_names[0] == "T-shirt/top" and a.train.x.shape == (12, 3, 64, 64)
    for x, y in zip(a.train.x, a.train.y, strict=True):
        cls, boxes = boxes_of(y)
        assert 1 <= len(cls) <= 3 and ((cls >= 0) & (cls < 10)).all()
        covered = np.zeros(x.shape[1:], bool)
        for x1, y1, x2, y2 in boxes.astype(int):
            covered[y1:y2, x1:x2] = True
            # tight: every edge row and column of the box holds a nonzero pixel
            patch = x[0, y1:y2, x1:x2] > 0
            assert patch[0].any() and patch[-1].any()
            assert patch[:, 0].any() and patch[:, -1].any()
        assert not (x[0][~covered] > 0).any()  # nothing outside the boxes
