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
"""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from collections.abc import Callable, Generator
from multiprocessing.connection import Connection
from typing import Any

#: How often the parent looks for a Stop request or a child that died (seconds).
POLL_S = 0.2


class WorkerProcessError(RuntimeError):
    """The child process could not start, or ended without a result (killed, out of memory)."""


def _child(
    work: Callable[..., Generator[Any, None, Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    messages: Connection,
    stop: Any,
) -> None:
    """Run ``work``; send ("yielded" | "returned" | "raised", value) pickles to the parent.

    Each message is written to the pipe before ``work`` goes on, so none is lost if this
    process is killed later. Values go as plain pickles: multiprocessing's own pickler would
    share tensors through file descriptors that vanish when this process ends.
    """

    def send(kind: str, value: Any) -> None:
        messages.send_bytes(pickle.dumps((kind, value)))

    try:
        if stop is not None:
            kwargs = {**kwargs, "stop": stop}
        generator = work(*args, **kwargs)
        while True:
            try:
                event = next(generator)
            except StopIteration as finished:
                send("returned", finished.value)
                return
            send("yielded", event)
    except BaseException as error:  # relayed to the parent, which raises it
        try:
            pickle.loads(pickle.dumps(error))  # the parent must be able to rebuild it
        except Exception:  # keep its type's name and its message
            error = RuntimeError(f"{type(error).__name__}: {error}")
        send("raised", error)


def events_in_process(
    work: Callable[..., Generator[Any, None, Any]],
    *args: Any,
    stop: threading.Event | None = None,
    **kwargs: Any,
) -> Generator[Any, None, Any]:
    """Run the generator function ``work(*args, **kwargs)`` in a spawned child process.

    Parameters
    ----------
    work : generator function
        A module-level function (the child imports it by name), e.g.
        :func:`napari_unet.training.train_events`. Its arguments, events and result must be
        picklable.
    stop : threading.Event, optional
        Setting it sets the ``stop`` event given to ``work`` in the child (which must then
        accept a ``stop`` keyword), so a cooperative cancel works as in-process.

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
    context = multiprocessing.get_context("spawn")  # fork is unsafe with Qt and torch threads
    receiver, sender = context.Pipe(duplex=False)
    child_stop = context.Event() if stop is not None else None
    child = context.Process(
        target=_child,
        args=(work, args, kwargs, sender, child_stop),
        name=f"napari-unet {getattr(work, '__name__', 'work')}",
        daemon=True,  # never outlives the viewer
    )
    try:
        child.start()  # pickles the arguments for the child
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        receiver.close()
        raise WorkerProcessError(
            f"the data or settings cannot be sent to a child process ({error}); load the "
            "images into memory (numpy arrays) and try again."
        ) from error
    finally:
        sender.close()  # the child holds the writing end: its exit makes the pipe read EOF
    try:
        while True:
            if stop is not None and stop.is_set() and child_stop is not None:
                child_stop.set()
            if not receiver.poll(POLL_S):
                continue
            try:
                kind, value = pickle.loads(receiver.recv_bytes())
            except EOFError:
                child.join()
                raise WorkerProcessError(
                    f"the {child.name!r} process ended without a result (exit code "
                    f"{child.exitcode}); it may have run out of memory: try a smaller batch "
                    "or patch size."
                ) from None
            if kind == "yielded":
                yield value
            elif kind == "returned":
                return value
            else:
                raise value
    finally:
        if child.is_alive():
            if child_stop is not None:
                child_stop.set()
            child.join(timeout=10)
        if child.is_alive():  # abandoned mid-run (generator closed): do not leave it working
            child.terminate()
            child.join()
        receiver.close()
