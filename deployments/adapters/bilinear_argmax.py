"""The arg-max of bilinearly upsampled class scores, computed only where it is in doubt.

``upsample_argmax(logits, h, w)`` equals ``F.interpolate(logits[None], (h, w),
mode="bilinear", align_corners=...)[0].argmax(0)`` for contiguous scores, ties
included (they go to the lowest class id, as in ``argmax``), without holding the
upsampled scores of every class.

Each output pixel is a blend, with non-negative weights, of the 2x2 cell of
low-resolution scores its source row and column name, and its rounded value is
monotone in each of the four. So a class whose cell maximum is below another's
cell minimum, by more than rounding can close, never wins a pixel of that cell;
a cell with one class left is decided, and its pixels get that class from an
integer gather, with no interpolation. Only the pixels of undecided cells (class
boundaries) need scores, and only for the classes still in the running there:
they are replayed (``bilinear_replay``) with PyTorch's own indices and rounding.
Where that arithmetic is not known, or replaying would cost more, the scores of
the classes in doubt come from ``F.interpolate``, ``CLASS_CHUNK`` at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from deployments.adapters.bilinear_replay import (
    SEPARABLE_OUTPUT,
    Arithmetic,
    SourceIndices,
    blend_columns,
    replay,
    replay_rows,
    replayed_arithmetic,
    source_indices,
)

#: Classes upsampled at once by ``F.interpolate``; bounds its memory to
#: ``CLASS_CHUNK x out_h x out_w`` floats whatever the number of classes.
CLASS_CHUNK = 16
#: Classes whose low-resolution cells are examined at once.
CELL_CHUNK = 64
#: Classes with the highest peaks, whose cell minima set a first bar.
STRONG = 8
#: Cells are examined when the output has at least this many pixels per cell; for less
#: (mmseg's input-size scores), upsampling the classes in the running costs no more.
CELL_RATIO = 4
#: (pixel, class) scores replayed at once: bounds the replay's memory (~100 MB).
PIXEL_CHUNK = 1 << 20
#: Replaying one score costs about as much as upsampling this many with ``F.interpolate``
#: (and taking their arg-max); past that break-even the classes in doubt are upsampled.
REPLAY_COST = 4
#: Relative and absolute slack for rounding: an interpolated score is within a few units
#: in the last place (2**-24) of its cell's largest magnitude.
MARGIN = 2.0**-17
TINY = 1e-30


def upsample_argmax(
    logits: torch.Tensor,
    height: int,
    width: int,
    label_dtype: torch.dtype,
    align_corners: bool = False,
) -> torch.Tensor:
    """Class ids at (height, width) from (classes, H, W) scores, as the module says."""
    logits = logits.float().contiguous()
    classes, in_h, in_w = logits.shape
    if classes <= 3 or height + width <= SEPARABLE_OUTPUT or in_h * in_w == 1:
        # PyTorch's CPU kernel takes a separable path for these, where a channel's rounding
        # depends on the channels beside it: upsample them all together, as the reference
        # does (small: three channels, outputs of at most 64 x 64, or a 1x1 input, which
        # the kernel also rounds by how many channels it has and no served model makes).
        upsampled = F.interpolate(
            logits[None], size=(height, width), mode="bilinear", align_corners=align_corners
        )
        return upsampled[0].argmax(0).to(label_dtype)
    low, high = torch.aminmax(logits)
    magnitude = max(-float(low), float(high))
    if not math.isfinite(magnitude):  # a broken model: follow F.interpolate's NaN arithmetic
        everything = torch.arange(classes, device=logits.device)
        labels = interpolate_argmax(logits, everything, height, width, align_corners, False)
        return labels.to(label_dtype)
    if (in_h, in_w) == (height, width):
        # The interpolation is the identity; max's index is the first maximum, as argmax's.
        return logits.max(dim=0).indices.to(label_dtype)
    kept, bar = contenders(logits)
    arithmetic = replayed_arithmetic(logits.device.type)
    if arithmetic is None or height * width < CELL_RATIO * in_h * in_w:
        # Little upscaling (per-cell work would cost about what it saves), or source
        # indices not known to be PyTorch's: upsample every class that may win somewhere.
        labels = interpolate_argmax(logits, kept, height, width, align_corners)
        return labels.to(label_dtype)
    cells = CellAnalysis(logits, kept, bar)
    rows = source_indices(in_h, height, align_corners, arithmetic, logits.device)
    cols = source_indices(in_w, width, align_corners, arithmetic, logits.device)
    labels = cells.decided.index_select(0, rows.index0).index_select(1, cols.index0)
    undecided = (labels < 0).view(-1).nonzero().flatten()
    if len(undecided):
        found = _undecided(logits, cells, (rows, cols), undecided, arithmetic, magnitude)
        if found is None:  # as many scores to replay as to upsample: upsample instead
            upsampled = interpolate_argmax(logits, cells.in_doubt(), height, width, align_corners)
            found = upsampled.view(-1).take(undecided)
        labels.view(-1)[undecided] = found.to(labels.dtype)
    return labels.to(label_dtype)


def candidate_classes(logits: torch.Tensor) -> torch.Tensor:
    """Ids of the classes that can win the arg-max somewhere after bilinear upsampling."""
    logits = logits.float().contiguous()
    return CellAnalysis(logits, *contenders(logits)).in_doubt()


def _undecided(
    logits: torch.Tensor,
    cells: CellAnalysis,
    indices: tuple[SourceIndices, SourceIndices],
    undecided: torch.Tensor,
    arithmetic: Arithmetic,
    magnitude: float,
) -> torch.Tensor | None:
    """The winners at the ``undecided`` pixels (flat indices), or None where replaying
    their cells' candidates would cost more than upsampling the classes in doubt.

    Scores are first replayed with each product and sum rounded (cheap, and the
    column blends shared); a pixel whose two best are further apart than that and
    the kernel's fused rounding can differ is settled, the rest (ties, near ties)
    are replayed in the kernel's own rounding. Pixels of two-candidate cells (most
    of a boundary) are scored apart from the others, so that few slots are empty.
    """
    rows, cols = indices
    _, in_h, in_w = logits.shape
    height, width = len(rows.index0), len(cols.index0)
    pixel_rows, pixel_cols = undecided // width, undecided % width
    cell = rows.index0.take(pixel_rows) * in_w + cols.index0.take(pixel_cols)
    count = cells.count.view(-1).take(cell)
    pairs = (count == 2).nonzero().flatten()
    others = (count > 2).nonzero().flatten()
    width_k = int(count.max())
    replayed = 2 * len(pairs) + width_k * len(others)
    if replayed * REPLAY_COST > len(cells.in_doubt()) * height * width:
        return None
    used_rows = torch.zeros(in_h, dtype=torch.bool, device=logits.device)
    used_cols = torch.zeros(in_w, dtype=torch.bool, device=logits.device)
    referenced = used_rows.index_fill_(0, rows.index0, True)[:, None] & used_cols.index_fill_(
        0, cols.index0, True
    )
    in_doubt, table, position = cells.slots(referenced)
    column = position.take(cell)
    blended = None
    if len(in_doubt) * in_h * width <= 4 * replayed:  # shared column blends are cheaper
        blended = blend_columns(logits.index_select(0, in_doubt), cols)
    padded = torch.cat([in_doubt, in_doubt[:1]])  # slot len(in_doubt) is empty
    # |unfused - fused| <= 8.1 units in the last place of the largest |score|, per score.
    apart = 2.0**-19 * magnitude + TINY
    found = torch.empty(len(undecided), dtype=torch.int64, device=logits.device)
    for group, slots_k in ((pairs, 2), (others, width_k)):
        step = max(1, PIXEL_CHUNK // slots_k)
        for start in range(0, len(group), step):
            part = group[start : start + step]
            slots = table[:slots_k].index_select(1, column.take(part))
            empty = slots == len(in_doubt)
            ids = padded.take(slots)
            pixels = (pixel_rows.take(part), pixel_cols.take(part))
            if blended is not None:
                planes = slots.clamp(max=len(in_doubt) - 1)
                scores = replay_rows(blended, rows, *pixels, planes)
            else:
                scores = replay(logits, rows, cols, *pixels, ids, fused=False)
            scores.masked_fill_(empty, -torch.inf)
            top, best = scores.max(dim=0)  # the first maximum: the lowest id, slots ascending
            if arithmetic.fused_blend:
                second = scores.scatter_(0, best[None], -torch.inf).amax(0)
                close = (top - second <= apart).nonzero().flatten()
                if len(close):
                    near = (pixels[0].take(close), pixels[1].take(close))
                    exact = replay(logits, rows, cols, *near, ids[:, close], fused=True)
                    exact.masked_fill_(empty[:, close], -torch.inf)
                    best[close] = exact.max(dim=0).indices
            found[part] = ids.gather(0, best[None])[0]
    return found


def _cells(scores: torch.Tensor, op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``op`` over each cell {y, min(y+1, H-1)} x {x, min(x+1, W-1)}: (k, H, W) -> (k, H, W)."""
    padded = F.pad(scores[None], (0, 1, 0, 1), mode="replicate")[0]
    top = op(padded[:, :-1, :-1], padded[:, :-1, 1:])
    return op(top, op(padded[:, 1:, :-1], padded[:, 1:, 1:]), out=top)


def _bar(logits: torch.Tensor, ids: torch.Tensor, bar: torch.Tensor | None) -> torch.Tensor:
    """Per cell: the least cell maximum that may still win, given classes ``ids`` (and
    the bar so far): below the best cell minimum by more than rounding can close."""
    best: torch.Tensor | None = None
    for start in range(0, len(ids), CELL_CHUNK):
        low = _cells(logits.index_select(0, ids[start : start + CELL_CHUNK]), torch.minimum)
        value = low.amax(0)
        best = value if best is None else torch.maximum(best, value)
    assert best is not None
    new_bar = best - MARGIN * best.abs() - TINY
    return new_bar if bar is None else torch.maximum(bar, new_bar)


def contenders(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes that may win somewhere, ascending; a first per-cell bar), cheaply.

    The classes with the highest peaks set each cell's bar; a class whose peak is
    below every cell's bar can win nowhere (a trained model keeps a handful).
    """
    peak = logits.amax(dim=(1, 2))
    strong = peak.argsort(descending=True)[:STRONG].sort().values
    bar = _bar(logits, strong, None)
    return (peak >= bar.min()).nonzero().flatten(), bar


class CellAnalysis:
    """Per low-resolution cell: which classes may win one of its pixels, and whether one must.

    A class is out of a cell when its cell maximum is below the best cell minimum
    of any class by more than rounding can close (below, not at most: a lower class
    id would win a tie). A cell with one class left is decided. Only the classes
    ``kept`` (see :func:`contenders`) are examined, with their first ``bar``.
    """

    def __init__(self, logits: torch.Tensor, kept: torch.Tensor, bar: torch.Tensor) -> None:
        device = logits.device
        bar = _bar(logits, kept, bar)  # every contender's cell minimum may raise the bar
        #: The classes that may win in some cell (ascending ids).
        self.kept = kept
        #: (len(kept), H, W): whether ``kept[k]`` may win in the cell.
        self.candidate = torch.empty(
            (len(kept), *logits.shape[1:]), dtype=torch.bool, device=device
        )
        for start in range(0, len(kept), CELL_CHUNK):
            part = kept[start : start + CELL_CHUNK]
            high = _cells(logits.index_select(0, part), torch.maximum)
            torch.ge(high, bar, out=self.candidate[start : start + len(part)])
        #: (H, W): candidates per cell (at least 1: the best cell minimum's class).
        self.count = self.candidate.sum(0)
        first = self.candidate.to(torch.uint8).max(dim=0).indices
        #: (H, W) int32: the cell's class when it is decided, else -1.
        self.decided = torch.where(self.count == 1, kept.take(first), -1).to(torch.int32)

    def in_doubt(self) -> torch.Tensor:
        """Classes that may win in some cell (ascending ids)."""
        return self.kept[self.candidate.flatten(1).any(dim=1)]

    def slots(self, referenced: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the undecided cells among ``referenced``: (in_doubt, table, position).

        ``in_doubt``: the classes that may win in one of them (ascending); ``table``
        (k, cells): per such cell, indices into ``in_doubt`` of its candidates,
        ascending, padded with ``len(in_doubt)``; ``position``: column of ``table``
        for each cell (flat index).
        """
        cells = (referenced & (self.count > 1)).view(-1).nonzero().flatten()
        mask = self.candidate.flatten(1)[:, cells]
        used = mask.any(dim=1)
        in_doubt, mask = self.kept[used], mask[used]
        local = torch.arange(len(in_doubt), device=mask.device)[:, None].expand_as(mask)
        keys = torch.where(mask, local, len(in_doubt))
        width_k = int(mask.sum(0).max())
        table = keys.topk(width_k, dim=0, largest=False, sorted=True).values
        position = torch.full((self.count.numel(),), -1, dtype=torch.int64, device=mask.device)
        position[cells] = torch.arange(len(cells), device=mask.device)
        return in_doubt, table, position


def interpolate_argmax(
    logits: torch.Tensor,
    ids: torch.Tensor,
    height: int,
    width: int,
    align_corners: bool,
    finite: bool = True,
) -> torch.Tensor:
    """Arg-max over the classes ``ids`` (ascending) of ``F.interpolate``'s upsampled scores,
    ``CLASS_CHUNK`` classes at a time; class ids (int64) for every pixel. ``finite=False``
    lets a NaN win, as it does in ``argmax``."""
    best_value: torch.Tensor | None = None
    best = torch.zeros((height, width), dtype=torch.int64, device=logits.device)
    for start in range(0, len(ids), CLASS_CHUNK):
        planes = logits.index_select(0, ids[start : start + CLASS_CHUNK])
        count = len(planes)
        if count == 3:
            # PyTorch's CPU kernel takes another (separable) path for exactly three
            # channels on one thread; a fourth keeps the arithmetic of the whole.
            planes = torch.cat([planes, planes[:1]])
        upsampled = F.interpolate(
            planes[None], size=(height, width), mode="bilinear", align_corners=align_corners
        )[0, :count]
        value, index = upsampled.max(dim=0)  # the first maximum, as argmax
        if best_value is None:
            best_value, best = value, index
            continue
        better = value > best_value  # strict: ties keep the lower class id
        if not finite:
            better |= value.isnan() & ~best_value.isnan()
        best_value = torch.where(better, value, best_value)
        best = torch.where(better, index + start, best)
    return ids.take(best)
