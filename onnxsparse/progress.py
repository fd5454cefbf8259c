"""Progress on stderr for the long commands (compile, verify, sensitivity): elapsed time and ETA.

A ``tqdm`` bar when stderr is a terminal and the user did not ask for ``--quiet``; nothing at all
otherwise (logs and pipes stay clean). ``steps`` counts known work (batches, layers) and gives an
ETA; ``working`` shows elapsed time while one long call runs (the compiler's pipeline).
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from typing import Iterator

from tqdm import tqdm


def enabled(quiet: bool = False, stream=None) -> bool:
    stream = stream or sys.stderr
    return not quiet and hasattr(stream, "isatty") and stream.isatty()


def steps(total: int | None, desc: str, quiet: bool = False, unit: str = "it") -> tqdm:
    """A bar to ``update()`` once per step; ``close()`` it (or use it as a context manager)."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled(quiet), leave=False,
                dynamic_ncols=True)


@contextlib.contextmanager
def working(desc: str, quiet: bool = False, interval: float = 0.5) -> Iterator[None]:
    """Elapsed time on stderr, redrawn every ``interval`` seconds, while the block runs."""
    if not enabled(quiet):
        yield
        return
    bar = tqdm(total=None, desc=desc, file=sys.stderr, leave=False, bar_format="{desc}: {elapsed}")
    done = threading.Event()

    def tick() -> None:
        while not done.wait(interval):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()


_STEP = re.compile(r"^\[(\d+)/(\d+)\]\s*")


class Reporter:
    """A ``say(message)`` callback for code that reports ``[i/N] ...`` lines (the pruner's, sensitivity's):
    on a terminal, one bar with elapsed time and ETA whose text is the latest message; elsewhere, or
    with ``quiet``, nothing. Call ``close()`` at the end (or use it as a context manager)."""

    def __init__(self, desc: str, quiet: bool = False) -> None:
        self.desc = desc
        self.bar = tqdm(total=None, desc=desc, file=sys.stderr, disable=not enabled(quiet), leave=False,
                        dynamic_ncols=True)

    def __call__(self, message: str) -> None:
        if self.bar.disable:
            return
        match = _STEP.match(message)
        if match:
            done, total = int(match.group(1)), int(match.group(2))
            if self.bar.total != total:
                self.bar.reset(total=total)
            self.bar.n = done
            message = message[match.end():]
        self.bar.set_postfix_str(message[:60], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
