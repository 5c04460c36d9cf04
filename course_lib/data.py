"""MNIST, Fashion-MNIST and CIFAR-10 as uint8 tensors with labels, without torchvision.

``load("mnist", "test")`` returns an :class:`ImageDataset` whose ``images`` are the raw
pixels, shape ``(N, C, H, W)``, and whose :meth:`ImageDataset.to_float` gives the
``[-1, 1]`` scale the diffusion models of the course train on.

Files live under :func:`data_root` (the ``COURSE_DATA`` environment variable, else the
repository's ``data/`` folder), one folder per data set::

    mnist/          train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
    fashion_mnist/  the same four file names
    cifar10/        cifar-10-python.tar.gz, or train/<class>/*.png and test/<class>/*.png,
                    or those trees zipped as train.zip and test.zip

A missing file is downloaded from the mirrors in :data:`MIRRORS` and checked against
its md5; offline, the error says which file to put where.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

NAMES: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10")
SPLITS: tuple[str, ...] = ("train", "test")

# The folder that marks the repository root; its data/ folder is the default data root.
REPO_MARKER = "book.yml"

# Base URLs, tried in order; a file's URL is base + file name. Tests point these at a
# local server, so every download goes through this table.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion_mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}

# The md5 sums torchvision checks, i.e. those of the files the mirrors serve.
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
}

# Folders where a system package installs a data set (Debian's dataset-fashion-mnist).
# Its files are recompressed, so their md5s differ from MD5: they are never checked.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion_mnist": [Path("/usr/share/datasets/fashion-mnist")],
}

CLASSES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}

CIFAR_TARBALL = "cifar-10-python.tar.gz"
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")
TIMEOUT_S = 30.0

_IDX_MAGIC = {"images": 2051, "labels": 2049}
_CHUNK = 1 << 20


class DataFileError(ValueError):
    """A data file that exists but cannot be read as what its name says."""


class ChecksumError(OSError):
    """A downloaded file whose md5 is not the published one."""


# ---------------------------------------------------------------------------- dataset


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """A labelled image data set held in memory.

    Attributes:
        images: uint8 pixels, shape ``(N, C, H, W)``.
        labels: int64 class indices, shape ``(N,)``.
        classes: the class names, indexed by label.
        name: the data set, one of :data:`NAMES`.
        split: ``"train"`` or ``"test"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    split: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 of shape (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 of shape ({len(self.images)},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        # The default repr would print every pixel.
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={tuple(self.images.shape[1:])}, classes={len(self.classes)})"
        )

    def to_float(self) -> torch.Tensor:
        """The images as float32 in ``[-1, 1]``: ``x = images / 127.5 - 1``."""
        return self.images.to(torch.float32) / 127.5 - 1.0

    def subset(self, n: int, generator: torch.Generator | None = None) -> ImageDataset:
        """A random subset of ``n`` images (without replacement) with their labels.

        Args:
            n: how many images to keep, at most ``len(self)``.
            generator: the random generator; pass a seeded one for a fixed subset.
        """
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot take {n} images from a data set of {len(self)}")
        index = torch.randperm(len(self), generator=generator)[:n]
        return replace(self, images=self.images[index], labels=self.labels[index])


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map floats in ``[-1, 1]`` back to uint8 pixels, clamping what lies outside.

    Exactly inverts :meth:`ImageDataset.to_float`, so real images survive the round trip.
    """
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------- where


def data_root() -> Path:
    """The folder that holds one sub-folder per data set.

    ``COURSE_DATA`` if set; else the ``data/`` folder of the repository, found by walking
    up from the working directory, then from this file, to a folder holding
    :data:`REPO_MARKER`; else ``./data`` (what a Colab notebook gets).
    """
    env = os.environ.get("COURSE_DATA")
    if env:
        return Path(env).expanduser()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if (folder / REPO_MARKER).exists():
                return folder / "data"
    return Path.cwd() / "data"


def _check_name_split(name: str, split: str) -> None:
    if name not in NAMES:
        raise ValueError(f"Unknown data set {name!r}; valid names are {', '.join(NAMES)}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use 'train' or 'test'.")


def _urls(name: str, filename: str) -> list[str]:
    return [base + filename for base in MIRRORS.get(name, [])]


def _missing(name: str, filename: str, folder: Path, tried: Sequence[str] = ()) -> str:
    urls = _urls(name, filename)
    lines = [
        f"Missing data file {filename!r} for {name}.",
        f"Put it in the folder {folder}",
        "Get it from " + (" or ".join(urls) if urls else "its publisher") + ".",
        f"(Set the COURSE_DATA environment variable to use another data folder than "
        f"{folder.parent}.)",
    ]
    if tried:
        lines.append("Download attempts: " + "; ".join(tried))
    return "\n".join(lines)


def _find_local(name: str, filename: str, folder: Path) -> Path | None:
    path = folder / filename
    if path.is_file():
        return path
    for system_dir in SYSTEM_DIRS.get(name, []):
        # The package layout has moved between releases, so search below the folder.
        hits = sorted(system_dir.glob(f"**/{filename}")) if system_dir.is_dir() else []
        if hits:
            return hits[0]
    return None


def _require(name: str, filename: str, folder: Path, download: bool) -> Path:
    """The path of ``filename``: local, from a system package, or downloaded."""
    path = _find_local(name, filename, folder)
    if path is not None:
        return path
    if not download:
        raise FileNotFoundError(_missing(name, filename, folder))
    return download_file(name, filename, folder)


# ---------------------------------------------------------------------------- download


def _fetch(url: str, out, desc: str) -> str:
    """Stream ``url`` into the open file ``out``; return the md5 of what was written."""
    from tqdm.auto import tqdm

    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        size = response.headers.get("Content-Length")
        total = int(size) if size and size.isdigit() else None
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
            disable=not total,
            leave=False,
        ) as bar:
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
        if total is not None and out.tell() != total:
            raise http.client.IncompleteRead(b"", total - out.tell())
    return digest.hexdigest()


def download_file(name: str, filename: str, folder: Path) -> Path:
    """Download ``filename`` of data set ``name`` into ``folder``, checking its md5.

    Mirrors are tried in the order of :data:`MIRRORS`. Each download goes to a
    temporary file in ``folder`` that is renamed into place only once its md5 matches,
    so an interrupted or corrupt download never leaves a file that looks complete.

    Raises:
        ChecksumError: a mirror served a file with the wrong md5 and none served it right.
        FileNotFoundError: no mirror could be reached (offline); the message says
            where to put the file by hand.
    """
    expected = MD5[name][filename]
    folder.mkdir(parents=True, exist_ok=True)
    tried: list[str] = []
    bad_sum: ChecksumError | None = None
    for url in _urls(name, filename):
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                actual = _fetch(url, out, desc=filename)
            if actual != expected:
                # Keep trying: one bad mirror (or a captive portal) should not stop us.
                bad_sum = ChecksumError(
                    f"md5 checksum mismatch for {filename} downloaded from {url}: "
                    f"expected {expected}, got {actual}. The file was deleted; "
                    "try again later, or fetch it by hand and put it in " + str(folder)
                )
                tried.append(f"{url}: md5 {actual} != {expected}")
                continue
            final = folder / filename
            tmp.chmod(0o644)  # mkstemp's 0600 would hide the file from other users
            os.replace(tmp, final)
            return final
        except (OSError, http.client.HTTPException, ValueError) as err:
            # URLError (no network, refused, HTTP 404) is an OSError: next mirror.
            tried.append(f"{url}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    if bad_sum is not None:
        raise bad_sum
    raise FileNotFoundError(_missing(name, filename, folder, tried))


# ---------------------------------------------------------------------------- IDX


def read_idx(path: Path, kind: str) -> np.ndarray:
    """Read an IDX file (gzipped or not) of ``kind`` ``"images"`` or ``"labels"``.

    The format is a big-endian header (magic number, then one uint32 per dimension)
    followed by the uint8 values. Returns ``(N, rows, cols)`` or ``(N,)`` uint8.

    Raises:
        DataFileError: a wrong magic number or size; the message names the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"cannot read {path}: {err}. Delete it and load again.") from err
    magic = _IDX_MAGIC[kind]
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        raise DataFileError(
            f"{path} is not an IDX {kind} file: magic number {found}, expected {magic}."
        )
    if len(data) < header:
        raise DataFileError(f"{path}: truncated IDX header.")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DataFileError(
            f"{path}: the header promises {shape} values ({header + int(np.prod(shape))} "
            f"bytes) but the file holds {len(data)} bytes. Delete it and load again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _load_idx(name: str, split: str, root: Path, download: bool) -> ImageDataset:
    prefix = "train" if split == "train" else "t10k"
    folder = root / name
    image_path = _require(name, f"{prefix}-images-idx3-ubyte.gz", folder, download)
    label_path = _require(name, f"{prefix}-labels-idx1-ubyte.gz", folder, download)
    images = read_idx(image_path, "images")
    labels = read_idx(label_path, "labels")
    if len(images) != len(labels):
        raise DataFileError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels."
        )
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels).to(torch.int64),
        classes=CLASSES[name],
        name=name,
        split=split,
    )


# ---------------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only.

    A pickle can run any code on load; the CIFAR batches need nothing but arrays, so
    a tampered tarball fails here instead of executing.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol 2 stores Python 3 bytes
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _load_cifar_tarball(path: Path, split: str) -> ImageDataset:
    wanted = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    batches: dict[str, dict] = {}
    meta: dict | None = None
    try:
        with tarfile.open(path, "r:gz") as tar:
            # One pass in archive order: seeking back in a gzip stream re-reads it.
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or (base not in wanted and base != "batches.meta"):
                    continue
                f = tar.extractfile(member)
                if f is None:
                    continue
                content = _ArrayUnpickler(f, encoding="bytes").load()
                if base == "batches.meta":
                    meta = content
                else:
                    batches[base] = content
    except (
        OSError,
        EOFError,
        zlib.error,
        tarfile.TarError,
        pickle.UnpicklingError,
        ValueError,
    ) as err:
        raise DataFileError(f"cannot read the CIFAR-10 tarball {path}: {err}") from err
    missing = [b for b in wanted if b not in batches]
    if missing:
        raise DataFileError(f"{path} lacks the batch(es) {', '.join(missing)}.")
    try:
        data = np.concatenate([np.asarray(batches[b][b"data"], np.uint8) for b in wanted])
        labels = np.concatenate([np.asarray(batches[b][b"labels"]) for b in wanted])
    except (KeyError, TypeError, ValueError) as err:
        raise DataFileError(f"{path}: a batch is not a CIFAR-10 batch ({err!r}).") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataFileError(f"{path}: unexpected batch shapes {data.shape}, {labels.shape}.")
    if meta is not None and b"label_names" in meta:
        classes = tuple(
            n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]
        )
    else:
        classes = tuple(str(i) for i in range(int(labels.max()) + 1))
    return ImageDataset(
        # Each row is the red plane, then green, then blue, each row-major: already CHW.
        images=torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=classes,
        name="cifar10",
        split=split,
    )


def _image_files(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files = [
        (path, label)
        for label, cls in enumerate(classes)
        for path in sorted((split_dir / cls).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    return classes, files


def _decode_images(
    files: Sequence[tuple[Path | str, int]], opener: Callable[[Path | str], Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode image files (``opener(path)`` gives a binary file object) to a uint8
    ``(N, 3, H, W)`` tensor and their labels."""
    from PIL import Image
    from tqdm.auto import tqdm

    first_shape = None
    images = []
    for path, _ in tqdm(files, desc="decoding images", disable=len(files) < 2000, leave=False):
        with opener(path) as f, Image.open(f) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if first_shape is None:
            first_shape = pixels.shape
        elif pixels.shape != first_shape:
            raise DataFileError(f"{path} is {pixels.shape}, the images before it {first_shape}.")
        images.append(pixels)
    stacked = np.stack(images).transpose(0, 3, 1, 2).copy()  # HWC -> CHW
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return torch.from_numpy(stacked), labels


@contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path next to ``final`` that replaces it only if the block succeeds."""
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(0o644)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _load_image_folder(split_dir: Path, split: str) -> ImageDataset:
    classes, files = _image_files(split_dir)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {split_dir}/<class>/")
    cache = split_dir.parent / f"{split}.cache.pt"
    return _cached_images(cache, split, classes, files, lambda path: open(path, "rb"))


def _load_image_zip(archive: Path, split: str) -> ImageDataset:
    """An image folder tree packed as ``<split>.zip`` (``<split>/<class>/<file>.jpg``,
    how the folder exports of many tools and the workplace copies look), decoded
    straight from the archive: nothing is extracted."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataFileError(
            f"{archive} is not a readable zip archive ({err}). Download it again, or delete "
            "it and put the images in a folder tree <split>/<class>/<image> instead."
        ) from err
    with zf:
        entries = [
            PurePosixPath(n)
            for n in zf.namelist()
            if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES
            and len(PurePosixPath(n).parts) >= 2
        ]
        classes = sorted({e.parent.name for e in entries})
        index = {c: i for i, c in enumerate(classes)}
        files = [(str(e), index[e.parent.name]) for e in sorted(entries)]
        if not files:
            raise DataFileError(
                f"{archive} holds no {'/'.join(IMAGE_SUFFIXES)} images in <class>/ folders."
            )
        try:
            return _cached_images(
                archive.with_name(f"{split}.cache.pt"), split, classes, files, zf.open
            )
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise DataFileError(f"{archive} is damaged ({err}). Download it again.") from err


def _cached_images(
    cache: Path,
    split: str,
    classes: list[str],
    files: Sequence[tuple[Path | str, int]],
    opener: Callable[[Path | str], Any],
) -> ImageDataset:
    """Decode ``files`` once; later loads read the uint8 tensor cached in ``cache``."""
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            if saved["count"] == len(files) and list(saved["classes"]) == classes:
                return ImageDataset(
                    saved["images"], saved["labels"], tuple(classes), "cifar10", split
                )
        except Exception as err:  # any unreadable cache is simply rebuilt
            warnings.warn(f"ignoring the unreadable cache {cache}: {err}", stacklevel=3)
    images, labels = _decode_images(files, opener)
    payload = {"count": len(files), "classes": classes, "images": images, "labels": labels}
    try:
        with _atomic_path(cache) as tmp:
            torch.save(payload, tmp)
    except OSError as err:
        # A read-only data folder still loads, just without the speed-up next time.
        warnings.warn(f"could not write the cache {cache}: {err}", stacklevel=3)
    return ImageDataset(images, labels, tuple(classes), "cifar10", split)


def _load_cifar(split: str, root: Path, download: bool) -> ImageDataset:
    folder = root / "cifar10"
    tarball = folder / CIFAR_TARBALL
    if tarball.is_file():
        return _load_cifar_tarball(tarball, split)
    split_dir = folder / split
    if split_dir.is_dir():
        return _load_image_folder(split_dir, split)
    if (folder / f"{split}.zip").is_file():
        return _load_image_zip(folder / f"{split}.zip", split)
    if not download:
        raise FileNotFoundError(
            _missing("cifar10", CIFAR_TARBALL, folder)
            + f"\nOr put the images as {split_dir}/<class>/*.png (one folder per class), "
            f"or that tree zipped as {folder / (split + '.zip')}."
        )
    return _load_cifar_tarball(download_file("cifar10", CIFAR_TARBALL, folder), split)


# ---------------------------------------------------------------------------- load


def load(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> ImageDataset:
    """Load a data set split into memory.

    Args:
        name: one of :data:`NAMES`.
        split: ``"train"`` or ``"test"``.
        root: the data folder; default :func:`data_root`.
        download: fetch missing files from :data:`MIRRORS`; if False, a missing file
            raises at once.

    Returns:
        The images (uint8, ``(N, C, H, W)``) with their labels and class names.

    Raises:
        ValueError: an unknown name or split.
        FileNotFoundError: a file is missing and cannot be downloaded; the message
            names the file, the folder to put it in and where to get it.
        DataFileError: a file is there but is not what its name says.
        ChecksumError: a download's md5 did not match.
    """
    _check_name_split(name, split)
    root = Path(root).expanduser() if root is not None else data_root()
    if name == "cifar10":
        return _load_cifar(split, root, download)
    return _load_idx(name, split, root, download)
