"""Tests of course_lib.data on real MNIST / CIFAR-10 files and a local HTTP mirror.

The real files come from the ``shared/data`` folder beside the repository (override with
``COURSE_SHARED_DATA``); tests that need them skip, saying why, when it is absent.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import pickle
import shutil
import socket
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib import data

MNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Digits 0..9 in the official MNIST test split.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# Mean pixel of the test split: 0.1325 * 255 (the often quoted 0.1307, i.e. 33.3, is
# the training split's).
MNIST_TEST_MEAN = 33.79


# ---------------------------------------------------------------------------- fixtures


def shared_data() -> Path:
    env = os.environ.get("COURSE_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    folder = shared_data() / "mnist-test"
    missing = [f for f in MNIST_TEST_FILES if not (folder / f).is_file()]
    if missing:
        pytest.skip(f"real MNIST test files {missing} not in {folder} (set COURSE_SHARED_DATA)")
    return folder


@pytest.fixture(scope="module")
def mnist_root(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the real MNIST test split in the layout load() expects."""
    root = tmp_path_factory.mktemp("mnist_root")
    (root / "mnist").mkdir()
    for f in MNIST_TEST_FILES:
        shutil.copy(mnist_dir / f, root / "mnist" / f)
    return root


@pytest.fixture(scope="module")
def mnist_test(mnist_root: Path) -> data.ImageDataset:
    return data.load("mnist", "test", root=mnist_root, download=False)


@pytest.fixture(scope="module")
def cifar_zip() -> Path:
    path = shared_data() / "cifar10-jpeg" / "test.zip"
    if not path.is_file():
        pytest.skip(f"real CIFAR-10 JPEG zip not at {path} (set COURSE_SHARED_DATA)")
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], str]]:
    """Start local HTTP servers for folders; every one is shut down after the test."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """The URL of a port nothing listens on, so connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files a failed write might leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------- MNIST


def test_mnist_test_split(mnist_test: data.ImageDataset) -> None:
    assert mnist_test.images.shape == (10000, 1, 28, 28)
    assert mnist_test.images.dtype == torch.uint8
    assert mnist_test.labels.dtype == torch.int64
    assert len(mnist_test) == 10000
    assert mnist_test.labels.bincount().tolist() == MNIST_TEST_COUNTS
    assert mnist_test.labels.bincount()[1] == 1135 and mnist_test.labels.bincount()[5] == 892
    assert mnist_test.images.double().mean().item() == pytest.approx(MNIST_TEST_MEAN, abs=0.05)
    assert mnist_test.classes == tuple("0123456789")
    assert (mnist_test.name, mnist_test.split) == ("mnist", "test")
    assert "n=10000" in repr(mnist_test)


def test_to_float_range_and_exact_round_trip(mnist_test: data.ImageDataset) -> None:
    x = mnist_test.to_float()
    assert x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.equal(data.to_uint8(x), mnist_test.images)
    every = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    ds = data.ImageDataset(every, torch.zeros(1, dtype=torch.int64), ("a",), "x", "test")
    assert torch.equal(data.to_uint8(ds.to_float()), every)
    clamped = data.to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]))
    assert clamped.tolist() == [0, 0, 128, 255, 255]


def test_subset(mnist_test: data.ImageDataset) -> None:
    a = mnist_test.subset(100, generator=torch.Generator().manual_seed(0))
    b = mnist_test.subset(100, generator=torch.Generator().manual_seed(0))
    assert len(a) == 100 and a.images.shape == (100, 1, 28, 28)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert (a.classes, a.name, a.split) == (mnist_test.classes, "mnist", "test")
    # Each kept image keeps its own label.
    flat = mnist_test.images.flatten(1)
    for img, label in zip(a.images[:10], a.labels[:10], strict=True):
        where = (flat == img.flatten()).all(dim=1).nonzero().flatten()
        assert label in mnist_test.labels[where]
    with pytest.raises(ValueError, match="cannot take"):
        mnist_test.subset(10001)


def test_bad_idx_files_name_the_file(tmp_path: Path, mnist_dir: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    shutil.copy(mnist_dir / MNIST_TEST_FILES[1], folder / MNIST_TEST_FILES[1])
    images = folder / MNIST_TEST_FILES[0]
    # Labels where images belong: wrong magic number.
    shutil.copy(mnist_dir / MNIST_TEST_FILES[1], images)
    with pytest.raises(data.DataFileError, match=r"t10k-images.*magic number 2049"):
        data.load("mnist", "test", root=tmp_path, download=False)
    # A truncated body: the header's count does not match the bytes.
    raw = gzip.decompress((mnist_dir / MNIST_TEST_FILES[0]).read_bytes())
    images.write_bytes(gzip.compress(raw[:-100], compresslevel=1))
    with pytest.raises(data.DataFileError, match=r"t10k-images.*bytes"):
        data.load("mnist", "test", root=tmp_path, download=False)
    # Not gzip-readable at all, or corrupt inside the deflate stream.
    body = bytearray((mnist_dir / MNIST_TEST_FILES[0]).read_bytes())
    body[5000:5100] = bytes(100)
    for bad in (b"\x1f\x8b" + b"garbage" * 10, bytes(body)):
        images.write_bytes(bad)
        with pytest.raises(data.DataFileError, match="t10k-images"):
            data.load("mnist", "test", root=tmp_path, download=False)


def test_uncompressed_idx_reads_too(tmp_path: Path, mnist_dir: Path) -> None:
    raw = tmp_path / "labels"
    raw.write_bytes(gzip.decompress((mnist_dir / MNIST_TEST_FILES[1]).read_bytes()))
    assert np.bincount(data.read_idx(raw, "labels")).tolist() == MNIST_TEST_COUNTS


# ---------------------------------------------------------------------------- download


def test_download_verifies_and_loads(
    tmp_path: Path, mnist_dir: Path, mnist_test: data.ImageDataset, serve, monkeypatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    for f in MNIST_TEST_FILES:
        shutil.copy(mnist_dir / f, site / f)
    monkeypatch.setitem(data.MIRRORS, "mnist", [serve(site)])
    root = tmp_path / "root"
    ds = data.load("mnist", "test", root=root)
    assert torch.equal(ds.images, mnist_test.images)
    assert torch.equal(ds.labels, mnist_test.labels)
    for f in MNIST_TEST_FILES:
        assert md5(root / "mnist" / f) == data.MD5["mnist"][f]
    assert leftovers(root / "mnist") == []


def test_download_with_bad_checksum_leaves_nothing(
    tmp_path: Path, mnist_dir: Path, serve, monkeypatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    body = bytearray((mnist_dir / MNIST_TEST_FILES[0]).read_bytes())
    body[1000:1010] = bytes(b ^ 0xFF for b in body[1000:1010])
    (site / MNIST_TEST_FILES[0]).write_bytes(bytes(body))
    monkeypatch.setitem(data.MIRRORS, "mnist", [serve(site)])
    root = tmp_path / "root"
    with pytest.raises(data.ChecksumError, match=r"md5") as err:
        data.load("mnist", "test", root=root)
    message = str(err.value)
    assert MNIST_TEST_FILES[0] in message
    assert data.MD5["mnist"][MNIST_TEST_FILES[0]] in message
    assert hashlib.md5(bytes(body)).hexdigest() in message
    assert list((root / "mnist").iterdir()) == []


def test_download_falls_back_to_next_mirror(
    tmp_path: Path, mnist_dir: Path, serve, monkeypatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    for f in MNIST_TEST_FILES:
        shutil.copy(mnist_dir / f, site / f)
    empty = tmp_path / "empty"  # answers 404
    empty.mkdir()
    mirrors = [closed_port_url(), serve(empty), serve(site)]
    monkeypatch.setitem(data.MIRRORS, "mnist", mirrors)
    root = tmp_path / "root"
    assert len(data.load("mnist", "test", root=root)) == 10000
    assert leftovers(root / "mnist") == []


def test_offline_missing_file_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    url = closed_port_url()
    monkeypatch.setitem(data.MIRRORS, "mnist", [url])
    with pytest.raises(FileNotFoundError) as err:
        data.load("mnist", "train", root=tmp_path)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "mnist") in message
    assert url + "train-images-idx3-ubyte.gz" in message
    assert "COURSE_DATA" in message
    assert leftovers(tmp_path / "mnist") == []


def test_download_false_never_fetches(tmp_path: Path, monkeypatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("download=False must not touch the network")

    monkeypatch.setattr(data.urllib.request, "urlopen", no_network)
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz") as err:
        data.load("mnist", "test", root=tmp_path, download=False)
    assert "ossci-datasets" in str(err.value)
    assert "COURSE_DATA" in str(err.value)


# ---------------------------------------------------------------------------- CIFAR-10


def fake_cifar_tarball(path: Path, per_batch: int = 2) -> dict[str, np.ndarray]:
    """A cifar-10-python.tar.gz with the real pickle layout and known pixel values."""
    rng = np.random.default_rng(0)
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, obj: object) -> None:
            # Protocol 2, as the original Python 2 pickles.
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        add("batches.meta", {b"label_names": [b"plane", b"car", b"bird"], b"num_vis": 3072})
        for name in names:
            pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, 3, size=per_batch).tolist()
            batches[name] = pixels
            add(name, {b"data": pixels, b"labels": labels, b"batch_label": name.encode()})
            batches[name + "/labels"] = np.array(labels)
    return batches


def test_cifar_tarball_channel_order(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10"
    folder.mkdir()
    batches = fake_cifar_tarball(folder / data.CIFAR_TARBALL)
    test = data.load("cifar10", "test", root=tmp_path, download=False)
    raw = batches["test_batch"]
    assert test.images.shape == (2, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.classes == ("plane", "car", "bird")
    assert test.labels.tolist() == batches["test_batch/labels"].tolist()
    # Row layout: 1024 red values, then green, then blue, each plane row by row.
    for k, c, h, w in [(0, 0, 0, 0), (0, 1, 0, 0), (1, 2, 31, 31), (1, 0, 1, 0), (0, 2, 5, 7)]:
        assert test.images[k, c, h, w].item() == raw[k, c * 1024 + h * 32 + w]
    train = data.load("cifar10", "train", root=tmp_path, download=False)
    assert train.images.shape == (10, 3, 32, 32)
    expected = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)])
    assert torch.equal(train.images.flatten(1), torch.from_numpy(expected))


def test_cifar_tarball_refuses_code_in_pickles(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = tmp_path / "cifar10"
    folder.mkdir()
    with tarfile.open(folder / data.CIFAR_TARBALL, "w:gz") as tar:
        blob = pickle.dumps({b"data": Evil()}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(data.DataFileError, match="refusing to unpickle"):
        data.load("cifar10", "test", root=tmp_path, download=False)


def test_cifar_tarball_download(tmp_path: Path, serve, monkeypatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    fake_cifar_tarball(site / data.CIFAR_TARBALL)
    monkeypatch.setitem(data.MIRRORS, "cifar10", [serve(site)])
    monkeypatch.setitem(data.MD5, "cifar10", {data.CIFAR_TARBALL: md5(site / data.CIFAR_TARBALL)})
    ds = data.load("cifar10", "test", root=tmp_path / "root")
    assert ds.images.shape == (2, 3, 32, 32)
    assert (tmp_path / "root" / "cifar10" / data.CIFAR_TARBALL).is_file()


@pytest.fixture
def cifar_tree(tmp_path: Path, cifar_zip: Path) -> Path:
    """A data root with a tiny ImageFolder tree: 2 classes x 5 real CIFAR-10 JPEGs."""
    with zipfile.ZipFile(cifar_zip) as z:
        # Listed out of order, so the test sees that classes come back sorted.
        for cls in ("cat", "airplane"):
            for i in range(5):
                z.extract(f"test/{cls}/{i:04d}.jpg", tmp_path / "cifar10")
    return tmp_path


def test_cifar_zipped_tree_reads_like_the_folder(cifar_tree: Path, tmp_path: Path) -> None:
    """``cifar10/test.zip`` holding the tree decodes to the same pixels and labels as the
    extracted folder, without extracting anything; a damaged archive names the fix."""
    root = tmp_path / "zipped"
    (root / "cifar10").mkdir(parents=True)
    with zipfile.ZipFile(root / "cifar10" / "test.zip", "w") as zf:
        for f in sorted((cifar_tree / "cifar10" / "test").rglob("*.jpg"), reverse=True):
            zf.write(f, f.relative_to(cifar_tree / "cifar10").as_posix())
    zipped = data.load("cifar10", "test", root=root, download=False)
    folder = data.load("cifar10", "test", root=cifar_tree, download=False)
    assert torch.equal(zipped.images, folder.images) and torch.equal(zipped.labels, folder.labels)
    assert zipped.classes == folder.classes
    assert sorted(p.name for p in (root / "cifar10").iterdir()) == ["test.cache.pt", "test.zip"]
    bad = tmp_path / "bad"
    (bad / "cifar10").mkdir(parents=True)
    (bad / "cifar10" / "test.zip").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(data.DataFileError, match="not a readable zip archive"):
        data.load("cifar10", "test", root=bad, download=False)


def test_cifar_image_folder_and_cache(cifar_tree: Path, monkeypatch) -> None:
    from PIL import Image

    folder = cifar_tree / "cifar10"
    ds = data.load("cifar10", "test", root=cifar_tree, download=False)
    assert ds.images.shape == (10, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.classes == ("airplane", "cat")
    assert ds.labels.tolist() == [0] * 5 + [1] * 5
    with Image.open(folder / "test" / "cat" / "0003.jpg") as img:
        expected = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(ds.images[8], expected)
    cache = folder / "test.cache.pt"
    assert cache.is_file()
    assert leftovers(folder) == []

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(Image, "open", fail)
        again = data.load("cifar10", "test", root=cifar_tree, download=False)
    assert torch.equal(again.images, ds.images) and torch.equal(again.labels, ds.labels)
    assert again.classes == ds.classes

    # A new image changes the count: the cache is rebuilt.
    shutil.copy(folder / "test" / "cat" / "0000.jpg", folder / "test" / "cat" / "0005.jpg")
    grown = data.load("cifar10", "test", root=cifar_tree, download=False)
    assert len(grown) == 11 and torch.equal(grown.images[10], ds.images[5])
    assert torch.load(cache, weights_only=True)["count"] == 11


def test_cifar_prefers_tarball_over_folder(cifar_tree: Path) -> None:
    fake_cifar_tarball(cifar_tree / "cifar10" / data.CIFAR_TARBALL)
    ds = data.load("cifar10", "test", root=cifar_tree, download=False)
    assert ds.classes == ("plane", "car", "bird") and len(ds) == 2


def test_cifar_missing_offline(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        data.load("cifar10", "train", root=tmp_path, download=False)
    message = str(err.value)
    assert data.CIFAR_TARBALL in message and str(tmp_path / "cifar10") in message
    assert "<class>" in message


# ---------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_from_debian_package(tmp_path: Path) -> None:
    system = data.SYSTEM_DIRS["fashion_mnist"][0]
    if not system.is_dir():
        pytest.skip(f"{system} absent: install Debian's dataset-fashion-mnist")
    ds = data.load("fashion_mnist", "train", root=tmp_path, download=False)
    assert ds.images.shape == (60000, 1, 28, 28)
    assert ds.labels.bincount().tolist() == [6000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert not (tmp_path / "fashion_mnist").exists()  # read in place, never copied


def test_system_dir_is_searched_below(tmp_path: Path, mnist_dir: Path, monkeypatch) -> None:
    system = tmp_path / "system"
    (system / "sub").mkdir(parents=True)
    for f in MNIST_TEST_FILES:
        shutil.copy(mnist_dir / f, system / "sub" / f)
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion_mnist", [tmp_path / "nowhere", system])
    ds = data.load("fashion_mnist", "test", root=tmp_path / "root", download=False)
    assert ds.labels.bincount().tolist() == MNIST_TEST_COUNTS


# ---------------------------------------------------------------------------- names, root


def test_unknown_name_or_split() -> None:
    with pytest.raises(ValueError, match=r"mnist, fashion_mnist, cifar10"):
        data.load("imagenet")
    with pytest.raises(ValueError, match=r"'train' or 'test'"):
        data.load("mnist", split="valid")


def test_data_root_honours_course_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "mine"))
    assert data.data_root() == tmp_path / "mine"


def test_data_root_finds_repo_or_falls_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("COURSE_DATA", raising=False)
    repo = tmp_path / "repo"
    (repo / "chapters" / "ch1").mkdir(parents=True)
    (repo / data.REPO_MARKER).write_text("title: x\n")
    monkeypatch.chdir(repo / "chapters" / "ch1")
    assert data.data_root() == repo / "data"
    # Outside any repository, with the module outside one too (an installed wheel):
    # the working directory's data/ folder, as on Colab.
    elsewhere = tmp_path / "colab"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(data, "__file__", str(tmp_path / "site-packages" / "data.py"))
    assert data.data_root() == elsewhere / "data"


def test_no_torchvision() -> None:
    source = Path(data.__file__).read_text()
    assert "import torchvision" not in source and "from torchvision" not in source
