"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class OnnxSparseError(Exception):
    """An error caused by the user's input (bad model, bad path, bad option), not by a bug."""
