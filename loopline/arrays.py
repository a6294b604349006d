"""Data sets stored as arrays: MNIST's .npz, or the IDX files of MNIST-like data sets.

Either way there are four arrays, x_train, y_train, x_test, y_test, each read as a stream
(never whole into memory): `check_arrays` reads them through once (the archive's and
gzip's CRCs catch damage) and returns their shapes and labels; `extract_arrays` copies
them to uncompressed .npy files and memory-maps them, for prepare.
Pure Python: no TensorFlow.
"""

from __future__ import annotations

import errno
import gzip
import shutil
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from loopline.dataset import IDX_NAMES, is_skipped
from loopline.files import WriteError, check_file

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# Arrays are copied and read this many bytes at a time.
CHUNK_BYTES = 2**20
# IDX's type codes; image files must hold unsigned bytes.
IDX_UBYTE = 0x08


@dataclass(frozen=True)
class ArrayHeader:
    shape: tuple[int, ...]
    dtype: np.dtype


def array_files(folder: Path, layout: str) -> dict[str, Path]:
    """The file holding each array: the .npz for all four, or one IDX file each."""
    names = sorted(path.name for path in folder.iterdir() if not is_skipped(path.name))
    if layout == "npz":
        archives = [name for name in names if name.endswith(".npz")]
        if len(archives) > 1:
            raise ValueError(
                f"{folder}: {len(archives)} .npz files ({', '.join(archives)}); keep one"
            )
        check_file(folder / archives[0], "replace it with the data set's .npz")
        return dict.fromkeys(ARRAYS, folder / archives[0])
    found = {}
    for (split, kind), pattern in IDX_NAMES.items():
        matches = [name for name in names if pattern.fullmatch(name)]
        name = f"{'x' if kind == 'images' else 'y'}_{split}"
        if len(matches) != 1:
            example = f"{'train' if split == 'train' else 't10k'}-{kind}-idx"
            example += f"{3 if kind == 'images' else 1}-ubyte.gz"
            raise ValueError(
                f"{folder}: {len(matches)} IDX files of {split} {kind} "
                f"({', '.join(matches) or 'none'}); expected one, such as {example}"
            )
        found[name] = folder / matches[0]
        check_file(found[name], "replace it with the data set's IDX file")
    return found


def _npy_header(stream: IO[bytes], where: str) -> ArrayHeader:
    version = np.lib.format.read_magic(stream)
    read = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read is None:
        raise ValueError(f"{where}: an .npy of format version {version}, expected 1.0 or 2.0")
    shape, fortran_order, dtype = read(stream)
    if fortran_order or dtype.hasobject:
        raise ValueError(f"{where}: a Fortran-ordered or object array; save it with np.savez")
    return ArrayHeader(tuple(shape), dtype)


def _idx_header(stream: IO[bytes], where: str) -> ArrayHeader:
    magic = stream.read(4)
    if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] != IDX_UBYTE or not 1 <= magic[3] <= 4:
        raise ValueError(f"{where}: not an IDX file of unsigned bytes (its first bytes {magic!r})")
    dims = stream.read(4 * magic[3])
    if len(dims) != 4 * magic[3]:
        raise ValueError(f"{where}: an IDX header cut short")
    return ArrayHeader(struct.unpack(f">{magic[3]}I", dims), np.dtype(np.uint8))


@contextmanager
def open_array(path: Path, name: str) -> Iterator[tuple[ArrayHeader, IO[bytes]]]:
    """Array `name` of `path`: its header, and a stream positioned at its first element."""
    if path.suffix == ".npz":
        with zipfile.ZipFile(path) as archive:
            if f"{name}.npy" not in archive.namelist():
                raise ValueError(f"{path}: missing array {name!r}; expected {', '.join(ARRAYS)}")
            with archive.open(f"{name}.npy") as stream:
                yield _npy_header(stream, f"{path}: {name}"), stream
    else:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as stream:
            yield _idx_header(stream, str(path)), stream


# What a damaged archive or gzip file raises while it is read.
DAMAGED = (OSError, EOFError, zipfile.BadZipFile, zlib.error, struct.error)


def _damaged(path: Path, error: BaseException) -> ValueError:
    kind = ".npz archive" if path.suffix == ".npz" else "IDX file"
    return ValueError(f"{path}: not a readable {kind} ({error}); restore or replace it")


def _read_through(stream: IO[bytes]) -> bytes | int:
    """Read `stream` to its end; return how many bytes it held."""
    read = 0
    while chunk := stream.read(CHUNK_BYTES):
        read += len(chunk)
    return read


def check_arrays(folder: Path, layout: str) -> tuple[dict[str, ArrayHeader], dict[str, np.ndarray]]:
    """Read every array through once: their headers, and the labels themselves."""
    files = array_files(folder, layout)
    headers, labels = {}, {}
    for name in ARRAYS:
        try:
            with open_array(files[name], name) as (header, stream):
                size = int(np.prod(header.shape, dtype=np.int64)) * header.dtype.itemsize
                if name.startswith("y"):
                    data = stream.read()
                    read = len(data)
                    if read == size:
                        labels[name] = np.frombuffer(data, header.dtype)
                else:
                    read = _read_through(stream)
        except DAMAGED as error:
            raise _damaged(files[name], error) from None
        if read != size:
            raise ValueError(
                f"{files[name]}: {name} holds {read:,} bytes of data, its header says {size:,}; "
                "restore or replace the file"
            )
        headers[name] = header
    return headers, labels


def _copy(source: IO[bytes], copy: Path) -> None:
    """Stream `source` to `copy`; a failed write is a WriteError naming `copy`, told apart
    from a damaged input (which the caller reports as such)."""
    try:
        target = copy.open("ab")
    except OSError as error:
        raise WriteError(error.errno, error.strerror, str(copy)) from None
    with target:
        while chunk := source.read(CHUNK_BYTES):
            try:
                target.write(chunk)
            except OSError as error:
                raise WriteError(error.errno, error.strerror, str(copy)) from None


def check_free_space(folder: Path, directory: Path, needed: int) -> None:
    """Refuse at once, rather than half-way, when the uncompressed arrays cannot fit."""
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise WriteError(
            errno.ENOSPC,
            f"No space left on device: the arrays of {folder} need {needed / 2**20:,.0f} MB "
            f"uncompressed while prepare runs, {free / 2**20:,.0f} MB are free",
            str(directory),
        )


def extract_arrays(folder: Path, layout: str, directory: Path, headers: dict) -> dict:
    """The four arrays, copied to .npy files in `directory` and memory-mapped.

    np.load of an .npz decompresses each array whole into memory; this streams it to disk
    in chunks instead, and the maps read only the rows that are used. `headers` are
    check_arrays' (the space needed is known before anything is copied).
    """
    files = array_files(folder, layout)
    directory.mkdir()
    sizes = [int(np.prod(header.shape)) * header.dtype.itemsize for header in headers.values()]
    check_free_space(folder, directory, sum(sizes))
    arrays = {}
    for name in ARRAYS:
        copy = directory / f"{name}.npy"
        try:
            with open_array(files[name], name) as (header, stream):
                with copy.open("wb") as file:
                    np.lib.format.write_array_header_2_0(
                        file,
                        {"descr": header.dtype.str, "fortran_order": False, "shape": header.shape},
                    )
                _copy(stream, copy)
        except WriteError:
            raise
        except DAMAGED as error:
            raise _damaged(files[name], error) from None
        arrays[name] = np.load(copy, mmap_mode="r", allow_pickle=False)
    return arrays


def check_shapes(folder: Path, headers: dict[str, ArrayHeader]) -> None:
    """The arrays' shapes and types: images uint8 [n, height, width(, 1 or 3)], labels [n]."""
    for split in ("train", "test"):
        images, labels = headers[f"x_{split}"], headers[f"y_{split}"]
        shape = images.shape
        if (
            images.dtype != np.uint8
            or len(shape) not in (3, 4)
            or (len(shape) == 4 and shape[3] not in (1, 3))
        ):
            raise ValueError(
                f"{folder}: x_{split} has shape {shape} and dtype {images.dtype}, expected "
                "(n, height, width) or (n, height, width, 3) uint8"
            )
        if len(labels.shape) != 1 or labels.dtype.kind not in "iu":
            raise ValueError(
                f"{folder}: y_{split} has shape {labels.shape} and dtype {labels.dtype}, "
                "expected (n,) integers"
            )
        if shape[0] != labels.shape[0]:
            raise ValueError(
                f"{folder}: x_{split} has {shape[0]} images but y_{split} {labels.shape[0]} labels"
            )
        if shape[0] == 0:
            raise ValueError(f"{folder}: x_{split} is empty")
    if headers["x_train"].shape[1:] != headers["x_test"].shape[1:]:
        raise ValueError(
            f"{folder}: x_train's images are {headers['x_train'].shape[1:]}, x_test's "
            f"{headers['x_test'].shape[1:]}; expected one shape"
        )
