"""``onnxsparse diff A B``: structural difference of two models (exit 0 equal, 1 different, 2 error)."""

from __future__ import annotations

import json

from ..diff import diff_files

NAME = "diff"
HELP = "structural difference of two models: exit 0 when equal, 1 when different, 2 on error"
ORDER = 40

EXIT_EQUAL = 0
EXIT_DIFFERENT = 1


def add_arguments(parser) -> None:
    parser.add_argument("a", metavar="A", help="first model (.onnx)")
    parser.add_argument("b", metavar="B", help="second model (.onnx)")
    parser.add_argument("--json", action="store_true", help="print the differences as JSON")


def run(args) -> int:
    result = diff_files(args.a, args.b)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.format())
    return EXIT_EQUAL if result.equal else EXIT_DIFFERENT
