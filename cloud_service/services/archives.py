"""Unpack an uploaded ``.zip`` (a COCO or YOLO dataset folder) with bounded memory and disk.

Every entry is checked from the central directory before anything is written:

- zip-slip: absolute names, drive letters, backslashes, ``..`` components, control
  characters; symlinks and other non-regular files (Unix mode bits); two entries that land
  on the same path, or a file where another entry needs a directory;
- zip bombs: more than ``max_files`` entries, more than ``max_bytes`` declared inflated in
  all, an entry (over 1 MiB inflated) or the whole archive inflating more than
  ``max_ratio`` times its compressed size;
- encrypted entries and compression methods other than stored and deflated.

Then each file is streamed out a chunk at a time (``CHUNK`` bytes of memory), opened with
``O_EXCL | O_NOFOLLOW`` under the destination, counting what it inflates: an entry that
inflates past its declared size (a header that lies) is cut and refused, and zipfile checks
each entry's CRC-32. ``__MACOSX/`` entries (Finder's resource forks) are skipped.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cloud_service.errors import InvalidInputError, PayloadTooLargeError

CHUNK = 1 << 20
#: Entries smaller than this (inflated) are not held to the ratio: tiny files of zeros or
#: repeated text legitimately compress a hundredfold.
RATIO_FLOOR = 1 << 20
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Limits:
    max_bytes: int                 # inflated, all entries together
    max_files: int                 # entries, directories included
    max_ratio: float = 200.0       # inflated / compressed, per large entry and overall
    bytes_setting: str = "HADMC_MAX_DATASET_DECOMPRESSED_MB"
    files_setting: str = "HADMC_MAX_DATASET_FILES"


def _bad(name: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"archive entry {name!r}: {problem}")


def _parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path components, or InvalidInputError when it could leave the folder."""
    name = info.filename
    if _CONTROL.search(name):
        raise _bad(name, "the name contains control characters")
    if "\\" in name:
        raise _bad(name, "the name contains a backslash; zip paths use '/'")
    if name.startswith("/") or _DRIVE.match(name):
        raise _bad(name, "an absolute path; entries must be relative to the dataset folder")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if ".." in parts:
        raise _bad(name, "a '..' component would write outside the dataset folder")
    if not parts:
        raise _bad(name, "an empty path")
    return parts


def _check_kind(info: zipfile.ZipInfo) -> None:
    # Unix zips keep st_mode in the high 16 bits; the file type bits may be absent
    fmt = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
    if fmt == stat.S_IFLNK:
        raise _bad(info.filename, "a symbolic link; archives must hold plain files only")
    if fmt not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _bad(info.filename, "not a plain file or directory")
    if info.flag_bits & 0x1:
        raise _bad(info.filename, "encrypted; upload an unencrypted archive")
    if info.compress_type not in METHODS:
        raise _bad(info.filename, f"compression method {info.compress_type} is not supported "
                                  "(use stored or deflated, as zip tools do by default)")


def plan(zf: zipfile.ZipFile, limits: Limits, archive_size: int
         ) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Check every entry from the central directory; returns the files to write with their
    path components (directories are implied by the files)."""
    infos = zf.infolist()
    if len(infos) > limits.max_files:
        raise PayloadTooLargeError(f"the archive holds {len(infos)} entries, over the limit of "
                                   f"{limits.max_files} ({limits.files_setting})")
    files: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    seen: dict[tuple[str, ...], str] = {}
    dirs: set[tuple[str, ...]] = set()
    total = 0
    for info in infos:
        parts = _parts(info)
        if parts[0] == "__MACOSX":
            continue
        _check_kind(info)
        if parts in seen:
            raise _bad(info.filename, f"a second entry for the same path as {seen[parts]!r}")
        seen[parts] = info.filename
        dirs.update(parts[:i] for i in range(1, len(parts)))
        if info.is_dir():
            dirs.add(parts)
            continue
        total += info.file_size
        if total > limits.max_bytes:
            raise PayloadTooLargeError(
                f"the archive inflates to more than {limits.max_bytes} bytes "
                f"({limits.bytes_setting}); {info.filename!r} reaches {total}")
        if info.file_size > RATIO_FLOOR and \
                info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise PayloadTooLargeError(
                f"archive entry {info.filename!r} inflates {info.compress_size} bytes to "
                f"{info.file_size}, more than {limits.max_ratio:g} times (a zip bomb?)")
        files.append((info, parts))
    if total > RATIO_FLOOR and total > limits.max_ratio * max(archive_size, 1):
        raise PayloadTooLargeError(f"the archive inflates {archive_size} bytes to {total}, more "
                                   f"than {limits.max_ratio:g} times (a zip bomb?)")
    for info, parts in files:
        if parts in dirs:
            raise _bad(info.filename, "a file where other entries need a directory")
    return files


def _write(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise PayloadTooLargeError(f"archive entry {info.filename!r} inflates past "
                                           f"the {info.file_size} bytes its header declares")
            out.write(chunk)


def extract(archive: Path, dest: Path, limits: Limits) -> Path:
    """Unpack ``archive`` into the empty directory ``dest``; returns the dataset folder: the
    only directory at the top when the archive wraps everything in one, else ``dest``."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidInputError(f"the upload is not a readable .zip archive ({e})") from e
    root = dest.resolve()
    with zf:
        for info, parts in plan(zf, limits, archive.stat().st_size):
            target = root.joinpath(*parts)
            if root not in target.parents:  # _parts already refuses this; never write outside
                raise _bad(info.filename, "resolves outside the dataset folder")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                _write(zf, info, target)
            except (zipfile.BadZipFile, EOFError, NotImplementedError) as e:
                raise _bad(info.filename, f"cannot be read ({e})") from e
            except (zlib.error, RuntimeError) as e:
                raise _bad(info.filename, f"cannot be inflated ({e})") from e
            except OSError as e:
                raise _bad(info.filename, f"cannot be written ({e.strerror})") from e
    top = list(root.iterdir())
    return top[0] if len(top) == 1 and top[0].is_dir() else root
