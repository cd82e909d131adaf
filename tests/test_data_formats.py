"""File formats and their failure modes: IDX, CIFAR-10 pickles, tar extraction, downloads, cache."""

from __future__ import annotations

import builtins
import gzip
import hashlib
import io
import os
import pickle
import pickletools
import tarfile
import urllib.error

import numpy as np
import pytest

from advlab.data import DataError, cache, fetch
from advlab.data.archive import safe_extract
from advlab.data.cifar import read_batch, read_meta, read_split, write_batch, write_meta
from advlab.data.idx import encode_idx, parse_idx, read_idx, write_idx
from advlab.data.resources import Resource


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Keep the cache and the data root inside tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("ADVLAB_DATA", raising=False)


def _images(n: int, seed: int = 0, size: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def _tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---------------------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("name", ["x-ubyte", "x-ubyte.gz"])
def test_idx_round_trip_raw_and_gzip(tmp_path, name):
    images = _images(7)
    path = write_idx(tmp_path / name, images)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(path, ndim=3)
    assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out, images)


def test_idx_header_layout_is_official():
    # 60000 labels: magic 0x00000801, then the count big-endian, then the bytes.
    data = encode_idx(np.zeros(60000, np.uint8))
    assert data[:8] == bytes.fromhex("00000801") + (60000).to_bytes(4, "big")
    assert len(data) == 8 + 60000


def test_idx_other_dtypes_round_trip(tmp_path):
    a = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    out = read_idx(write_idx(tmp_path / "a.idx", a), dtype_code=0x0C, ndim=2)
    np.testing.assert_array_equal(out, a)


def _corrupt(kind: str) -> bytes:
    good = encode_idx(_images(3))
    return {
        "bad magic": b"\x01\x02" + good[2:],
        "unknown dtype": good[:2] + b"\x07" + good[3:],
        "wrong dtype": encode_idx(np.zeros((3, 28, 28), np.float32)),
        "wrong ndim": encode_idx(np.zeros((3, 784), np.uint8)),
        "truncated data": good[:-5],
        "truncated header": good[:9],
        "trailing garbage": good + b"\x00\x00\x00",
        "too short": b"\x00\x00",
    }[kind]


@pytest.mark.parametrize(("kind", "message"), [
    ("bad magic", "magic"),
    ("unknown dtype", "unknown IDX dtype code 0x07"),
    ("wrong dtype", "expected IDX dtype code 0x08, got 0x0d"),
    ("wrong ndim", "expected a 3-dimensional IDX array, got 2"),
    ("truncated data", "truncated IDX data"),
    ("truncated header", "truncated IDX header"),
    ("trailing garbage", "trailing garbage: 3 bytes"),
    ("too short", "not an IDX file"),
])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_corruptions_raise_data_error_naming_the_file(tmp_path, kind, message, compress):
    path = tmp_path / ("bad-ubyte.gz" if compress else "bad-ubyte")
    content = _corrupt(kind)
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError, match=message) as err:
        read_idx(path, ndim=3)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_idx_truncated_gzip_stream_is_an_error(tmp_path):
    blob = gzip.compress(encode_idx(_images(50)))
    path = tmp_path / "cut-ubyte.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="corrupt gzip") as err:
        read_idx(path, ndim=3)
    assert str(path) in str(err.value)


def test_parse_idx_returns_exact_values():
    a = np.array([[1, 2], [3, 255]], np.uint8)
    np.testing.assert_array_equal(parse_idx(encode_idx(a), ndim=2), a)


# ------------------------------------------------------------------------------ CIFAR pickles

def _cifar_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int64))


def test_cifar_fixture_pickles_like_the_official_batches(tmp_path):
    """The writer reproduces the official format: py2 protocol 2, numpy.core global names."""
    path = write_batch(tmp_path / "data_batch_1", *_cifar_arrays(4))
    ops = list(pickletools.genops(path.read_bytes()))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert "SHORT_BINSTRING" in {op.name for op, _, _ in ops}


def test_cifar_batch_round_trip_exact(tmp_path):
    images, labels = _cifar_arrays(5)
    path = write_batch(tmp_path / "test_batch", images, labels)
    x, y = read_batch(path, rows=5)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int64


def test_cifar_official_batch_size_is_the_default(tmp_path):
    images, labels = _cifar_arrays(10_000)
    path = write_batch(tmp_path / "test_batch", images, labels)
    x, y = read_batch(path)  # rows defaults to the official 10000
    assert x.shape == (10_000, 3, 32, 32) and y.shape == (10_000,)
    with pytest.raises(DataError, match=r"expected 'data' of shape \(9999, 3072\)"):
        read_batch(path, rows=9_999)


def test_cifar_split_uses_meta_rows_and_concatenates(tmp_path):
    parts = [_cifar_arrays(3, seed=s) for s in range(2)]
    for i, (im, lab) in enumerate(parts):
        write_batch(tmp_path / f"b{i}", im, lab)
    write_meta(tmp_path / "batches.meta", rows=3)
    assert read_meta(tmp_path / "batches.meta") == 3
    x, y = read_split(tmp_path, ("b0", "b1"))
    np.testing.assert_array_equal(x, np.concatenate([parts[0][0], parts[1][0]]))
    np.testing.assert_array_equal(y, np.concatenate([parts[0][1], parts[1][1]]))


def test_cifar_shape_mismatch_with_meta_is_refused(tmp_path):
    write_batch(tmp_path / "b0", *_cifar_arrays(4))
    write_meta(tmp_path / "batches.meta", rows=3)
    with pytest.raises(DataError, match=r"b0: expected 'data' of shape \(3, 3072\), got \(4, "):
        read_split(tmp_path, ("b0",))


def test_cifar_label_out_of_range_is_refused(tmp_path):
    images, labels = _cifar_arrays(4)
    labels[2] = 10
    path = write_batch(tmp_path / "b0", images, labels)
    with pytest.raises(DataError, match="label 10 at index 2 is out of range 0..9"):
        read_batch(path, rows=4)


def test_cifar_label_count_mismatch_is_refused(tmp_path):
    images, labels = _cifar_arrays(4)
    path = tmp_path / "b0"
    path.write_bytes(pickle.dumps({"data": images.reshape(4, -1), "labels": [1, 2, 3]},
                                  protocol=4))
    with pytest.raises(DataError, match="expected 4 integer labels"):
        read_batch(path, rows=4)


def test_cifar_missing_key_and_wrong_dtype_are_refused(tmp_path):
    path = tmp_path / "b0"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}, protocol=4))
    with pytest.raises(DataError, match="no 'labels' entry"):
        read_batch(path, rows=2)
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]},
                                  protocol=4))
    with pytest.raises(DataError, match="uint8 array"):
        read_batch(path, rows=2)


def test_cifar_bytes_keys_are_accepted(tmp_path):
    images, labels = _cifar_arrays(2)
    path = tmp_path / "b0"
    path.write_bytes(pickle.dumps({b"data": images.reshape(2, -1), b"labels": labels.tolist()},
                                  protocol=4))
    x, y = read_batch(path, rows=2)
    np.testing.assert_array_equal(x, images)


def test_cifar_meta_with_wrong_class_names_is_refused(tmp_path):
    path = tmp_path / "batches.meta"
    path.write_bytes(pickle.dumps({"label_names": ["a"] * 10, "num_cases_per_batch": 3},
                                  protocol=4))
    with pytest.raises(DataError, match="expected label_names"):
        read_meta(path)


class _Payload:
    """Pickles to ``func(*args)``: what a malicious batch would run on load."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("attack", ["os.system", "builtins.exec", "builtins.eval"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_without_running(tmp_path, attack, protocol):
    marker = tmp_path / "pwned"
    payload = {
        "os.system": _Payload(os.system, (f"touch {marker}",)),
        "builtins.exec": _Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.eval": _Payload(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
    }[attack]
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": payload, "labels": [0]}, protocol=protocol))
    with pytest.raises(DataError, match="refusing to load global") as err:
        read_batch(path, rows=1)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_pickle_with_numpy_helper_outside_the_allow_list_is_refused(tmp_path):
    # numpy.load is importable from an allowed module but is not on the list.
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps(_Payload(np.load, (str(tmp_path / "x.npy"),)), protocol=2))
    with pytest.raises(DataError, match="refusing to load global numpy"):
        read_batch(path, rows=1)


def test_truncated_pickle_is_a_data_error(tmp_path):
    path = write_batch(tmp_path / "b0", *_cifar_arrays(3))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="b0"):
        read_batch(path, rows=3)


# ------------------------------------------------------------------------------- tar archives

def _tar(path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)


def _file(name: str, data: bytes = b"ok") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, linkname
    return ti, None


def test_safe_extract_writes_regular_files(tmp_path):
    archive = tmp_path / "a.tar.gz"
    dir_info = tarfile.TarInfo("top")
    dir_info.type = tarfile.DIRTYPE
    payload = _file("top/sub/f.bin", bytes(range(256)))
    payload[0].mode = 0o4777  # setuid bits in the archive must not be applied
    _tar(archive, [(dir_info, None), payload, _file("top/a/../g.txt", b"g")])
    dest = tmp_path / "out"
    written = safe_extract(archive, dest)
    assert (dest / "top/sub/f.bin").read_bytes() == bytes(range(256))
    assert (dest / "top/g.txt").read_bytes() == b"g"
    assert len(written) == 2
    assert (dest / "top/sub/f.bin").stat().st_mode & 0o7777 == 0o644


@pytest.mark.parametrize(("member", "message"), [
    (_file("../evil"), "outside the target directory"),
    (_file("top/../../evil"), "outside the target directory"),
    (_file("/tmp/advlab-abs-evil"), "absolute path"),
    (_special("link", tarfile.SYMTYPE, "../outside"), "symbolic link"),
    (_special("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    (_special("hard", tarfile.LNKTYPE, "top/good.txt"), "hard link"),
    (_special("dev", tarfile.CHRTYPE), "device"),
    (_special("blk", tarfile.BLKTYPE), "device"),
    (_special("fifo", tarfile.FIFOTYPE), "FIFO"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-rel", "symlink-abs", "hardlink",
        "chardev", "blockdev", "fifo"])
def test_safe_extract_refuses_unsafe_members_and_writes_nothing(tmp_path, member, message):
    archive = tmp_path / "evil.tar.gz"
    # A harmless file first: it must not be written either (all members are checked first).
    _tar(archive, [_file("top/good.txt"), member])
    dest = tmp_path / "sandbox" / "out"
    dest.mkdir(parents=True)
    before = _tree(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        safe_extract(archive, dest)
    assert repr(member[0].name) in str(err.value)
    assert _tree(tmp_path) == before
    assert not os.path.exists("/tmp/advlab-abs-evil")


def test_safe_extract_refuses_symlink_then_write_through_it(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tmp_path / "evil.tar.gz"
    _tar(archive, [_special("d", tarfile.SYMTYPE, str(outside)), _file("d/evil")])
    with pytest.raises(DataError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
    assert list(outside.iterdir()) == []


def test_safe_extract_rejects_non_tar(tmp_path):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(b"not a tar")
    with pytest.raises(DataError, match="not a readable tar archive"):
        safe_extract(path, tmp_path / "out")


# ---------------------------------------------------------------------------------- downloads

def _served(tmp_path, content: bytes, name: str = "file.gz") -> tuple[str, str]:
    server = tmp_path / "server"
    server.mkdir(exist_ok=True)
    (server / name).write_bytes(content)
    return (server / name).as_uri(), hashlib.md5(content).hexdigest()


def test_download_success_writes_the_file(tmp_path):
    url, md5 = _served(tmp_path, b"payload" * 1000)
    dest = tmp_path / "target" / "file.gz"
    assert fetch.download(url, dest, md5) == dest
    assert dest.read_bytes() == b"payload" * 1000
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.gz"]


def test_download_checksum_mismatch_leaves_nothing(tmp_path):
    url, _ = _served(tmp_path, b"payload")
    target = tmp_path / "target"
    with pytest.raises(DataError, match="md5 mismatch"):
        fetch.download(url, target / "file.gz", "0" * 32)
    assert list(target.iterdir()) == []


def test_download_checksum_mismatch_keeps_an_existing_file(tmp_path):
    url, _ = _served(tmp_path, b"new")
    dest = tmp_path / "target" / "file.gz"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(DataError):
        fetch.download(url, dest, "0" * 32)
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.gz"]


@pytest.mark.parametrize("error", [ConnectionResetError, KeyboardInterrupt])
def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch, error):
    class Stream(io.BytesIO):
        """Delivers 10 bytes, then fails like a dropped connection or a Ctrl-C."""

        def read(self, n=-1):
            if self.tell() >= 10:
                raise error("interrupted")
            return super().read(10)

    monkeypatch.setattr(fetch, "urlopen", lambda url, timeout: Stream(b"x" * 100))
    target = tmp_path / "target"
    with pytest.raises(error):
        fetch.download("https://example.invalid/f", target / "f", None)
    assert list(target.iterdir()) == []


def test_fetch_falls_back_to_the_next_mirror(tmp_path):
    url, md5 = _served(tmp_path, b"abc", "f.gz")
    good = url.rsplit("/", 1)[0] + "/"
    missing = (tmp_path / "nowhere").as_uri() + "/"
    path = fetch.fetch(Resource("f.gz", (missing, good), md5), tmp_path / "t")
    assert path.read_bytes() == b"abc"


def test_fetch_reports_every_mirror_when_all_fail(tmp_path):
    url, _ = _served(tmp_path, b"abc", "f.gz")
    good = url.rsplit("/", 1)[0] + "/"
    missing = (tmp_path / "nowhere").as_uri() + "/"
    with pytest.raises(DataError) as err:
        fetch.fetch(Resource("f.gz", (missing, good), "1" * 32), tmp_path / "t")
    assert missing in str(err.value) and "md5 mismatch" in str(err.value)
    assert list((tmp_path / "t").iterdir()) == []


def test_fetch_network_error_is_reported(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fetch, "urlopen", offline)
    with pytest.raises(DataError, match="no network"):
        fetch.fetch(Resource("f.gz", ("https://a.invalid/",), "0" * 32), tmp_path / "t")


# -------------------------------------------------------------------------------------- cache

def test_cache_hit_skips_decoding_and_returns_equal_array(tmp_path, monkeypatch):
    images = _images(6)
    (tmp_path / "data").mkdir()
    src = write_idx(tmp_path / "data" / "x-ubyte.gz", images)
    first = cache.read_idx_cached(src, ndim=3)
    entry = cache.entry_path(src)
    assert entry.is_file() and entry.is_relative_to(tmp_path / "xdg-cache" / "advlab")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["x-ubyte.gz"]

    def no_decoding(*a, **k):
        raise AssertionError("decoded again despite a valid cache entry")

    monkeypatch.setattr(cache, "read_idx", no_decoding)
    np.testing.assert_array_equal(cache.read_idx_cached(src, ndim=3), first)


@pytest.mark.parametrize("damage", ["truncated", "wrong shape", "wrong dtype", "garbage"])
def test_bad_cache_entry_is_ignored_and_rewritten(tmp_path, damage):
    images = _images(6)
    src = write_idx(tmp_path / "x-ubyte.gz", images)
    cache.read_idx_cached(src, ndim=3)
    entry = cache.entry_path(src)
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:-50])
    elif damage == "wrong shape":
        np.save(entry, images[:5])
    elif damage == "wrong dtype":
        np.save(entry, images.astype(np.int16))
    else:
        entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(cache.read_idx_cached(src, ndim=3), images)
    np.testing.assert_array_equal(np.load(entry), images)  # rewritten


def test_changed_source_is_a_cache_miss(tmp_path):
    src = write_idx(tmp_path / "x-ubyte.gz", _images(6, seed=1))
    cache.read_idx_cached(src, ndim=3)
    newer = _images(8, seed=2)
    write_idx(src, newer)
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    np.testing.assert_array_equal(cache.read_idx_cached(src, ndim=3), newer)


def test_unwritable_cache_still_loads(tmp_path, monkeypatch):
    src = write_idx(tmp_path / "x-ubyte.gz", _images(3))
    (tmp_path / "blocker").write_text("a file where the cache dir should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "blocker"))
    np.testing.assert_array_equal(cache.read_idx_cached(src, ndim=3), _images(3))


def test_raw_sources_are_not_cached(tmp_path):
    src = write_idx(tmp_path / "x-ubyte", _images(3))
    cache.read_idx_cached(src, ndim=3)
    assert not (tmp_path / "xdg-cache").exists()


def test_corrupt_gzip_source_with_stale_cache_still_fails(tmp_path):
    src = write_idx(tmp_path / "x-ubyte.gz", _images(3))
    cache.read_idx_cached(src, ndim=3)
    blob = src.read_bytes()
    src.write_bytes(blob[:20])  # new size -> new key; the source itself is broken
    with pytest.raises(DataError, match="corrupt gzip"):
        cache.read_idx_cached(src, ndim=3)


# --------------------------------------------------------------------------- unreadable files

def _lock(path, monkeypatch, request, error=None):
    """Make reading ``path`` fail: chmod 000, and where that does not stop reads (root), or to
    raise another ``error``, make ``open`` raise it for ``path``."""
    mode = path.stat().st_mode & 0o777
    path.chmod(0)
    request.addfinalizer(lambda: path.chmod(mode))
    if error is None and not os.access(path, os.R_OK):
        return
    error = error or PermissionError(13, "Permission denied")
    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike) and os.fspath(file) == str(path):
            raise type(error)(error.errno, error.strerror, str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)  # Path.open / read_bytes


def _readers(tmp_path):
    idx_raw = write_idx(tmp_path / "x-ubyte", _images(2))
    idx_gz = write_idx(tmp_path / "x-ubyte.gz", _images(2))
    images, labels = _cifar_arrays(3)
    batch = write_batch(tmp_path / "data_batch_1", images, labels)
    meta = write_meta(tmp_path / "batches.meta", 3)
    return [
        (idx_raw, lambda: read_idx(idx_raw, ndim=3)),
        (idx_gz, lambda: read_idx(idx_gz, ndim=3)),
        (idx_raw, lambda: cache.read_idx_cached(idx_raw, ndim=3)),
        (idx_gz, lambda: cache.read_idx_cached(idx_gz, ndim=3)),
        (batch, lambda: read_batch(batch, rows=3)),
        (meta, lambda: read_meta(meta)),
        (batch, lambda: read_split(tmp_path, ("data_batch_1",))),
    ]


@pytest.mark.parametrize("which", range(7))
def test_unreadable_file_is_a_data_error_naming_it(tmp_path, monkeypatch, request, which):
    path, read = _readers(tmp_path)[which]
    _lock(path, monkeypatch, request)
    with pytest.raises(DataError) as err:
        read()
    assert str(err.value) == f"cannot read {path}: permission denied"
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("which", [1, 3, 4])
def test_io_error_while_reading_is_a_data_error(tmp_path, monkeypatch, request, which):
    import errno

    path, read = _readers(tmp_path)[which]
    _lock(path, monkeypatch, request, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(DataError, match=f"cannot read {path}: input/output error"):
        read()


def test_a_directory_where_a_cifar_batch_should_be_is_a_data_error(tmp_path):
    (tmp_path / "test_batch").mkdir()
    with pytest.raises(DataError, match=f"cannot read {tmp_path / 'test_batch'}: is a directory"):
        read_batch(tmp_path / "test_batch")


def test_unreadable_cache_directory_is_a_miss(tmp_path, monkeypatch):
    import pathlib

    src = write_idx(tmp_path / "x-ubyte.gz", _images(3))
    real_is_file = pathlib.Path.is_file

    def is_file(self):
        if "decoded" in self.parts:
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(pathlib.Path, "is_file", is_file)
    np.testing.assert_array_equal(cache.read_idx_cached(src, ndim=3), _images(3))
