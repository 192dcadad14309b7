"""Run a progress generator in a child process and relay what it yields and returns.

Why: the napari widgets run their work off the GUI thread, and a CPU training run there
is slower than the same run on a process's main thread. glibc gives every other thread an
arena whose heaps hold at most 64 MiB, so a training step's larger activations are mapped
and zeroed afresh at every step whatever :mod:`napari_unet.allocator` sets (measured:
11.2 s per ``fast`` step on a thread against 8.5 s on the main thread). A child process
runs the work on its own main thread, keeps Python's GIL out of the viewer's way, and
gives all its memory back to the system when it ends.

:func:`events_in_process` is itself a generator with the same contract as the work it
runs, so a widget can hand it to ``thread_worker`` in place of the work.

The child is a fresh ``python -m napari_unet._child`` (not :mod:`multiprocessing`, whose
spawned children import the parent's ``__main__``: a napari script without an
``if __name__ == "__main__"`` guard would open a second viewer). It reads its work from
stdin, where a later ``S`` byte asks it to stop and end-of-file (the parent gone) too, and
writes length-prefixed pickles to a pipe of its own, so nothing it prints can garble them.
Before the work's first event it reports two phases (see :data:`PHASES`), so that a
widget can say what the seconds before the first event are spent on.
POSIX only (``select`` on a pipe), as is the glibc setting this is for.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Generator
from typing import IO, Any

from napari_unet.errors import WorkerProcessError

#: Whether :func:`events_in_process` works here (it needs POSIX pipes and ``select``).
CHILD_PROCESSES = os.name == "posix"
#: How often the parent looks for a Stop request (seconds).
POLL_S = 0.2
#: Byte the parent writes to the child's stdin to ask for a cooperative stop.
STOP_BYTE = b"S"
_HEADER = struct.Struct("<Q")  # length of the pickle that follows
#: What ``on_phase`` of :func:`events_in_process` is told, in order, and what each phase
#: is, as a status line can say it: the child process is being started; it runs and is
#: importing the work (for training: PyTorch); the work runs up to its first event.
PHASES = {
    "starting": "Starting the worker process…",
    "loading": "Loading PyTorch and the model…",
    "running": "Preparing the data and the first step…",
}
_PHASE_OF_FRAME = {"started": "loading", "ready": "running"}


def write_pickled(stream: IO[bytes], data: bytes) -> None:
    """Write pickled ``data`` as one length-prefixed frame and flush."""
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)  # apart from the header: no copy of a large job
    stream.flush()


def write_frame(stream: IO[bytes], value: Any) -> None:
    """Write ``value`` as one length-prefixed pickle and flush."""
    write_pickled(stream, pickle.dumps(value))


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left:  # an unbuffered pipe may return less than asked
        chunk = stream.read(left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes]) -> Any:
    """Read one frame written by :func:`write_frame`; EOFError if the stream ends first."""
    (size,) = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    return pickle.loads(_read_exactly(stream, size))


def _child_environment() -> dict[str, str]:
    """This process's environment, with torch's thread count where torch is loaded.

    The child then computes with as many intra-op threads as this process would (the
    count changes float summation order, so seeded results match only with equal counts),
    whatever an inherited ``OMP_NUM_THREADS`` says.
    """
    environment = dict(os.environ)
    torch = sys.modules.get("torch")
    if torch is not None:
        environment["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return environment


def _ended_without_result(child: subprocess.Popen) -> WorkerProcessError:
    code = child.wait()
    if code < 0:
        why = (
            f"was killed (signal {-code}), perhaps for lack of memory: try a smaller batch "
            "or patch size"
        )
    else:
        why = f"ended without a result (exit code {code}); its error is printed above"
    return WorkerProcessError(f"the napari-unet worker process {why}.")


def events_in_process(
    work: Callable[..., Generator[Any, None, Any]],
    *args: Any,
    stop: threading.Event | None = None,
    on_phase: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Generator[Any, None, Any]:
    """Run the generator function ``work(*args, **kwargs)`` in a child process.

    Parameters
    ----------
    work : generator function
        A module-level function (the child imports it by name), e.g.
        :func:`napari_unet.training.train_events`. Its arguments, events and result must be
        picklable.
    stop : threading.Event, optional
        Setting it sets the ``stop`` event given to ``work`` in the child (which must then
        accept a ``stop`` keyword), so a cooperative cancel works as in-process.
    on_phase : callable, optional
        Called with each key of :data:`PHASES` as the run reaches it (in this thread).

    Yields
    ------
    Any
        What ``work`` yields, in order.

    Returns
    -------
    Any
        What ``work`` returns.

    Raises
    ------
    Exception
        What ``work`` raised (the same type and message), or :class:`WorkerProcessError` if
        the arguments cannot be sent to the child or it died without a result.
    """
    try:
        job = pickle.dumps((work, args, kwargs, stop is not None))
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        raise WorkerProcessError(
            f"the data or settings cannot be sent to a child process ({error}); load the "
            "images into memory (numpy arrays) and try again."
        ) from error
    tell = on_phase or (lambda _: None)
    tell("starting")
    read_fd, write_fd = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "napari_unet._child", str(write_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            env=_child_environment(),
        )
    except OSError:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child holds the writing end: its exit makes the pipe read EOF
    assert child.stdin is not None
    # Unbuffered, so that select() sees every frame the child has written.
    with os.fdopen(read_fd, "rb", buffering=0) as messages:
        try:
            try:
                write_frame(child.stdin, sys.path)  # so that the child finds ``work``
                write_pickled(child.stdin, job)
            except BrokenPipeError:
                raise _ended_without_result(child) from None
            stop_sent = False
            while True:
                if stop is not None and stop.is_set() and not stop_sent:
                    stop_sent = True
                    try:
                        child.stdin.write(STOP_BYTE)
                        child.stdin.flush()
                    except BrokenPipeError:
                        pass  # the child has ended; reading says how
                if not select.select([messages], [], [], POLL_S)[0]:
                    continue
                try:
                    kind, value = read_frame(messages)
                except EOFError:
                    raise _ended_without_result(child) from None
                if kind in _PHASE_OF_FRAME:
                    tell(_PHASE_OF_FRAME[kind])
                elif kind == "yielded":
                    yield value
                elif kind == "returned":
                    return value
                else:
                    raise value
        finally:
            try:
                child.stdin.close()  # end-of-file: a child still working stops after its step
            except BrokenPipeError:
                pass
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:  # abandoned mid-run: do not leave it working
                child.kill()
                child.wait()
