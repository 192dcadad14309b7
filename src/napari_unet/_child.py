"""The child side of :func:`napari_unet.process.events_in_process`.

``python -m napari_unet._child FD`` reads ``sys.path`` and then (work, args, kwargs,
stoppable) from stdin, runs the work, and writes ("started" | "ready" | "yielded" |
"returned" | "raised", value) frames to the file descriptor ``FD``. A ``S`` byte or
end-of-file on stdin sets the work's ``stop`` event.

It imports nothing heavy before it says "started": the job's unpickling imports the work's
module (for training: PyTorch), which is the first thing the parent can report waiting on.
Stdin is read unbuffered: a daemon thread blocked in a *buffered* read holds the reader's
lock at interpreter shutdown, which makes Python print "Fatal Python error:
_enter_buffered_busy" on stderr; a raw read holds no such lock.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from typing import IO, Any

from napari_unet.process import STOP_BYTE, read_frame, write_frame


def _watch_for_stop(stdin: IO[bytes], stop: threading.Event) -> None:
    while True:
        byte = stdin.read(1)
        if not byte or byte == STOP_BYTE:  # end-of-file: the parent is gone
            stop.set()
            return


def serve(stdin: IO[bytes], messages: IO[bytes]) -> None:
    """Run one job from ``stdin`` and send what it yields, returns or raises to ``messages``.

    ``stdin`` must be unbuffered (see the module docstring).
    """

    def send(kind: str, value: Any) -> None:
        write_frame(messages, (kind, value))

    try:
        send("started", os.getpid())
        sys.path[:] = read_frame(stdin)
        work, args, kwargs, stoppable = read_frame(stdin)
        if stoppable:
            stop = threading.Event()
            threading.Thread(target=_watch_for_stop, args=(stdin, stop), daemon=True).start()
            kwargs = {**kwargs, "stop": stop}
        send("ready", None)
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


if __name__ == "__main__":
    # Left open: the stop watcher may still be reading it when the process ends.
    raw_stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    with os.fdopen(int(sys.argv[1]), "wb") as out:
        serve(raw_stdin, out)
