"""Object-detection datasets: a COCO folder, a YOLO folder, and the built-in
``fashion-mnist-scenes``.

Every reader returns ``DetectionSplits``: images as float32 N x 3 x S x S in 0..1 (the
detection ONNX contract: pixels scaled to 0..1, no mean/std), and per split ``y`` as float32
N x M x 5 rows ``(class, x1, y1, x2, y2)`` in input pixels, padded with class -1 rows to the
largest box count M. Folder images are letterboxed to S x S (scaled by S / longest side,
padded right and bottom with grey 114), and their boxes scaled with them.

Folders (split by a seeded permutation, 80 % / 10 % / 10 %, as the other file datasets):

- COCO: ``annotations.json`` (``images`` with ``id``, ``file_name``, ``width``, ``height``;
  ``annotations`` with ``image_id``, ``category_id``, ``bbox`` = [x, y, w, h] in pixels;
  ``categories`` with ``id``, ``name``) and the image files under ``images/`` (or beside
  the JSON). Category ids map to classes 0.. in id order.
- YOLO: ``data.yaml`` (``names``: a list, or a mapping id -> name), ``images/`` and
  ``labels/<image stem>.txt`` with lines ``class cx cy w h`` normalized to 0..1. An image
  without a label file has no objects; a label file without its image is an error.

Anything wrong is one ``DatasetError`` (``DataError``) that names the file and the problem:
a box outside its image or of zero size, a class out of range, an annotation file that is
not JSON, a missing image.

``fashion-mnist-scenes``: S x S canvases (S = 128 by default) composed from real
Fashion-MNIST images, 1 to 3 items each at random scales (0.7x to 1.6x of 28 px) and
positions, with exact boxes (tight around each item's nonzero pixels as pasted) and the
item's class. Train, validation and test canvases draw from disjoint source images (the
official training images split 55,000 / 5,000 by the fixed permutation, and the official
test images), deterministically from ``seed``. These are composites of real images on a
black background, not natural scenes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hadmc_core.data import SPLIT_SEED, DataSplits, Split
from hadmc_core.errors import DatasetError, UnknownNameError

SCENES = "fashion-mnist-scenes"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
#: Canvases per split of ``fashion-mnist-scenes`` (train, validation, test).
SCENE_COUNTS = (2000, 300, 300)
DEFAULT_SIZE = 128
PAD_VALUE = 114
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
#: Slack (pixels) on "inside the image" for boxes stored as floats.
EDGE_SLACK = 0.5


@dataclass
class DetectionSplits(DataSplits):
    """``DataSplits`` whose ``y`` are padded box tables (see module doc)."""

    class_names: list[str] = field(default_factory=list)


def boxes_of(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The real rows of one image's padded table: (classes int64 [k], boxes float32 [k,4])."""
    keep = y[:, 0] >= 0
    return y[keep, 0].astype(np.int64), y[keep, 1:5].astype(np.float32)


def pad_targets(tables: list[np.ndarray]) -> np.ndarray:
    """Stack per-image (k, 5) tables into N x M x 5, padded with class -1."""
    m = max([1, *(len(t) for t in tables)])
    out = np.full((len(tables), m, 5), -1.0, np.float32)
    for i, t in enumerate(tables):
        out[i, :len(t)] = t
    return out


# ---------------------------------------------------------------- folders

def _letterbox(path: Path, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """3 x size x size float32 in 0..1, the scale applied, and the original (w, h)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from e
    w, h = rgb.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    canvas[:nh, :nw] = np.asarray(rgb.resize((nw, nh), Image.Resampling.BILINEAR))
    return canvas.transpose(2, 0, 1).astype(np.float32) / 255.0, scale, (w, h)


def _check_box(box: list[float], w: float, h: float, where: str) -> None:
    x1, y1, x2, y2 = box
    if not all(np.isfinite(box)):
        raise DatasetError(f"{where}: box {box} is not finite")
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise DatasetError(f"{where}: box {[round(v, 2) for v in box]} has zero or negative "
                           "size")
    if x1 < -EDGE_SLACK or y1 < -EDGE_SLACK or x2 > w + EDGE_SLACK or y2 > h + EDGE_SLACK:
        raise DatasetError(f"{where}: box {[round(v, 2) for v in box]} (x1, y1, x2, y2) lies "
                           f"outside the {w:g}x{h:g} image")


def _split(name: str, images: list[np.ndarray], tables: list[np.ndarray],
           class_names: list[str]) -> DetectionSplits:
    from hadmc_core.data import FILE_SPLIT, _split_sizes

    n = len(images)
    n_tr, n_va, _ = _split_sizes(n, FILE_SPLIT, name)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    parts = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]
    x = np.stack(images)
    y = pad_targets(tables)
    s = [Split(x[p], y[p]) for p in parts]
    return DetectionSplits(name, s[0], s[1], s[2], len(class_names), class_names=class_names)


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{path}: not a JSON annotation file ({str(e).splitlines()[0]})"
                           ) from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: a COCO annotation file is a JSON object with images, "
                           "annotations and categories")
    return doc


def _field(item: object, key: str, where: str) -> object:
    if not isinstance(item, dict) or key not in item:
        raise DatasetError(f"{where}: missing {key!r}")
    return item[key]


def read_coco(root: Path, size: int = 320) -> DetectionSplits:
    """A COCO folder (see module doc), letterboxed to ``size``."""
    ann = root / "annotations.json"
    doc = _read_json(ann)
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DatasetError(f"{ann}: {key!r} must be a list")
    cats = sorted(doc["categories"],
                  key=lambda c: int(_field(c, "id", f"{ann}: category")))  # type: ignore[call-overload]
    cls_of = {int(c["id"]): i for i, c in enumerate(cats)}
    names = [str(c.get("name", c["id"])) for c in cats]
    if not names:
        raise DatasetError(f"{ann}: no categories")
    images: dict[int, dict] = {}
    for im in doc["images"]:
        where = f"{ann}: image {im.get('id') if isinstance(im, dict) else im!r}"
        for key in ("id", "file_name", "width", "height"):
            _field(im, key, where)
        images[int(im["id"])] = im
    boxes: dict[int, list[list[float]]] = {i: [] for i in images}
    for k, a in enumerate(doc["annotations"]):
        where = f"{ann}: annotation {a.get('id', k) if isinstance(a, dict) else k}"
        image_id, cat = _field(a, "image_id", where), _field(a, "category_id", where)
        bbox = _field(a, "bbox", where)
        if image_id not in images:
            raise DatasetError(f"{where}: image_id {image_id} is not in 'images'")
        if cat not in cls_of:
            raise DatasetError(f"{where}: category_id {cat} is not in 'categories' "
                               f"({sorted(cls_of)})")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DatasetError(f"{where}: bbox must be [x, y, width, height]")
        x, y, w, h = (float(v) for v in bbox)
        im = images[int(image_id)]  # type: ignore[call-overload]
        _check_box([x, y, x + w, y + h], float(im["width"]), float(im["height"]), where)
        boxes[int(image_id)].append([cls_of[int(cat)], x, y, x + w, y + h])  # type: ignore[call-overload]
    base = root / "images" if (root / "images").is_dir() else root
    xs, tables = [], []
    for image_id, im in images.items():
        path = base / str(im["file_name"])
        if not path.is_file():
            raise DatasetError(f"{ann}: image {image_id} file {path} does not exist")
        arr, scale, _wh = _letterbox(path, size)
        t = np.asarray(boxes[image_id], np.float32).reshape(-1, 5)
        t[:, 1:] *= scale
        xs.append(arr)
        tables.append(t)
    return _split(str(root), xs, tables, names)


def _yolo_names(path: Path) -> list[str]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: not a readable YAML file ({str(e).splitlines()[0]})"
                           ) from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict):
        try:
            names = [names[k] for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            names = None
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path}: 'names' must list the class names (a list, or a "
                           "mapping 0: name, 1: name, ...)")
    return [str(n) for n in names]


def _yolo_labels(path: Path, nc: int, w: int, h: int) -> np.ndarray:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {i}"
        parts = line.split()
        try:
            cls, cx, cy, bw, bh = int(parts[0]), *(float(p) for p in parts[1:5])
        except (ValueError, IndexError):
            raise DatasetError(f"{where}: expected 'class cx cy w h', got {line.strip()!r}"
                               ) from None
        if len(parts) != 5:
            raise DatasetError(f"{where}: expected 5 fields, got {len(parts)}")
        if not 0 <= cls < nc:
            raise DatasetError(f"{where}: class {cls} out of range 0..{nc - 1}")
        box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        _check_box(box, float(w), float(h), where)
        rows.append([cls, *box])
    return np.asarray(rows, np.float32).reshape(-1, 5)


def read_yolo(root: Path, size: int = 320) -> DetectionSplits:
    """A YOLO folder (see module doc), letterboxed to ``size``."""
    names = _yolo_names(root / "data.yaml")
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir():
        raise DatasetError(f"{root}: a YOLO dataset needs an images/ folder")
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    stems = {p.stem for p in files}
    if lab_dir.is_dir():
        for lab in sorted(lab_dir.glob("*.txt")):
            if lab.stem not in stems:
                raise DatasetError(f"{lab}: label file for a missing image (no "
                                   f"images/{lab.stem}.*)")
    xs, tables = [], []
    for p in files:
        arr, scale, (w, h) = _letterbox(p, size)
        lab = lab_dir / f"{p.stem}.txt"
        t = _yolo_labels(lab, len(names), w, h) if lab.is_file() else np.zeros((0, 5),
                                                                                np.float32)
        t[:, 1:] *= scale
        xs.append(arr)
        tables.append(t)
    if not xs:
        raise DatasetError(f"{img_dir}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return _split(str(root), xs, tables, names)


# ---------------------------------------------------------------- scenes

def _compose(src: np.ndarray, labels: np.ndarray, n: int, size: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` canvases of 1-3 items each from distinct source images (see module doc)."""
    from PIL import Image

    order = rng.permutation(len(src))
    used = 0
    xs = np.zeros((n, 3, size, size), np.float32)
    tables = []
    for i in range(n):
        canvas = np.zeros((size, size), np.uint8)
        rows: list[list[float]] = []
        for _ in range(int(rng.integers(1, 4))):
            j = order[used % len(order)]
            used += 1
            side = int(round(28 * rng.uniform(0.7, 1.6)))
            item = np.asarray(Image.fromarray(src[j]).resize((side, side),
                                                             Image.Resampling.BILINEAR))
            ys_, xs_ = np.nonzero(item)
            if len(ys_) == 0:
                continue
            for _try in range(10):  # a place that overlaps the others by little
                px, py = (int(v) for v in rng.integers(0, size - side + 1, 2))
                box = [px + xs_.min(), py + ys_.min(), px + xs_.max() + 1, py + ys_.max() + 1]
                if all(_iou(box, r[1:]) < 0.2 for r in rows):
                    break
            else:
                continue
            np.maximum(canvas[py:py + side, px:px + side], item,
                       out=canvas[py:py + side, px:px + side])
            rows.append([float(labels[j]), *map(float, box)])
        xs[i] = canvas[None].astype(np.float32) / 255.0
        tables.append(np.asarray(rows, np.float32).reshape(-1, 5))
    return xs, pad_targets(tables)


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fashion_mnist_scenes(size: int = DEFAULT_SIZE, counts: tuple[int, int, int] = SCENE_COUNTS,
                         seed: int = 0) -> DetectionSplits:
    """The built-in scenes (see module doc)."""
    from hadmc_core.data import sources

    if size < 64 or size % 32:
        raise DatasetError(f"{SCENES}: the canvas side must be a multiple of 32, at least 64 "
                           f"(got {size})")
    (xtr, ytr), (xte, yte) = sources.fashion_mnist()
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(ytr))
    pools = [(xtr[perm[:55000]], ytr[perm[:55000]]), (xtr[perm[55000:]], ytr[perm[55000:]]),
             (xte, yte)]
    splits = []
    for k, ((src, lab), n) in enumerate(zip(pools, counts, strict=True)):
        x, y = _compose(src, lab, n, size, np.random.default_rng([seed, k]))
        splits.append(Split(x, y))
    return DetectionSplits(SCENES, splits[0], splits[1], splits[2], len(FASHION_CLASSES),
                           class_names=list(FASHION_CLASSES))


def load_detection(name_or_path: str, image_size: int | None = None,
                   counts: tuple[int, int, int] | None = None, seed: int = 0
                   ) -> DetectionSplits:
    """``fashion-mnist-scenes``, or a COCO / YOLO folder by path (see module doc)."""
    if name_or_path == SCENES:
        return fashion_mnist_scenes(image_size or DEFAULT_SIZE, counts or SCENE_COUNTS, seed)
    root = Path(name_or_path)
    if not root.is_dir():
        raise UnknownNameError("detection dataset", name_or_path,
                               [SCENES, "<COCO folder>", "<YOLO folder>"])
    size = image_size or 320
    if size % 32:
        raise DatasetError(f"{root}: the input side must be a multiple of 32 (got {size})")
    if (root / "annotations.json").is_file():
        return read_coco(root, size)
    if (root / "data.yaml").is_file():
        return read_yolo(root, size)
    raise DatasetError(f"{root}: neither a COCO folder (annotations.json) nor a YOLO folder "
                       "(data.yaml, images/, labels/)")
