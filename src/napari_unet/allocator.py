"""Keep freed memory inside the process while a CPU training runs, so steps reuse it.

Why: glibc's ``malloc`` serves a block above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and hands it back to the kernel on ``free``. A U-Net training step allocates
and frees gigabytes of such activations (one 32-channel 256x256 batch of 8 is 64 MiB), so
every step page-faults all of them in again and the kernel zeroes every page. On this
project's 2-core EPYC that was about a quarter of a ``fast`` training step:
``benchmarks/bench_train.py`` measured 11.6 s per step with glibc's defaults and 8.7 s with
freed memory kept (9.7 M page faults down to 0.8 M for the whole run).

:func:`reuse_freed_memory` switches glibc to serve large blocks from its heap and to keep
freed memory for reuse, and restores the defaults (releasing what it kept) when the last
user leaves. It does nothing where the C library is not glibc (macOS, Windows, musl).

The gain is for allocations made on the **main thread** (the CLI, scripts, ``torchrun``
workers): glibc gives every other thread its own arena, whose heaps are at most 64 MiB, so
larger blocks allocated there are mapped afresh whatever the settings.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import threading
from collections.abc import Iterator

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
    """The process's glibc, or None where the C library is another one."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_freed_memory() -> None:
    """Give the memory freed so far back to the system now (``malloc_trim``; glibc only).

    For a change of allocation sizes inside :func:`reuse_freed_memory`, such as from
    training steps to validation on whole images: the new sizes rarely fit the blocks the
    old ones left, so keeping those would add them to the new peak.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


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
        True where the setting is in force (glibc accepted it), False elsewhere.
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
