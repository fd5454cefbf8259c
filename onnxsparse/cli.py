"""The ``onnxsparse`` command line.

Each command lives in ``onnxsparse/commands/<name>.py`` and defines ``NAME``, ``HELP``, ``ORDER``,
``add_arguments(parser)`` and ``run(args) -> int``. Errors caused by the input are
``OnnxSparseError``: printed as one line, exit status 2 (``diff`` keeps 0/1 for its answer).
Anything else is a bug: one line too, the traceback only with ``ONNXSPARSE_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from . import __version__, commands
from .errors import OnnxSparseError

EXIT_ERROR = 2


def _load_commands() -> list:
    modules = []
    for info in pkgutil.iter_modules(commands.__path__):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            modules.append(module)
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.NAME))


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="onnxsparse",
        description="Compile 2:4-sparse ONNX models into sparse custom ops for ONNX Runtime.",
    )
    parser.add_argument("--version", action="version", version=f"onnxsparse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the passes do")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    by_name = {}
    for module in _load_commands():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        by_name[module.NAME] = module
    return parser, by_name


class _HeldWarnings(logging.Handler):
    """Log records are held while a command runs and printed when it succeeds.

    A command that fails prints one line (its error); the warnings that came before it (the ONNX
    checker's, say) would be a second line that is not the cause. With ``-v`` (INFO), records are
    printed as they come, since the user asked to follow the run.
    """

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.level <= logging.INFO:
            print(self.format(record), file=sys.stderr)
        else:
            self.records.append(record)

    def print_held(self) -> None:
        for record in self.records:
            print(self.format(record), file=sys.stderr)
        self.records.clear()


def main(argv: list[str] | None = None) -> int:
    parser, by_name = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    held = _HeldWarnings(logging.INFO if args.verbose else logging.WARNING)
    root = logging.getLogger()
    root.addHandler(held)
    root.setLevel(held.level)
    try:
        status = int(by_name[args.command].run(args) or 0)
        held.print_held()
        return status
    except OnnxSparseError as exc:
        # The error is the one line: warnings that led up to it (e.g. the checker's) are dropped.
        print(f"onnxsparse {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"onnxsparse {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line for the user, the traceback on request
        if os.environ.get("ONNXSPARSE_DEBUG"):
            raise
        print(
            f"onnxsparse {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set ONNXSPARSE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    finally:
        root.removeHandler(held)


if __name__ == "__main__":
    sys.exit(main())
