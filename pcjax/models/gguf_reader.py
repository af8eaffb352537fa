"""A reader of GGUF files (llama.cpp's one-file model format): metadata and tensors, without torch.

Layout (little-endian, GGUF versions 2 and 3)::

    "GGUF" | version u32 | tensor count u64 | metadata count u64
    metadata, each:  key (string) | value type u32 | value
    tensor infos:    name (string) | n_dims u32 | dims u64[n_dims] | ggml type u32 | offset u64
    padding to `general.alignment` (default 32), then the tensor data; each tensor starts at
    its offset from there.

A string is a u64 byte length then UTF-8 bytes; an array is an element type u32, a u64 count
and the elements. GGUF lists dims innermost first: a ``[out, in]`` weight is stored as
``dims = (in, out)``; `TensorInfo.shape` is numpy's order, ``(out, in)``.

We parse the metadata ourselves (string arrays of a 49k-token vocabulary in ~0.1 s, where the
`gguf` package's `GGUFReader` takes ~5 s) and dequantize with the `gguf` package
(``gguf.quants.dequantize``): F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants
(Q2_K..Q6_K), the IQ and TQ types. A file that is truncated, corrupt, or uses a type we cannot
dequantize raises a `ValueError` naming the file and the problem.
"""

import dataclasses
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# GGUF value type -> struct format of a scalar (8: string, 9: array are handled apart)
_SCALARS = dict(enumerate("BbHhIif?")) | {10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry: numpy-order `shape`, ggml `type_name` (e.g. "Q4_1"), data location."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the file
    nbytes: int

    @property
    def type_name(self) -> str:
        try:
            return GGMLQuantizationType(self.ggml_type).name
        except ValueError:
            return str(self.ggml_type)


class GGUFFile:
    """An open GGUF file: ``metadata`` (key -> value; numeric arrays as numpy arrays, string
    arrays as lists) and ``tensors`` (name -> `TensorInfo`); `read` dequantizes one tensor.

    Use as a context manager, or call `close`; arrays returned by `read` stay valid after it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as error:  # ValueError: mmap of an empty file
            raise ValueError(f"cannot read GGUF file {self.path}: {error}") from error
        try:
            self.metadata, self.tensors = _parse(_Cursor(self._map, self.path))
        except Exception:
            self.close()
            raise

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._map.close()

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` dequantized to float32 (a fresh array), in numpy-order shape."""
        info = self.tensors.get(name)
        if info is None:
            raise ValueError(f"GGUF file {self.path} has no tensor {name!r}")
        raw = self._map[info.offset : info.offset + info.nbytes]  # a copy: the map stays closable
        raw = np.frombuffer(raw, np.uint8).reshape(_byte_shape(info, self.path))
        try:
            values = dequantize(raw, GGMLQuantizationType(info.ggml_type))
        except (NotImplementedError, ValueError) as error:
            raise ValueError(
                f"tensor {name!r} in {self.path} has ggml type {info.type_name}, which cannot be "
                f"dequantized here ({error}); supported: {supported_types()}"
            ) from error
        return np.array(values, dtype=np.float32).reshape(info.shape)  # copies off the map


def supported_types() -> list[str]:
    """The ggml tensor types `GGUFFile.read` dequantizes."""
    from gguf.quants import _type_traits  # the types gguf's dequantize implements

    names = {"F32", "F16"} | {qtype.name for qtype in _type_traits}
    return sorted(names)


def _byte_shape(info: TensorInfo, path: Path) -> tuple[int, ...]:
    block, type_size = _quant_size(info, path)
    return (*info.shape[:-1], info.shape[-1] // block * type_size)


def _quant_size(info: TensorInfo, path: Path) -> tuple[int, int]:
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(info.ggml_type)]
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"tensor {info.name!r} in {path} has an unsupported ggml type {info.type_name}; "
            f"supported: {supported_types()}"
        ) from error
    if info.shape[-1] % block:
        raise ValueError(
            f"tensor {info.name!r} in {path}: row length {info.shape[-1]} is not a multiple of "
            f"the {info.type_name} block size {block}"
        )
    return block, type_size


class _Cursor:
    """Sequential little-endian reads from the mapped file; overruns are a clear ValueError."""

    def __init__(self, buffer, path: Path):
        self.buffer, self.path, self.pos, self.size = buffer, path, 0, len(buffer)

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ValueError(
                f"GGUF file {self.path} is truncated or corrupt: {what} needs {n} bytes at offset "
                f"{self.pos}, the file has {self.size}"
            )

    def scalar(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        self._need(size, what)
        (value,) = struct.unpack_from("<" + fmt, self.buffer, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        length = self.scalar("Q", what)
        self._need(length, what)
        raw = self.buffer[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"GGUF file {self.path}: {what} is not UTF-8 ({error})") from error

    def array(self, what: str):
        kind, count = self.scalar("I", what), self.scalar("Q", what)
        if kind == _STRING:
            return [self.string(what) for _ in range(count)]
        if kind == _ARRAY:
            return [self.array(what) for _ in range(count)]
        fmt = _scalar_format(kind, what, self.path)
        dtype = np.dtype("<" + fmt)
        self._need(count * dtype.itemsize, what)
        values = np.frombuffer(self.buffer, dtype, count=count, offset=self.pos).copy()
        self.pos += count * dtype.itemsize
        return values

    def value(self, kind: int, what: str) -> Any:
        if kind == _STRING:
            return self.string(what)
        if kind == _ARRAY:
            return self.array(what)
        return self.scalar(_scalar_format(kind, what, self.path), what)


def _scalar_format(kind: int, what: str, path: Path) -> str:
    if kind not in _SCALARS:
        raise ValueError(f"GGUF file {path} is corrupt: {what} has unknown value type {kind}")
    return _SCALARS[kind]


def _parse(cursor: _Cursor) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    path = cursor.path
    cursor._need(4, "the magic number")
    if cursor.buffer[:4] != MAGIC:
        raise ValueError(f"{path} is not a GGUF file (its first bytes are not 'GGUF')")
    cursor.pos = 4
    version = cursor.scalar("I", "the version")
    if version not in VERSIONS:
        raise ValueError(
            f"GGUF file {path} has version {version}; supported: {list(VERSIONS)} "
            "(a big-endian file shows a byte-swapped version)"
        )
    num_tensors, num_kv = cursor.scalar("Q", "the tensor count"), cursor.scalar("Q", "the kv count")
    metadata = {}
    for i in range(num_kv):
        key = cursor.string(f"metadata key {i}")
        metadata[key] = cursor.value(cursor.scalar("I", f"the type of {key!r}"), repr(key))
    infos = [_tensor_info(cursor, i) for i in range(num_tensors)]
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0:
        raise ValueError(f"GGUF file {path} has a bad general.alignment {alignment}")
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = {}
    for name, shape, ggml_type, offset in infos:
        if name in tensors:
            raise ValueError(f"GGUF file {path} lists the tensor {name!r} twice")
        info = TensorInfo(name, shape, ggml_type, data_start + offset, 0)
        block, type_size = _quant_size(info, path)
        nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * type_size
        info = dataclasses.replace(info, nbytes=nbytes)
        if info.offset + nbytes > cursor.size:
            raise ValueError(
                f"GGUF file {path} is truncated: tensor {name!r} ({nbytes} bytes at offset "
                f"{info.offset}) runs past the end of the file ({cursor.size} bytes)"
            )
        tensors[name] = info
    return metadata, tensors


def _tensor_info(cursor: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
    name = cursor.string(f"the name of tensor {i}")
    n_dims = cursor.scalar("I", f"the rank of {name!r}")
    if not 1 <= n_dims <= _MAX_DIMS:
        raise ValueError(f"GGUF file {cursor.path} is corrupt: tensor {name!r} has rank {n_dims}")
    dims = [cursor.scalar("Q", f"the shape of {name!r}") for _ in range(n_dims)]
    if not all(0 < d < 1 << 40 for d in dims):
        raise ValueError(f"GGUF file {cursor.path} is corrupt: tensor {name!r} has dims {dims}")
    ggml_type = cursor.scalar("I", f"the type of {name!r}")
    offset = cursor.scalar("Q", f"the offset of {name!r}")
    return name, tuple(reversed(dims)), ggml_type, offset
