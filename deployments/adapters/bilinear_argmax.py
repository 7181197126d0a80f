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
boundaries, or most of the image for random weights' near-flat scores) need scores,
and only for the classes still in the running in each cell: a cell's pixels are a
block of output rows by columns, scored from the cell's four corners with PyTorch's
own indices and rounding (``bilinear_replay``).
Where that arithmetic is not known, or replaying would cost more, the scores of
the classes in doubt come from ``F.interpolate``, ``CLASS_CHUNK`` at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from deployments.adapters.bilinear_replay import (
    SEPARABLE_OUTPUT,
    Arithmetic,
    SourceIndices,
    blend_unfused,
    corners,
    replay,
    replayed_arithmetic,
    source_indices,
)

#: Classes upsampled at once by ``F.interpolate``; bounds its memory to
#: ``CLASS_CHUNK x out_h x out_w`` floats whatever the number of classes.
CLASS_CHUNK = 16
#: Scores (classes x cells) whose low-resolution cells are examined at once: bounds the
#: cell analysis' memory (~16 MB per pass).
CELL_CHUNK = 1 << 22
#: Classes with the highest peaks, whose cell minima set a first bar.
STRONG = 8
#: Cells are examined when the output has at least this many pixels per cell; for less
#: (mmseg's input-size scores), upsampling the classes in the running costs no more.
CELL_RATIO = 4
#: (pixel, class) scores computed at once: bounds the scoring's memory (~50 MB).
PIXEL_CHUNK = 1 << 21
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
    if not _refine(logits, cells, (rows, cols), labels, arithmetic, magnitude):
        # As many scores to replay as to upsample: upsample the classes in doubt instead.
        undecided = (labels < 0).view(-1).nonzero().flatten()
        upsampled = interpolate_argmax(logits, cells.in_doubt(), height, width, align_corners)
        labels.view(-1)[undecided] = upsampled.view(-1).take(undecided).to(labels.dtype)
    return labels.to(label_dtype)


def candidate_classes(logits: torch.Tensor) -> torch.Tensor:
    """Ids of the classes that can win the arg-max somewhere after bilinear upsampling."""
    logits = logits.float().contiguous()
    return CellAnalysis(logits, *contenders(logits)).in_doubt()


def _blocks(index: SourceIndices, in_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per source row (or column): the output rows whose first source it is, padded to the
    longest run, (in_size, span), and which of them are real. ``index0`` is monotone, so
    each run is contiguous."""
    counts = torch.bincount(index.index0, minlength=in_size)
    span = max(1, int(counts.max()))
    offsets = torch.arange(span, device=counts.device)
    real = offsets < counts[:, None]
    table = ((counts.cumsum(0) - counts)[:, None] + offsets).clamp(max=len(index.index0) - 1)
    return table, real


def _refine(
    logits: torch.Tensor,
    cells: CellAnalysis,
    indices: tuple[SourceIndices, SourceIndices],
    labels: torch.Tensor,
    arithmetic: Arithmetic,
    magnitude: float,
) -> bool:
    """Write the winners of the undecided cells' pixels into ``labels`` (height, width);
    False (nothing written) where scoring their candidates would cost more than upsampling
    the classes in doubt.

    A cell's pixels form a block (the output rows of its source row by the output columns
    of its source column), so each candidate's four corner values are gathered once and
    blended across the block: first across the columns, then the rows, each product and sum
    rounded (cheap). A pixel whose two best are further apart than that and the kernel's
    fused rounding can differ is settled; the rest (ties, near ties) are replayed in the
    kernel's own rounding. Cells are scored in groups of similar candidate counts (padded
    to a power of two), so that few slots are empty.
    """
    rows, cols = indices
    _, in_h, in_w = logits.shape
    height, width = labels.shape
    row_table, row_real = _blocks(rows, in_h)
    col_table, col_real = _blocks(cols, in_w)
    referenced = row_real[:, :1] & col_real[:, 0]
    undecided = (referenced & (cells.count > 1)).view(-1).nonzero().flatten()
    if not len(undecided):
        return True
    block = row_table.shape[1] * col_table.shape[1]
    counts = cells.count.view(-1).take(undecided)
    powers = (2 ** counts.float().log2().ceil()).long()  # 2, 4, 8, ...
    padded_counts = torch.minimum(torch.maximum(powers, counts), counts.max())
    in_doubt = len(cells.in_doubt())
    if int(padded_counts.sum()) * block * REPLAY_COST > in_doubt * height * width:
        return False
    table = cells.slots(undecided)
    order = padded_counts.argsort()
    groups = torch.unique_consecutive(padded_counts.take(order), return_counts=True)
    apart = 2.0**-19 * magnitude + TINY  # |unfused - fused| <= 8.1 ulp of the largest |score|
    done = 0
    for slots_k, members in zip(groups[0].tolist(), groups[1].tolist(), strict=True):
        step = max(1, PIXEL_CHUNK // (slots_k * block))
        for start in range(done, done + members, step):
            part = order[start : min(start + step, done + members)]
            cell = undecided.take(part)
            ids = table[:slots_k].index_select(1, part)  # (k, n)
            empty = ids < 0
            ids.clamp_(min=0)
            source_row, source_col = cell // in_w, cell % in_w
            out_rows, out_cols = row_table[source_row], col_table[source_col]  # (n, R), (n, C)
            # A block's output rows (columns) share their two source rows (columns).
            first_row, first_col = out_rows[:, 0], out_cols[:, 0]
            values = corners(
                logits,
                ids[:, :, None, None],  # (k, n, 1, 1): the scores come out (k, n, R, C)
                (source_row[:, None, None], rows.index1.take(first_row)[:, None, None]),
                (source_col[:, None, None], cols.index1.take(first_col)[:, None, None]),
            )
            wx = (cols.weight0.take(out_cols)[:, None], cols.weight1.take(out_cols)[:, None])
            wy = (rows.weight0.take(out_rows)[..., None], rows.weight1.take(out_rows)[..., None])
            scores = blend_unfused(values, wx, wy)  # (k, n, R, C)
            scores.masked_fill_(empty[:, :, None, None], -torch.inf)
            top, best = scores.max(dim=0)  # the first maximum: the lowest id, slots ascending
            real = row_real[source_row][:, :, None] & col_real[source_col][:, None, :]
            if arithmetic.fused_blend:
                second = scores.scatter_(0, best[None], -torch.inf).amax(0)
                close = ((top - second <= apart) & real).nonzero(as_tuple=True)
                if len(close[0]):
                    at, row, col = close
                    pixels = (out_rows[at, row], out_cols[at, col])
                    exact = replay(logits, rows, cols, *pixels, ids[:, at], fused=True)
                    exact.masked_fill_(empty[:, at], -torch.inf)
                    best[close] = exact.max(dim=0).indices
            found = ids.t().gather(1, best.flatten(1)).view_as(best)
            where = out_rows[:, :, None] * width + out_cols[:, None, :]
            labels.view(-1)[where[real]] = found[real].to(labels.dtype)
        done += members
    return True


def _cells(scores: torch.Tensor, op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """``op`` over each cell {y, min(y+1, H-1)} x {x, min(x+1, W-1)}: (k, H, W) -> (k, H, W).

    Separable (rows, then columns: two passes of ``op``); the last row (column) pairs with
    itself, as the kernel clamps its second source there."""
    rows = torch.empty_like(scores)
    op(scores[:, :-1], scores[:, 1:], out=rows[:, :-1])
    rows[:, -1] = scores[:, -1]
    out = torch.empty_like(scores)
    op(rows[:, :, :-1], rows[:, :, 1:], out=out[:, :, :-1])
    out[:, :, -1] = rows[:, :, -1]
    return out


def _chunks(logits: torch.Tensor, ids: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, scores of ``ids[start : start + n]``), ``CELL_CHUNK`` classes' cells at a time
    (a view of ``logits`` where the ids are all of its classes, in order)."""
    step = max(1, CELL_CHUNK // (logits.shape[1] * logits.shape[2]))
    everything = len(ids) == len(logits)  # ids are ascending and unique: 0..C-1
    for start in range(0, len(ids), step):
        part = ids[start : start + step]
        yield (
            start,
            logits[start : start + len(part)] if everything else logits.index_select(0, part),
        )


def _bar(logits: torch.Tensor, ids: torch.Tensor, bar: torch.Tensor | None) -> torch.Tensor:
    """Per cell: the least cell maximum that may still win, given classes ``ids`` (and
    the bar so far): below the best cell minimum by more than rounding can close."""
    best: torch.Tensor | None = None
    for _, scores in _chunks(logits, ids):
        value = _cells(scores, torch.minimum).amax(0)
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
        if 2 * len(kept) > len(logits):
            # Examine every class (views, no gathered copies): the others' cell maxima are
            # below every bar (their peaks are), so they add no candidate.
            kept = torch.arange(len(logits), device=device)
        bar = _bar(logits, kept, bar)  # every contender's cell minimum may raise the bar
        #: The classes that may win in some cell (ascending ids).
        self.kept = kept
        #: (len(kept), H, W): whether ``kept[k]`` may win in the cell.
        self.candidate = torch.empty(
            (len(kept), *logits.shape[1:]), dtype=torch.bool, device=device
        )
        for start, scores in _chunks(logits, kept):
            high = _cells(scores, torch.maximum)
            torch.ge(high, bar, out=self.candidate[start : start + len(scores)])
        #: (H, W): candidates per cell (at least 1: the best cell minimum's class).
        self.count: torch.Tensor
        #: (H, W) int32: the cell's class when it is decided, else -1.
        self.decided: torch.Tensor
        if len(kept) < 256:  # byte arithmetic: an order of magnitude faster than bool's sum
            flags = self.candidate.view(torch.uint8)
            self.count = flags.sum(0, dtype=torch.uint8).long()
            ranks = torch.arange(len(kept), dtype=torch.uint8, device=device)[:, None, None]
            last = (flags * ranks).amax(0).long()  # a decided cell's one candidate
        else:
            self.count = self.candidate.sum(0)
            last = self.candidate.to(torch.uint8).max(dim=0).indices
        self.decided = torch.where(self.count == 1, kept.take(last), -1).to(torch.int32)

    def in_doubt(self) -> torch.Tensor:
        """Classes that may win in some cell (ascending ids)."""
        return self.kept[self.candidate.flatten(1).any(dim=1)]

    def slots(self, cells: torch.Tensor) -> torch.Tensor:
        """(k, n): the ids of the candidates of ``cells`` (n flat indices), ascending, each
        column padded with -1 to the most any of them has."""
        counts = self.count.view(-1).take(cells)
        # (cell, kept index) pairs, by cell and then class: nonzero's order.
        pairs = self.candidate.flatten(1).index_select(1, cells).t().nonzero()
        starts = counts.cumsum(0) - counts
        rank = torch.arange(len(pairs), device=cells.device) - starts.repeat_interleave(counts)
        table = torch.full((int(counts.max()), len(cells)), -1, device=cells.device)
        table[rank, pairs[:, 0]] = self.kept.take(pairs[:, 1])
        return table


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
