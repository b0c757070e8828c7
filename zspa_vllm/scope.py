"""Which prompt text selects a media item's tokens: the item's prompt scope (pure Python).

``prompt`` scope: every text token of the prompt (the paper's rule, for one question).

``turn`` scope (the default): the prompt up to and including the first assistant header
after the item, i.e. the conversation up to the user message holding the item plus the
header of the reply to it. In the first turn that is the whole prompt (the header is the
generation prompt at its end), so a single question is selected exactly as under
``prompt``. In every later turn of the same chat, the same tokens come first again (chat
templates append), so an image keeps its text, its selection, its cache hashes and its
prefix-cache blocks for the rest of the conversation; a new image gets its own turn.
Without a header after the item (a raw completion prompt, a template whose generation
prompt could not be learned), the scope is the whole prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["generation_header", "scope_ends"]

# A probe message: any text works; a list of parts suits templates that iterate content.
_PROBE = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]


def generation_header(tokenizer, chat_template: str | None = None) -> list[int] | None:
    """Token ids the chat template appends as its generation prompt (the assistant header).

    Learned by rendering one probe message with and without ``add_generation_prompt``;
    None when the template has no generation prompt, fails on the probe, or the two
    renderings do not share a token prefix (then no scope can be matched token for token).
    """
    try:
        with_header, without = (
            tokenizer.apply_chat_template(
                _PROBE, chat_template=chat_template, add_generation_prompt=gen, tokenize=False
            )
            for gen in (True, False)
        )
    except Exception:  # no template, or one that rejects the probe: fall back to the prompt
        return None
    a = tokenizer.encode(with_header, add_special_tokens=False)
    b = tokenizer.encode(without, add_special_tokens=False)
    if len(a) <= len(b) or a[: len(b)] != b:
        return None
    return list(a[len(b) :])


def _find(seq: Sequence[int], sub: Sequence[int], start: int) -> int:
    """First index >= start where ``sub`` occurs in ``seq``, or -1."""
    n, first = len(sub), sub[0]
    for i in range(start, len(seq) - n + 1):
        if seq[i] == first and list(seq[i : i + n]) == list(sub):
            return i
    return -1


def scope_ends(
    prompt: Sequence[int], positions: Sequence[int], header: Sequence[int] | None
) -> list[int]:
    """End (exclusive) of the ``turn`` scope of the item at each of ``positions``.

    Args:
        prompt: the templated prompt's token ids (one placeholder token per item).
        positions: index in ``prompt`` of each item's placeholder token.
        header: ``generation_header`` of the template, or None.

    Returns:
        One end per position: just after the first ``header`` at or after the item, or
        ``len(prompt)`` when there is none.
    """
    ends = []
    for p in positions:
        i = _find(prompt, header, p) if header else -1
        ends.append(i + len(header) if i >= 0 else len(prompt))
    return ends
