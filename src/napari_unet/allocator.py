"""Keep freed memory inside the process while CPU training steps run, so each reuses it.

Why: glibc's ``malloc`` serves a block above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and hands it back to the kernel on ``free``. A U-Net training step allocates
and frees gigabytes of such activations (one 32-channel 256x256 batch of 8 is 64 MiB), so
every step page-faults all of them in again and the kernel zeroes every page. On this
project's 2-core EPYC that was about a quarter of a ``fast`` training step (one thread,
``benchmarks/bench_train.py``: 11.0 s per step with glibc's defaults, 8.1 s with freed
memory kept; a 3-step run of the benchmark page-faulted 9.7 M times with the defaults,
0.8 M times with freed memory kept).

:func:`reuse_freed_memory` switches glibc to serve large blocks from its heap and to keep
freed memory for reuse, and restores the defaults (releasing what it kept) when the last
user leaves. It does nothing where the C library is not glibc (macOS, Windows, musl).
:mod:`napari_unet.training` holds it around each epoch's steps on a CPU; validation on
whole images (other sizes, which kept blocks rarely fit) runs with the defaults, so that
its memory peak stays what it was.

The gain is for allocations made on the **main thread** (the CLI, scripts, ``torchrun``
workers): glibc gives every other thread its own arena, whose heaps are at most 64 MiB, so
larger blocks allocated there are mapped afresh whatever the settings. That is why the
Train widget trains in a child process (:mod:`napari_unet.process`).

The cost is memory: blocks kept for reuse do not all fit later requests, so the heap holds
more than glibc's defaults would. A ``napari-unet train`` run of the ``fast`` preset
(256 px, batch 8) peaked at 5.4 GB resident against 3.7 GB with the defaults, for 23% less
time. Setting the environment variable ``NAPARI_UNET_KEEP_FREED_MEMORY=0`` keeps glibc's
defaults, for a machine where that memory is short.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
from collections.abc import Iterator

#: Environment variable that, set to 0, leaves glibc's allocator settings alone.
OPT_OUT = "NAPARI_UNET_KEEP_FREED_MEMORY"

# mallopt parameters and glibc's defaults for them (malloc/malloc.c).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 0, _M_MMAP_MAX: 65536}
_KEEP = {
    # mallopt takes a C int: keep up to 2 GiB of free memory at the top of the heap.
    _M_TRIM_THRESHOLD: 2**31 - 1,
    _M_TOP_PAD: 64 * 1024 * 1024,  # grow the heap in 64 MiB steps, not per block
    _M_MMAP_MAX: 0,  # no mmap for large blocks: the heap serves them and keeps them
}

_lock = threading.Lock()
_users = 0
_active = False


def _glibc() -> ctypes.CDLL | None:
    """The process's glibc; None where the C library is another one, or on opt-out."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if os.environ.get(OPT_OUT, "1").strip() == "0":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _set(libc: ctypes.CDLL, settings: dict[int, int]) -> bool:
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings.items())


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Keep freed memory for reuse inside the block; glibc's defaults come back after it.

    Nested and concurrent uses share one setting: it is made by the first to enter and
    undone (with ``malloc_trim``, so the kept memory goes back to the system) by the last
    to leave.

    Yields
    ------
    bool
        True where the setting is in force (glibc accepted it), False elsewhere or when
        :data:`OPT_OUT` is 0.
    """
    global _users, _active
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        _users += 1
        if _users == 1:
            _active = _set(libc, _KEEP)
    try:
        yield _active
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _set(libc, _DEFAULTS)
                libc.malloc_trim(0)
