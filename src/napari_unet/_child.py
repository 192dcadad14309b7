"""The child side of :func:`napari_unet.process.events_in_process`.

``python -m napari_unet._child FD`` reads ``sys.path`` and then (work, args, kwargs,
stoppable) from stdin, runs the work, and writes ("yielded" | "returned" | "raised", value)
frames to the file descriptor ``FD``. A ``S`` byte or end-of-file on stdin sets the work's
``stop`` event.
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
    """Run one job from ``stdin`` and send what it yields, returns or raises to ``messages``."""

    def send(kind: str, value: Any) -> None:
        write_frame(messages, (kind, value))

    try:
        sys.path[:] = read_frame(stdin)
        work, args, kwargs, stoppable = read_frame(stdin)
        if stoppable:
            stop = threading.Event()
            threading.Thread(target=_watch_for_stop, args=(stdin, stop), daemon=True).start()
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


if __name__ == "__main__":
    with os.fdopen(int(sys.argv[1]), "wb") as out:
        serve(sys.stdin.buffer, out)
