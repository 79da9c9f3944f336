"""What a GGUF file says about itself, read from its header alone: architecture, metadata, tensor types.

Why not ``gguf.GGUFReader``: it parses every metadata array element into its own numpy view, so the
tokenizer's vocabulary and merges make it take 3-4 s on the 98 MB default model (95 s for a 256k-token
vocabulary on a loaded 2-core machine) — too slow to refuse a file "within a second". This reader walks the
memory-mapped header once, skipping array contents it is not asked for, and uses the ``gguf`` package's own
type tables.
Tensor data is never read; the header's tensor offsets are checked against the file's size, so a
truncated file is named as such before anything loads.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latts.errors import LattsError

_MAGIC = b"GGUF"
_ALIGNMENT_KEY = "general.alignment"
# fixed-size scalar value types: struct format by gguf.GGUFValueType value
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF file's metadata (arrays left out) and its tensors' names and types."""

    path: Path
    metadata: dict[str, Any]
    tensor_types: dict[str, str] = field(default_factory=dict)  # tensor name -> GGML type name (Q4_K, F32 ...)

    @property
    def architecture(self) -> str:
        """``general.architecture`` (llama, qwen2, gemma2, phi3 ...)."""
        return str(self.metadata.get("general.architecture", "?"))

    def type_counts(self) -> Counter[str]:
        """How many tensors of each GGML type the file holds."""
        return Counter(self.tensor_types.values())

    def weight_types(self) -> set[str]:
        """The types of the matrices a forward multiplies (1-D norms and biases, always F32, left out;
        the token embedding too when the file has a separate output matrix, since it is only looked up)."""
        return {t for name, t in self._matrices.items()
                if not (name == "token_embd.weight" and "output.weight" in self._matrices)}

    _matrices: dict[str, str] = field(default_factory=dict, repr=False)


class _Cursor:
    """Little-endian reads from a memory-mapped file (no system call per field), with a clear error at the end."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise EOFError("the header ends early")
        self.at += n
        return self.data[self.at - n : self.at]

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise EOFError("the header ends early")
        value = struct.unpack_from("<" + fmt, self.data, self.at)[0]
        self.at += size
        return value

    def string(self) -> str:
        return self.take(self.scalar("Q")).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        data, at, unpack = self.data, self.at, struct.unpack_from
        for _ in range(count):
            at += 8 + unpack("<Q", data, at)[0]
        if at > len(data):
            raise EOFError("the header ends early")
        self.at = at

    def value(self, kind: int, keep_arrays: bool) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        item, count = self.scalar("I"), self.scalar("Q")
        if item in _SCALARS:
            size = struct.calcsize(_SCALARS[item])
            if not keep_arrays:
                self.at += size * count
                if self.at > len(self.data):
                    raise EOFError("the header ends early")
                return count
            return list(struct.unpack(f"<{count}{_SCALARS[item]}", self.take(size * count)))
        if item == _STRING and not keep_arrays:
            self.skip_strings(count)
            return count
        return [self.value(item, keep_arrays) for _ in range(count)]


def read_header(path: Path) -> GGUFHeader:
    """Parse ``path``'s GGUF header (metadata arrays are kept as their lengths); a file that is not GGUF,
    damaged or truncated is a :class:`LattsError` naming it."""
    import gguf

    try:
        size = path.stat().st_size
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cur = _Cursor(data)
            if cur.take(4) != _MAGIC:
                raise ValueError("no GGUF magic number")
            version = cur.scalar("I")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version} (big-endian or unknown)")
            n_tensors, n_kv = cur.scalar("Q"), cur.scalar("Q")
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cur.string()
                metadata[key] = cur.value(cur.scalar("I"), keep_arrays=False)
            tensors: list[tuple[str, int, int, int, int]] = []  # name, elements, type, offset, dims
            for _ in range(n_tensors):
                name = cur.string()
                dims = [cur.scalar("Q") for _ in range(cur.scalar("I"))]
                kind, offset = cur.scalar("I"), cur.scalar("Q")
                elements = 1
                for d in dims:
                    elements *= d
                tensors.append((name, elements, kind, offset, len(dims)))
            align = int(metadata.get(_ALIGNMENT_KEY, 32))
            data_start = -(-cur.at // align) * align
        types, matrices = {}, {}
        for name, elements, kind, offset, n_dims in tensors:
            qtype = gguf.GGMLQuantizationType(kind)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            if data_start + offset + elements // block * type_size > size:
                raise EOFError(f"tensor {name} lies past the end of the file")
            types[name] = qtype.name
            if n_dims >= 2:
                matrices[name] = qtype.name
    except OSError as exc:
        raise LattsError(f"cannot read GGUF file {path} ({exc})") from None
    except Exception as exc:  # struct, enum and decoding errors all mean a damaged file
        raise LattsError(f"GGUF file {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    return GGUFHeader(path, metadata, types, matrices)
