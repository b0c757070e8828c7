"""M-RoPE (3-D) positions of a pruned prompt, and how kept tokens carry theirs.

Position semantics (Qwen2-VL / Qwen2.5-VL): the result equals running the unpruned prompt
with the pruned visual tokens simply removed. A kept token keeps the (t, h, w) position it
had in the full grid; every text token, and every decode step, keeps its unpruned
position (text after a media item starts at the item's origin + the grid's extent, as in
the unpruned prompt, however few tokens were kept).

Which tokens are kept is only known on the worker, after the vision tower ran, while
vLLM computes a request's positions when the request arrives. So:
  1. ``positions`` gives every placeholder of a pruned item the item's origin
     (base, base, base) and every other token its final position;
  2. the model appends each kept token's grid offset (t, h, w) to its embedding as
     ``CHANNELS`` extra columns (``encode``); the offsets travel with the cached encoder
     output through vLLM's encoder cache and chunked-prefill slicing untouched;
  3. before the language model runs, the offsets are stripped (``decode``) and added to
     the placeholders' positions.

Pure numpy/torch: no vLLM import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Offsets are written as base-256 digits: every float dtype an embedding may have
# (bfloat16 included, exact only up to 256) holds integers 0..255 exactly.
_BASE = 256
CHANNELS = 6  # (t, h, w) x (high digit, low digit)
MAX_OFFSET = _BASE * _BASE - 1


@dataclass(frozen=True)
class MediaItem:
    """One image or video in the prompt, as vLLM's ``iter_mm_grid_thw`` describes it.

    Attributes:
        offset: index of its first placeholder token in the prompt.
        length: number of placeholder tokens (the pruned count when ``pruned``).
        t, h, w: the LLM-side grid (after spatial merging).
        t_factor: temporal position step per grid frame (1.0 for images).
        pruned: fewer placeholders than grid cells; they take the item's origin, fixed
            up by the kept tokens' offsets.
    """

    offset: int
    length: int
    t: int
    h: int
    w: int
    t_factor: float = 1.0
    pruned: bool = False


def grid_offsets(t: int, h: int, w: int, t_factor: float = 1.0) -> np.ndarray:
    """(t, h, w) offsets of every token of a full grid, raster order, int64 [3, t*h*w].

    The temporal offset is ``int(t_index * t_factor)`` computed in float64, exactly as
    vLLM's ``get_mrope_input_positions`` (and HF's ``get_rope_index``) compute it.
    """
    grid = np.indices((t, h, w)).reshape(3, -1).astype(np.int64)
    if t_factor != 1.0:
        grid[0] = (grid[0] * t_factor).astype(np.int64)
    return grid


def extent(t: int, h: int, w: int, t_factor: float = 1.0) -> int:
    """How far the position counter advances past an item: max offset + 1."""
    return max(int((t - 1) * t_factor), h - 1, w - 1) + 1


def positions(num_tokens: int, items: Sequence[MediaItem]) -> tuple[np.ndarray, int]:
    """Positions [3, num_tokens] (pruned placeholders at their item's origin) and the
    decode delta (next position minus ``num_tokens``), with unpruned semantics."""
    parts: list[np.ndarray] = []
    st = 0  # next prompt index not yet placed
    next_pos = 0  # next free position
    for item in sorted(items, key=lambda i: i.offset):
        text_len = item.offset - st
        parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_pos)
        base = next_pos + text_len
        if item.pruned:
            parts.append(np.full((3, item.length), base, dtype=np.int64))
        else:
            grid = grid_offsets(item.t, item.h, item.w, item.t_factor)
            if grid.shape[1] != item.length:
                raise ValueError(f"unpruned item has {item.length} tokens, grid {grid.shape[1]}")
            parts.append(grid + base)
        next_pos = base + extent(item.t, item.h, item.w, item.t_factor)
        st = item.offset + item.length
    tail = num_tokens - st
    parts.append(np.broadcast_to(np.arange(tail), (3, tail)) + next_pos)
    next_pos += tail
    out = np.concatenate(parts, axis=1).astype(np.int64).reshape(3, -1)
    return out, next_pos - num_tokens


def encode(offsets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[3, K] integer offsets -> [K, CHANNELS] columns of ``dtype`` to append to rows."""
    if offsets.numel() and int(offsets.max()) > MAX_OFFSET:
        raise ValueError(f"M-RoPE offset {int(offsets.max())} exceeds {MAX_OFFSET}")
    digits = torch.stack([offsets // _BASE, offsets % _BASE], dim=1)  # [3, 2, K]
    return digits.reshape(CHANNELS, -1).t().to(dtype)


def decode(channels: torch.Tensor) -> torch.Tensor:
    """[K, CHANNELS] columns written by ``encode`` -> [3, K] int64 offsets."""
    digits = channels.t().round().long().reshape(3, 2, -1)
    return digits[:, 0] * _BASE + digits[:, 1]
