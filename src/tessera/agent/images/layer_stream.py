"""Reading a layer blob as its uncompressed tar: gzip, zstd or plain, hashed on the way.

The media type chooses the decompressor (magic bytes when it says nothing useful); decoding
errors are LayerError. `Prefetch` decodes and hashes in a thread of its own, so that
decompression (zlib and zstd release the GIL) overlaps the extractor's writes; `Forward` is
the forward-only, seekable-ahead reader tarfile's "r:" mode needs, without the copying of
tarfile's own stream buffer, and copies file data straight to a descriptor.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import threading
import zlib
from pathlib import Path
from typing import BinaryIO, Literal, cast

import zstandard

Compression = Literal["gzip", "zstd", "none"]

CHUNK = 1 << 20


_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class LayerError(Exception):
    """The layer cannot be unpacked as it is: corrupt, mismatched or unsafe (names the entry)."""


def compression_of(media_type: str) -> Compression | None:
    """What a layer media type says about compression; None when it says nothing useful."""
    kind = media_type.split(";", 1)[0].strip().lower()
    if kind.endswith(("+gzip", ".tar.gzip")):
        return "gzip"
    if kind.endswith(("+zstd", ".tar.zstd")):
        return "zstd"
    if kind.endswith(".tar") and ("layer" in kind or "rootfs" in kind):
        return "none"
    return None


def sniff_compression(head: bytes) -> Compression:
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


def open_layer(blob: Path, media_type: str) -> BinaryIO:
    """A reader of the uncompressed tar in `blob`; decoding errors are raised as LayerError."""
    raw = open(blob, "rb")  # noqa: SIM115 (the returned reader owns and closes it)
    try:
        kind = compression_of(media_type) or sniff_compression(raw.read(4))
        raw.seek(0)
        if kind == "gzip":
            return cast(BinaryIO, _GzipReader(raw, blob.name))
        if kind == "zstd":
            return cast(BinaryIO, _ZstdReader(raw, blob.name))
        return raw
    except BaseException:
        raw.close()
        raise


class _GzipReader(io.RawIOBase):
    """gzip through zlib directly: several members, bounded output per read, clear errors."""

    def __init__(self, raw: BinaryIO, name: str) -> None:
        super().__init__()
        self._raw = raw
        self._name = name
        self._decoder = zlib.decompressobj(wbits=31)
        self._input = b""
        self._in_member = False
        self._members = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        wanted = CHUNK if size is None or size < 0 else max(size, 1)
        while True:
            if not self._in_member and not self._begin_member():
                return b""
            if not self._input:
                self._input = self._raw.read(CHUNK)
                if not self._input:
                    raise LayerError(f"layer {self._name}: the gzip stream is truncated")
            try:
                out = self._decoder.decompress(self._input, wanted)
            except zlib.error as error:
                raise LayerError(f"layer {self._name}: corrupt gzip data: {error}") from None
            self._input = self._decoder.unconsumed_tail
            if self._decoder.eof:
                self._input = self._decoder.unused_data
                self._decoder = zlib.decompressobj(wbits=31)
                self._in_member = False
            if out:
                return out

    def _begin_member(self) -> bool:
        """True when another gzip member follows; False at the clean end of the stream."""
        while len(self._input) < len(_GZIP_MAGIC):
            more = self._raw.read(CHUNK)
            if not more:
                break
            self._input += more
        if self._input.startswith(_GZIP_MAGIC):
            self._in_member = True
            self._members += 1
            return True
        if self._members == 0:
            raise LayerError(f"layer {self._name}: not gzip data")
        # After the last member, zero padding is tolerated (some tools pad); nothing else is.
        while self._input:
            if self._input.strip(b"\0"):
                raise LayerError(f"layer {self._name}: data after the end of the gzip stream")
            self._input = self._raw.read(CHUNK)
        return False

    def close(self) -> None:
        self._raw.close()
        super().close()


class _ZstdReader(io.RawIOBase):
    def __init__(self, raw: BinaryIO, name: str) -> None:
        super().__init__()
        self._raw = raw
        self._name = name
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK, read_across_frames=True
        )

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._reader.read(CHUNK if size is None or size < 0 else size)
        except zstandard.ZstdError as error:
            raise LayerError(f"layer {self._name}: corrupt zstd data: {error}") from None

    def close(self) -> None:
        self._reader.close()  # type: ignore[no-untyped-call]
        self._raw.close()
        super().close()


_DONE = object()


class Prefetch:
    """Decodes and hashes the layer in a thread, up to a few chunks ahead of the reader."""

    def __init__(self, reader: BinaryIO, algorithm: str) -> None:
        self.hash = hashlib.new(algorithm)
        self._reader = reader
        self._queue: queue.Queue[object] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="layer-decode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self._reader.read(CHUNK)
                if not chunk:
                    break
                self.hash.update(chunk)
                self._put(chunk)
            self._put(_DONE)
        except BaseException as error:  # handed to the reading thread, raised there
            self._put(error)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next_chunk(self) -> bytes:
        """The next decoded chunk; b"" at the end of the stream."""
        if self._ended:
            return b""
        item = self._queue.get()
        if isinstance(item, bytes):
            return item
        self._ended = True
        if isinstance(item, BaseException):
            raise item
        return b""

    def drain(self) -> None:
        while self.next_chunk():
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Forward:
    """A file-like view of the decoded stream that can only go forward: `seek` ahead skips."""

    def __init__(self, source: Prefetch) -> None:
        self._source = source
        self._buffer = b""
        self._offset = 0  # in _buffer
        self._position = 0  # in the stream

    def tell(self) -> int:
        return self._position

    def seek(self, target: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or target < self._position:
            raise io.UnsupportedOperation("a layer stream cannot go back")
        self.skip(target - self._position)
        return self._position

    def _available(self) -> int:
        if self._offset == len(self._buffer):
            self._buffer = self._source.next_chunk()
            self._offset = 0
        return len(self._buffer) - self._offset

    def read(self, size: int | None = -1) -> bytes:
        wanted = (1 << 62) if size is None or size < 0 else size
        if self._offset + wanted <= len(self._buffer):  # the common case: one slice
            data = self._buffer[self._offset : self._offset + wanted]
            self._offset += wanted
            self._position += wanted
            return data
        parts: list[bytes] = []
        while wanted > 0 and (available := self._available()):
            take = min(wanted, available)
            parts.append(self._buffer[self._offset : self._offset + take])
            self._offset += take
            wanted -= take
        data = b"".join(parts)
        self._position += len(data)
        return data

    def skip(self, size: int) -> int:
        return self._consume(size, None)

    def copy_to(self, fd: int, size: int) -> int:
        """Writes the next `size` bytes to `fd`; returns how many there were."""
        return self._consume(size, fd)

    def _consume(self, size: int, fd: int | None) -> int:
        done = 0
        while done < size and (available := self._available()):
            take = min(size - done, available)
            if fd is not None:
                view = memoryview(self._buffer)[self._offset : self._offset + take]
                while view:
                    view = view[os.write(fd, view) :]
            self._offset += take
            done += take
        self._position += done
        return done


def as_file(reader: Forward) -> BinaryIO:
    """For tarfile, which only calls read, seek and tell on it."""
    return cast(BinaryIO, reader)
