"""Datasets: built-in names, uploaded .npz files validated with hadmc_core.data, and COCO or
YOLO detection folders uploaded as a .zip (unpacked by ``archives``, then validated)."""

from __future__ import annotations

import json
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_service.errors import InvalidInputError, PayloadTooLargeError
from cloud_service.models import Dataset
from cloud_service.services import archives
from cloud_service.settings import Settings
from cloud_service.storage import ArtifactStore

ArchiveKind = Literal["coco", "yolo"]
#: Uploaded kinds: an .npz of labelled images, or a detection folder as a .zip.
UPLOAD_KINDS = ("npz", "coco", "yolo")
#: Built-in datasets whose task is detection (the others are classification).
DETECTION_BUILTINS = ("fashion-mnist-scenes",)
#: The setting behind each limit of ``hadmc_core.data.describe_npz``.
LIMIT_SETTINGS = {"bytes": "HADMC_MAX_DATASET_DECOMPRESSED_MB",
                  "samples": "HADMC_MAX_DATASET_SAMPLES"}


def describe_npz(store: ArtifactStore, digest: str, settings: Settings) -> dict[str, Any]:
    """Check the stored .npz from its headers (bounded memory, no pickle) and summarize it;
    PayloadTooLargeError over the dataset limits, InvalidInputError when it is invalid."""
    from hadmc_core.data import describe_npz
    from hadmc_core.errors import DatasetTooLargeError, HadmcError

    try:
        return describe_npz(store.path(digest), max_bytes=settings.max_dataset_decompressed_bytes,
                            max_samples=settings.max_dataset_samples, source="the upload")
    except DatasetTooLargeError as e:
        raise PayloadTooLargeError(f"{e} ({LIMIT_SETTINGS[e.limit]})") from e
    except HadmcError as e:
        raise InvalidInputError(str(e)) from e


def create_dataset(*, session: Session, name: str, builtin: str | None = None,
                   digest: str | None = None, size: int = 0,
                   details: dict[str, Any] | None = None, owner_id: int | None) -> Dataset:
    row = Dataset(name=name, builtin=builtin, artifact_hash=digest, size_bytes=size,
                  details=details or {}, owner_id=owner_id)
    session.add(row)
    session.flush()
    return row


def get_dataset(*, session: Session, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def list_datasets(*, session: Session, offset: int, limit: int) -> tuple[list[Dataset], int]:
    rows = session.scalars(select(Dataset).order_by(Dataset.id.desc()).offset(offset)
                           .limit(limit))
    return list(rows), session.scalar(select(func.count(Dataset.id))) or 0


def dataset_task(row: Dataset) -> str:
    """``detect`` for COCO and YOLO folders and built-in detection sets, else ``classify``."""
    kind = (row.details or {}).get("kind")
    return "detect" if kind in ("coco", "yolo") or row.builtin in DETECTION_BUILTINS \
        else "classify"


def archive_limits(settings: Settings) -> archives.Limits:
    return archives.Limits(max_bytes=settings.max_dataset_decompressed_bytes,
                           max_files=settings.max_dataset_files)


def unpack(store: ArtifactStore, digest: str, settings: Settings, dest: Path) -> Path:
    """Unpack the stored archive into ``dest`` (checked for zip-slip and zip bombs); returns
    the dataset folder inside it."""
    return archives.extract(store.path(digest), dest, archive_limits(settings))


def describe_archive(store: ArtifactStore, digest: str, settings: Settings,
                     kind: ArchiveKind) -> dict[str, Any]:
    """Unpack the stored .zip in a temporary directory, validate the folder and summarize it;
    InvalidInputError (422) or PayloadTooLargeError (413) naming the entry and the problem."""
    with tempfile.TemporaryDirectory(dir=store.root / "tmp", prefix="dataset-") as tmp:
        root = unpack(store, digest, settings, Path(tmp))
        return validate_folder(kind, root)


#: Images are decoded at this side (letterboxed) to validate a folder: every file is read
#: while the memory stays near 12 kB per image.
VALIDATE_SIDE = 32
#: An image whose header declares more pixels is refused before it is decoded (a PNG of a
#: few kB can declare gigapixels).
MAX_IMAGE_PIXELS = 50_000_000


#: Errors of reading files that the detection reader does not turn into a DatasetError (a
#: value of the wrong type in annotations.json, a truncated image): 422, not 500.
READ_ERRORS = (ValueError, TypeError, KeyError, IndexError, SyntaxError, OSError,
               struct.error, zlib.error)
#: The pipeline's task names (``hadmc_core.tasks``) of a job's task.
CORE_TASKS = {"classify": "classification", "detect": "detect"}
#: Folder images are letterboxed to the smallest multiple of 32 that holds the largest
#: image, within these bounds (a model with a fixed input size takes that size instead).
DETECT_SIDES = (64, 320)


def detection_side(details: dict[str, Any], onnx_path: Path | None = None) -> int | None:
    """The side a detection job letterboxes images to: a fixed square ONNX input's, else
    from the dataset's largest image (None: the reader's default)."""
    if onnx_path is not None:
        import onnx

        dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0] \
            .type.tensor_type.shape.dim
        hw = [d.dim_value for d in dims[2:4]] if len(dims) == 4 else []
        if len(hw) == 2 and hw[0] == hw[1] and hw[0] > 0:
            return int(hw[0])
    largest = details.get("max_image_side")
    if not isinstance(largest, int) or largest <= 0:
        return None
    lo, hi = DETECT_SIDES
    return max(lo, min(hi, -(-largest // 32) * 32))


def load_detection_data(*, dataset: Dataset, store: ArtifactStore, settings: Settings,
                        tmp: Path, onnx_path: Path | None = None) -> Any:
    """A detection dataset's splits for a job: a built-in one, or its archive unpacked (with
    the same checks as at upload) under ``tmp`` and read by ``hadmc_core.data.detection``."""
    from hadmc_core.data.detection import load_detection

    side = detection_side(dataset.details or {}, onnx_path)
    if dataset.builtin:
        return load_detection(dataset.builtin, side)
    dest = tmp / "dataset"
    dest.mkdir()
    return load_detection(str(unpack(store, dataset.artifact_hash or "", settings, dest)), side)


def validate_folder(kind: ArchiveKind, root: Path) -> dict[str, Any]:
    """The one place a detection folder is validated: a structural check that names the
    file and the problem, image headers checked against MAX_IMAGE_PIXELS, then the detection
    reader (``hadmc_core.data.detection``) reads every image and box as a job will."""
    from hadmc_core.errors import HadmcError

    details = _check_structure(kind, root)
    details["max_image_side"] = _check_image_sizes(root)
    try:
        details.update(_read_with_core(kind, root))
    except HadmcError as e:
        msg = str(e).replace(f"{root}/", "").replace(str(root), "the archive")
        raise InvalidInputError(f"{kind} dataset: {msg}") from e
    except READ_ERRORS as e:  # what the reader let through: a field of the wrong type, ...
        msg = str(e).replace(f"{root}/", "").replace(str(root), "the archive")[:300]
        raise InvalidInputError(f"{kind} dataset: cannot be read ({type(e).__name__}: "
                                f"{msg})") from e
    return {"kind": kind, "task": "detect", **details}


def _read_with_core(kind: ArchiveKind, root: Path) -> dict[str, Any]:
    import numpy as np

    from hadmc_core.data.detection import read_coco, read_yolo

    data = (read_coco if kind == "coco" else read_yolo)(root, VALIDATE_SIDE)
    parts = {"train": data.train, "validation": data.val, "test": data.test}
    return {"samples": {k: len(v.x) for k, v in parts.items()},
            "images": sum(len(v.x) for v in parts.values()),
            "annotations": int(sum(np.sum(v.y[..., 0] >= 0) for v in parts.values())),
            "classes": list(data.class_names), "validated_by": "hadmc_core.data.detection"}


def _check_image_sizes(root: Path) -> int:
    """The largest side among the images; 413 for an image over MAX_IMAGE_PIXELS."""
    from PIL import Image, UnidentifiedImageError

    from hadmc_core.data.detection import IMAGE_SUFFIXES

    largest = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        rel = path.relative_to(root).as_posix()
        try:
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
        except (UnidentifiedImageError, Image.DecompressionBombError, *READ_ERRORS) as e:
            raise InvalidInputError(f"{rel}: not a readable image ({e})") from e
        if w * h > MAX_IMAGE_PIXELS:
            raise PayloadTooLargeError(f"{rel}: {w}x{h} pixels, over the limit of "
                                       f"{MAX_IMAGE_PIXELS} per image")
        largest = max(largest, w, h)
    return largest


def _read_json(path: Path, rel: str) -> Any:
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{rel}: not valid JSON ({e})") from e


def _check_structure(kind: ArchiveKind, root: Path) -> dict[str, Any]:
    """What the reader does not check: the layout's marker file is there (a clear message
    for a wrong ``kind``), and no COCO ``file_name`` points outside the folder."""
    if kind == "yolo":
        if not (root / "data.yaml").is_file():
            raise InvalidInputError("yolo dataset: data.yaml is missing at the top of the "
                                    "archive (expected data.yaml, images/ and labels/)")
        return {}
    ann = root / "annotations.json"
    if not ann.is_file():
        raise InvalidInputError("coco dataset: annotations.json is missing at the top of the "
                                "archive (expected annotations.json and images/)")
    doc = _read_json(ann, "annotations.json")
    images = doc.get("images") if isinstance(doc, dict) else None
    top = root.resolve()
    for im in images if isinstance(images, list) else []:
        name = im.get("file_name") if isinstance(im, dict) else None
        if isinstance(name, str) and top not in (top / "images" / name).resolve().parents:
            raise InvalidInputError(f"annotations.json: image {im.get('id')}: file_name "
                                    f"{name!r} points outside the dataset folder")
    return {}
