"""Fit and held-out calibration data.

Wanda and SparseGPT fit each pruned weight to the calibration inputs, so the output error measured
on those same inputs is optimistic (SparseGPT can look 30 times better than on new inputs). Every
error the pruner reports, ``--max-error`` and ``sensitivity`` are therefore measured on held-out
batches that no method saw:

- ``--holdout DIR``: the held-out batches come from there; all of ``--calib`` is fit data;
- otherwise ``--calib``'s batches are split: every ``HOLDOUT_EVERY``-th batch is held out (one
  batch in four; with 2 or 3 batches, the last of them); a single batch is split along its first axis (the last quarter of its samples);
- random inputs (no ``--calib``): the held-out batches are drawn with another seed.

A calibration of one sample cannot be split: then the fit data is also the held-out data, and the
report says so (``Split.disjoint`` is False).

When the held-out data also chooses (``--max-error``, ``--method auto``), the error of the model it
chose is optimistic on that data: the choice was made to fit it. ``selection_parts`` splits the
held-out part in two: the selection part (every other held-out batch, or the first half of the
samples of a single one) chooses layers and methods and keeps ``--max-error``; the verification
part, which no choice saw, gives the error the report leads with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from .calibration import Batch, Calibration

HOLDOUT_EVERY = 4


class _Part:
    """A re-iterable subset of a calibration's batches."""

    def __init__(self, source: Iterable[Batch], held: bool, count: int):
        self.source, self.held, self.count = source, held, count

    def __iter__(self) -> Iterator[Batch]:
        if self.count == 1:  # one batch: split its samples
            for batch in self.source:
                yield _rows(batch, self.held)
            return
        every = min(HOLDOUT_EVERY, self.count)  # 2 or 3 batches: the last of each 2 or 3
        for index, batch in enumerate(self.source):
            if (index % every == every - 1) == self.held:
                yield batch


def _length(batch: Batch) -> int | None:
    lengths = {a.shape[0] if a.ndim else None for a in batch.values()}
    return lengths.pop() if len(lengths) == 1 else None


def _rows(batch: Batch, held: bool) -> Batch:
    length = _length(batch) or 0
    cut = length - max(1, length // HOLDOUT_EVERY)
    return {name: (a[cut:] if held else a[:cut]) for name, a in batch.items()}


@dataclass
class Split:
    fit: Iterable[Batch]
    held: Iterable[Batch]
    disjoint: bool
    description: str


def split_calibration(calibration: Calibration, holdout: Calibration | None = None) -> Split:
    """The fit and held-out parts of ``calibration`` (or ``holdout`` as the held-out part)."""
    if holdout is not None:
        return Split(calibration, holdout, True, f"held-out: {_what(holdout)}")
    if calibration.synthetic:
        held = Calibration(calibration.model, None, batch_size=calibration.batch_size,
                           samples=max(calibration.samples // HOLDOUT_EVERY, 1), seed=calibration.seed + 1)
        for key in ("shapes", "int_range"):  # generated like the fit inputs
            if hasattr(calibration, key):
                setattr(held, key, getattr(calibration, key))
        return Split(calibration, held, True, f"held-out: {held.samples} other random samples")
    count = 0
    single_length = None
    for batch in calibration:
        count += 1
        single_length = _length(batch) if count == 1 else None
        if count >= HOLDOUT_EVERY:
            break
    if count >= 2:
        return Split(_Part(calibration, False, count), _Part(calibration, True, count), True,
                     f"held-out: every {HOLDOUT_EVERY}th batch of --calib")
    if count == 1 and single_length and single_length >= 2:
        return Split(_Part(calibration, False, 1), _Part(calibration, True, 1), True,
                     "held-out: the last quarter of the --calib samples")
    return Split(calibration, calibration, False,
                 "held-out: none (one calibration sample: errors are measured on the fit data)")


class _Half:
    """Every other batch of a re-iterable source (``second``: the odd ones), or with one batch the
    first (second) half of its samples."""

    def __init__(self, source: Iterable[Batch], second: bool, count: int):
        self.source, self.second, self.count = source, second, count

    def __iter__(self) -> Iterator[Batch]:
        if self.count == 1:
            for batch in self.source:
                cut = (_length(batch) or 0) // 2
                yield {name: (a[cut:] if self.second else a[:cut]) for name, a in batch.items()}
            return
        for index, batch in enumerate(self.source):
            if index % 2 == int(self.second):
                yield batch


@dataclass
class Selection:
    select: Iterable[Batch]  # chooses layers and methods; --max-error holds on it
    verify: Iterable[Batch]  # never seen by a choice: the reported error
    disjoint: bool
    description: str


def selection_parts(held: Iterable[Batch]) -> Selection:
    """The held-out batches split into a selection part and a verification part."""
    count, single_length = 0, None
    for batch in held:
        count += 1
        single_length = _length(batch) if count == 1 else None
        if count >= 2:
            break
    if count >= 2:
        return Selection(_Half(held, False, count), _Half(held, True, count), True,
                         "choosing on every other held-out batch, verifying on the others")
    if count == 1 and single_length and single_length >= 2:
        return Selection(_Half(held, False, 1), _Half(held, True, 1), True,
                         "choosing on the first half of the held-out samples, verifying on the second")
    return Selection(held, held, False,
                     "one held-out sample: the verification error is measured on the data that chose")


def _what(calibration: Calibration) -> str:
    files = getattr(calibration, "files", None) or []
    return f"{len(files)} .npz file(s) from --holdout"


def rows_of(batches: Iterable[Batch]) -> int:
    return sum(_length(b) or 0 for b in batches)

