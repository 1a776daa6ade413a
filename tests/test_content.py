"""The content store: verified ingest, dedupe, failure leaves nothing, concurrent writers
of the same blob, and readers never seeing a partial blob."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import pytest

from shale.content import ContentStore
from shale.digest import Digest
from shale.errors import DigestMismatch, NotFound


def _digest(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def _files(root: Path) -> list[str]:
    """Every file under the store, so 'leaves nothing' covers temp files too."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_ingest_verifies_and_publishes(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = b"hello blob\n"
    d = store.write_bytes(data, _digest(data))
    assert d == _digest(data)
    assert store.path(d) == tmp_path / "blobs" / "sha256" / d.hex
    assert store.read(d) == data
    assert store.size(d) == len(data)
    assert store.verify(d)
    assert list(store.walk()) == [d]
    assert list(store.ingests()) == []
    # published blobs are read-only: nobody edits content-addressed bytes in place
    assert store.path(d).stat().st_mode & 0o777 == 0o444


def test_ingest_without_expected_digest_names_the_blob(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    d = store.write_bytes(b"x" * 3000)
    assert d == _digest(b"x" * 3000)
    assert store.read(d) == b"x" * 3000


def test_same_blob_twice_is_deduped(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    data = os.urandom(10000)
    d1 = store.write_bytes(data)
    ino = store.path(d1).stat().st_ino
    d2 = store.write_bytes(data, _digest(data))
    assert d1 == d2
    # the second write did not replace the published file
    assert store.path(d1).stat().st_ino == ino
    assert _files(tmp_path) == [f"blobs/sha256/{d1.hex}"]


def test_digest_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    wrong = _digest(b"something else")
    with pytest.raises(DigestMismatch) as e:
        store.write_bytes(b"the real bytes", wrong, what="layer 3")
    assert str(e.value) == (f"layer 3: digest mismatch: expected {wrong}, "
                            f"got {_digest(b'the real bytes')}")
    assert _files(tmp_path) == []
    assert not store.exists(wrong)
    assert not store.exists(_digest(b"the real bytes"))


def test_size_mismatch_leaves_nothing(tmp_path: Path) -> None:
    import io

    store = ContentStore(tmp_path)
    data = b"12345"
    with pytest.raises(DigestMismatch) as e:
        store.write_stream(io.BytesIO(data), _digest(data), size=6, what="config")
    assert str(e.value) == "config: size mismatch: expected 6 bytes, got 5"
    assert _files(tmp_path) == []


def test_writer_left_without_commit_is_discarded(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with store.writer() as w:
        w.write(b"partial")
        assert w.path.exists()
        assert w.path.parent == tmp_path / "ingest"
    assert _files(tmp_path) == []


def test_missing_blob_is_not_found(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    d = _digest(b"nope")
    with pytest.raises(NotFound, match=f"blob {d} not found"):
        store.open(d)
    with pytest.raises(NotFound):
        store.size(d)
    store.delete(d)  # idempotent


def test_verify_detects_corruption(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    d = store.write_bytes(b"good bytes")
    p = store.path(d)
    p.chmod(0o644)
    p.write_bytes(b"bad bytes!")
    assert not store.verify(d)


def _write_same_blob(root: str, seed: int, size: int, barrier: mp.synchronize.Barrier,
                     results: mp.Queue[str]) -> None:
    """Child process: wait for the others, then write the same large blob slowly enough
    that the writers overlap."""
    import random

    store = ContentStore(Path(root))
    data = random.Random(seed).randbytes(size)
    barrier.wait()
    try:
        with store.writer() as w:
            for i in range(0, len(data), 1 << 16):
                w.write(data[i:i + (1 << 16)])
            results.put(w.commit(_digest(data)).value)
    except Exception as e:  # reported to the parent, which fails the test
        results.put(f"error: {type(e).__name__}: {e}")


def test_concurrent_writers_of_one_blob_all_succeed(tmp_path: Path) -> None:
    import random

    size = 8 << 20
    expected = _digest(random.Random(7).randbytes(size))
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    results: mp.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_write_same_blob,
                         args=(str(tmp_path), 7, size, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert got == [expected.value] * 4
    store = ContentStore(tmp_path)
    assert store.verify(expected)
    assert _files(tmp_path) == [f"blobs/sha256/{expected.hex}"]


def test_blob_is_visible_only_when_complete(tmp_path: Path) -> None:
    """A reader polling for the blob either sees nothing or every byte."""
    store = ContentStore(tmp_path)
    data = os.urandom(16 << 20)
    d = _digest(data)
    seen_sizes: list[int] = []
    done = threading.Event()

    def watch() -> None:
        path = store.path(d)
        while not done.is_set():
            try:
                seen_sizes.append(path.stat().st_size)
            except FileNotFoundError:
                pass
            time.sleep(0.0005)

    t = threading.Thread(target=watch)
    t.start()
    try:
        with store.writer() as w:
            for i in range(0, len(data), 1 << 18):
                w.write(data[i:i + (1 << 18)])
                assert not store.exists(d)  # nothing visible before the commit
            w.commit(d)
        time.sleep(0.02)
    finally:
        done.set()
        t.join()
    assert seen_sizes, "watcher never saw the published blob"
    assert set(seen_sizes) == {len(data)}


def test_a_blob_already_stored_is_not_flushed_again(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """commit fsyncs the new blob and its directory once; a second writer of the same bytes
    (dedupe: the temp copy is dropped) flushes nothing."""
    store = ContentStore(tmp_path)
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    data = os.urandom(1 << 16)
    assert store.write_bytes(data) == _digest(data)
    assert len(calls) == 2  # the blob, then blobs/sha256
    calls.clear()
    assert store.write_bytes(data) == _digest(data)
    assert calls == []
    assert _files(tmp_path) == [f"blobs/sha256/{_digest(data).hex}"]
