"""Many inputs -> one Outcome each: decoded and analysed a batch at a time, failures kept per item.

The one home of "decode a batch, keep what fails, analyse the rest": the server's /batch,
a whole scan (scan.analysis) and evaluation on a labelled folder all use it, so a bad
file costs its own item only, everywhere, and memory is two batches of decoded slices (the
next one decodes while the model runs on this one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from .decoding.images import ImageInput, Slice
from .decoding.limits import ImageError
from .verdict import Analysis

T = TypeVar("T")


class SliceReader(Protocol):
    """What analyze_many needs of a classifier (LungClassifier is one)."""

    def read(self, image: ImageInput) -> Slice: ...

    def analyze_batch(self, images: Sequence[ImageInput | Slice], explain: bool = False) -> list[Analysis]: ...


class PixelBudgetExceeded(Exception):
    """Not decoded: the call's decoded-pixel budget went to earlier items (a server limit, not a bad file)."""

    def __init__(self, max_pixels: int):
        super().__init__(f"not classified: one batch takes at most {max_pixels:,} decoded pixels in all; "
                         "send this file in another batch")
        self.max_pixels = max_pixels


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """One input: its analysis, or why it has none (the decoder's ImageError, or the pixel budget)."""

    item: T
    analysis: Analysis | None
    error: ImageError | PixelBudgetExceeded | None = None


def analyze_many(classifier: SliceReader, items: Sequence[T], *, read: Callable[[T], ImageInput] | None = None,
                 batch_size: int = 16, max_pixels: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Iterator[Outcome[T]]:
    """Each item's Outcome, in order, decoding and analysing ``batch_size`` items at a time.

    ``read`` turns an item into what ``classifier.read`` takes (a zip member's bytes; default:
    the item itself). An item that cannot be decoded gets its ImageError in its Outcome and
    never fails the others. ``max_pixels`` caps the decoded pixels of the whole call; items
    past it are not analysed (PixelBudgetExceeded). ``progress(done, total)`` is called once
    before the first batch and after each one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    total, spent = len(items), [0]
    if progress is not None:
        progress(0, total)
    if not total:
        return

    def decode(start: int) -> tuple[list[Outcome[T]], list[tuple[int, Slice]]]:
        return _decode(classifier, items[start:start + batch_size], read, max_pixels, spent)

    # The next batch decodes while the model runs on this one (the model's runtimes release the GIL), so a
    # scan takes about the longer of the two, not their sum; at most two batches of pixels are held.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-ahead") as ahead:
        pending = ahead.submit(decode, 0)
        for start in range(0, total, batch_size):
            outcomes, decoded = pending.result()
            if start + batch_size < total:
                pending = ahead.submit(decode, start + batch_size)
            analyses = classifier.analyze_batch([piece for _, piece in decoded]) if decoded else []
            for slot, analysis in zip([slot for slot, _ in decoded], analyses):
                outcomes[slot] = Outcome(outcomes[slot].item, analysis)
            del decoded  # the batch's pixels go before the one after next is decoded
            yield from outcomes
            if progress is not None:
                progress(min(start + batch_size, total), total)


def _decode(classifier: SliceReader, batch: Sequence[T], read: Callable[[T], ImageInput] | None,
            max_pixels: int | None, spent: list[int]) -> tuple[list[Outcome[T]], list[tuple[int, Slice]]]:
    """One batch decoded: an Outcome per item (failures final), and the decoded slices by slot.

    ``spent`` is the call's decoded-pixel count so far, updated here. A function of its own so
    that no decoded slice outlives its batch in a local variable of the generator.
    """
    outcomes: list[Outcome[T]] = []
    decoded: list[tuple[int, Slice]] = []
    for item in batch:
        if max_pixels is not None and spent[0] >= max_pixels:
            outcomes.append(Outcome(item, None, PixelBudgetExceeded(max_pixels)))
            continue
        try:
            piece = classifier.read(read(item) if read is not None else item)  # type: ignore[arg-type]
        except ImageError as exc:
            outcomes.append(Outcome(item, None, exc))
            continue
        size = piece.rgb.shape[0] * piece.rgb.shape[1]
        if max_pixels is not None and spent[0] + size > max_pixels:
            outcomes.append(Outcome(item, None, PixelBudgetExceeded(max_pixels)))
            continue
        spent[0] += size
        decoded.append((len(outcomes), piece))
        outcomes.append(Outcome(item, None))  # replaced by its analysis after the model call
    return outcomes, decoded
