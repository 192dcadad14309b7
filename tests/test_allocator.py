"""Tests of napari_unet.allocator: freed memory is reused inside the block, not after it."""

from __future__ import annotations

import ctypes
import platform
import resource

import pytest

from conftest import make_blobs
from napari_unet import allocator
from napari_unet.allocator import reuse_freed_memory
from napari_unet.training import train_events
from test_training import small_config

#: A block well above glibc's largest mmap threshold (32 MiB), like a training activation.
BLOCK_BYTES = 96 * 1024 * 1024
PAGES = BLOCK_BYTES // resource.getpagesize()

glibc_only = pytest.mark.skipif(
    allocator._glibc() is None, reason="the setting exists in glibc only"
)


def faults_touching_block() -> int:
    """Page faults of allocating one large block, writing every page of it, and freeing it.

    The block comes from the C library's ``malloc`` itself: numpy would ask for huge pages
    and PyTorch for aligned blocks, both of which blur the count this test reads.
    """
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(BLOCK_BYTES)
    assert block, "malloc failed"
    ctypes.memset(block, 1, BLOCK_BYTES)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc_only
def test_freed_block_is_reused_inside_and_returned_after() -> None:
    assert faults_touching_block() > PAGES // 2  # glibc's default: mapped afresh every time
    with reuse_freed_memory() as active:
        assert active
        faults_touching_block()  # the heap grows once
        assert faults_touching_block() < PAGES // 20  # then serves the freed block again
    assert faults_touching_block() > PAGES // 2  # defaults back: mapped afresh again


@glibc_only
def test_nested_uses_keep_the_setting_until_the_last_leaves() -> None:
    with reuse_freed_memory():
        with reuse_freed_memory() as inner:
            assert inner
            faults_touching_block()
        assert faults_touching_block() < PAGES // 20
    assert faults_touching_block() > PAGES // 2


@glibc_only
def test_the_environment_can_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.OPT_OUT, "0")
    with reuse_freed_memory() as active:
        assert not active
        faults_touching_block()
        assert faults_touching_block() > PAGES // 2


@glibc_only  # pretends to be another C library, and checks that glibc's defaults stay
def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    with reuse_freed_memory() as active:
        assert not active
        assert faults_touching_block() > PAGES // 2


@glibc_only
def test_cpu_training_steps_reuse_freed_memory_and_validation_does_not() -> None:
    images, labels = make_blobs(4)
    events = train_events(images, labels, small_config(epochs=2, steps_per_epoch=2))
    next(events)  # the first step has run; the generator is paused among the steps
    faults_touching_block()
    assert faults_touching_block() < PAGES // 20
    event = next(event for event in events if event.kind == "epoch")
    assert event.epoch == 1  # paused after validation: glibc's defaults are back
    assert faults_touching_block() > PAGES // 2
    assert next(events).kind == "step"  # the second epoch's steps reuse again
    faults_touching_block()
    assert faults_touching_block() < PAGES // 20
    for _ in events:
        pass
    assert faults_touching_block() > PAGES // 2
