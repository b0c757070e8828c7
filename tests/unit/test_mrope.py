"""zspa_vllm.mrope against a direct construction of the unpruned positions.

The reference below builds M-RoPE positions the way Qwen2-VL's ``get_rope_index`` is
specified (text counts up, a media grid starts at the next free position, text after
it resumes at 1 + the grid's largest index), then deletes the pruned tokens. The code
under test instead places pruned placeholders at their item's origin and adds the kept
offsets later; both must give the same positions and decode delta.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zspa_vllm import mrope


def reference(layout, keeps):
    """Positions of the pruned prompt, and the first decode position, built directly.

    ``layout``: list of ("text", n) or ("media", t, h, w, t_factor); ``keeps``: per media
    item, the sorted kept indices into its raster-order grid.
    """
    cols, nxt, k = [], 0, 0
    for part in layout:
        if part[0] == "text":
            cols += [(nxt + i,) * 3 for i in range(part[1])]
            nxt += part[1]
            continue
        _, t, h, w, f = part
        full = []
        for ti in range(t):
            for hi in range(h):
                for wi in range(w):
                    full.append((nxt + int(ti * f), nxt + hi, nxt + wi))
        cols += [full[i] for i in keeps[k]]
        nxt = max(max(c) for c in full) + 1
        k += 1
    return torch.tensor(cols, dtype=torch.long).t().reshape(3, -1), nxt


def under_test(layout, keeps, pruned):
    items, offsets, offset, k = [], [], 0, 0
    for part in layout:
        if part[0] == "text":
            offset += part[1]
            continue
        _, t, h, w, f = part
        kept = keeps[k]
        items.append(mrope.MediaItem(offset, len(kept), t, h, w, f, pruned[k]))
        grid = torch.from_numpy(mrope.grid_offsets(t, h, w, f))[:, kept]
        # The round trip through an embedding-typed column block, as in the model.
        offsets.append((offset, mrope.decode(mrope.encode(grid, torch.bfloat16))))
        offset += len(kept)
        k += 1
    pos, delta = mrope.positions(offset, items)
    pos = torch.from_numpy(pos)
    for (start, grid), item in zip(offsets, items, strict=True):
        if item.pruned:
            pos[:, start : start + item.length] += grid
    return pos, offset + delta


media = st.tuples(
    st.just("media"),
    st.integers(1, 4),
    st.integers(1, 9),
    st.integers(1, 9),
    st.sampled_from([1.0, 2.0, 0.5, 25 / 13]),
)
layouts = st.lists(st.one_of(st.tuples(st.just("text"), st.integers(0, 6)), media), max_size=6)


@settings(max_examples=200, deadline=None)
@given(layouts, st.data())
def test_positions_equal_the_unpruned_prompt_minus_pruned_tokens(layout, data):
    keeps, pruned = [], []
    for part in layout:
        if part[0] == "media":
            n = part[1] * part[2] * part[3]
            is_pruned = data.draw(st.booleans())
            kept = (
                sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))
                if is_pruned
                else list(range(n))
            )
            keeps.append(kept)
            pruned.append(is_pruned)
    want_pos, want_next = reference(layout, keeps)
    got_pos, got_next = under_test(layout, keeps, pruned)
    assert torch.equal(got_pos, want_pos)
    assert got_next == want_next


def test_text_after_a_tall_image_resumes_after_its_height():
    # 1 x 5 x 2 grid, only the top-left token kept: text still resumes at origin + 5.
    layout = [("text", 2), ("media", 1, 5, 2, 1.0), ("text", 1)]
    pos, nxt = under_test(layout, [[0]], [True])
    assert pos.tolist() == [[0, 1, 2, 7], [0, 1, 2, 7], [0, 1, 2, 7]]
    assert nxt == 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_offsets_survive_any_embedding_dtype(dtype):
    offsets = torch.tensor([[0, 255, 256, 65535], [1, 300, 4095, 7], [9, 10, 11, 40000]])
    assert torch.equal(mrope.decode(mrope.encode(offsets, dtype)), offsets)


def test_offset_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="65535"):
        mrope.encode(torch.tensor([[65536], [0], [0]]), torch.float32)
