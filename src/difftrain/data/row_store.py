"""Rows of one shape and dtype kept in a scratch file while a dataset is read, then written out split by split as .npy
files in one sequential pass: preparing holds a chunk of rows in memory, never the dataset.

Plain reads and writes, not a memory map: mapped pages of a large file stay in the process's resident memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

CHUNK_BYTES = 64 * 2**20  # read back 64 MiB of rows at a time


class RowStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed by finish()
        self.shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None
        self.count = 0

    def append(self, row: np.ndarray) -> None:
        if self.shape is None:
            self.shape, self.dtype = row.shape, row.dtype
        if row.shape != self.shape or row.dtype != self.dtype:
            raise ValueError(f"row {self.count} is {row.dtype} {row.shape}, the first was {self.dtype} {self.shape}")
        self.file.write(np.ascontiguousarray(row).tobytes())
        self.count += 1

    def finish(self) -> None:
        self.file.close()

    def chunks(self) -> Iterator[np.ndarray]:
        """The rows in order, a chunk of at most CHUNK_BYTES at a time."""
        row_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        per_chunk = max(1, CHUNK_BYTES // max(1, row_bytes))
        with open(self.path, "rb") as f:
            while chunk := f.read(per_chunk * row_bytes):
                yield np.frombuffer(chunk, self.dtype).reshape(-1, *self.shape)

    def split(self, into: dict[bool, Path], where: np.ndarray, convert: Callable[[np.ndarray], np.ndarray] = lambda x: x,
              visit: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
        """Write the rows where `where` is False to into[False] and the others to into[True], each an .npy file in
        the rows' order, after `convert` (e.g. keeping channels); `visit(rows, where)` sees every converted chunk."""
        first = convert(np.zeros((1, *self.shape), self.dtype))
        files = {}
        for side, path in into.items():
            f = open(path, "wb")  # noqa: SIM115 - closed below
            count = int(np.count_nonzero(where == side))
            header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
                      "shape": (count, *first.shape[1:])}
            np.lib.format.write_array_header_1_0(f, header)
            files[side] = f
        try:
            start = 0
            for chunk in self.chunks():
                rows, sides = convert(chunk), where[start:start + len(chunk)]
                start += len(chunk)
                if visit is not None:
                    visit(rows, sides)
                for side, f in files.items():
                    f.write(np.ascontiguousarray(rows[sides == side]).tobytes())
        finally:
            for f in files.values():
                f.close()
