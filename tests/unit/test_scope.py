"""The ``turn`` prompt scope on real chat templates: a chat's earlier turns keep their scope
token for token, a single question's scope is the whole prompt."""

from __future__ import annotations

import pytest

from zspa_vllm import scope
from zspa_vllm.testing import tiny_llava, tiny_qwen_vl

IMAGE = {"type": "image_url", "image_url": {"url": "x"}}


def user(text: str, image: bool = False) -> dict:
    return {
        "role": "user",
        "content": ([IMAGE] if image else []) + [{"type": "text", "text": text}],
    }


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def render(tok, messages) -> list[int]:
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok.encode(text, add_special_tokens=False)


TOKENIZERS = {
    "llava": (tiny_llava._tokenizer, "<image>", "ASSISTANT:"),
    "qwen": (tiny_qwen_vl._tokenizer, "<|image_pad|>", "<|im_start|>assistant\n"),
}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def family(request):
    make, image_token, header_text = TOKENIZERS[request.param]
    tok = make()
    return tok, tok.convert_tokens_to_ids(image_token), header_text


def positions(prompt: list[int], token: int) -> list[int]:
    return [i for i, t in enumerate(prompt) if t == token]


def test_header_is_the_generation_prompt(family):
    tok, _, header_text = family
    header = scope.generation_header(tok)
    assert header == tok.encode(header_text, add_special_tokens=False)


def test_single_question_scope_is_the_whole_prompt(family):
    tok, image_id, _ = family
    prompt = render(tok, [user("what is in this image?", image=True)])
    assert scope.scope_ends(prompt, positions(prompt, image_id), scope.generation_header(tok)) == [
        len(prompt)
    ]


def test_later_turns_keep_each_images_scope_token_for_token(family):
    tok, image_id, _ = family
    header = scope.generation_header(tok)
    chat = [user("what is in this image?", image=True)]
    turn1 = render(tok, chat)
    chat += [assistant("a red bus on a street"), user("and the sky?")]
    turn2 = render(tok, chat)
    chat += [assistant("blue"), user("compare these two pictures", image=True)]
    turn3 = render(tok, chat)
    (end2,) = scope.scope_ends(turn2, positions(turn2, image_id), header)
    end3a, end3b = scope.scope_ends(turn3, positions(turn3, image_id), header)
    # The first image keeps exactly its turn-1 text in turns 2 and 3 ...
    assert turn2[:end2] == turn1 and turn3[:end3a] == turn1
    # ... and the new image of turn 3 is selected with the whole turn-3 prompt.
    assert end3b == len(turn3)


def test_no_header_after_the_item_means_the_whole_prompt():
    assert scope.scope_ends([5, 9, 1, 2, 3], [1], [7, 8]) == [5]
    assert scope.scope_ends([5, 9, 7, 8, 3], [1], [7, 8]) == [4]
    assert scope.scope_ends([7, 8, 9, 1, 2], [2], [7, 8]) == [5]  # a header before: not it
    assert scope.scope_ends([5, 9, 7, 8], [1], None) == [4]


def test_a_template_without_generation_prompt_gives_no_header():
    tok = tiny_llava._tokenizer()
    assert (
        scope.generation_header(tok, "{% for m in messages %}{{ m['role'] }}{% endfor %}") is None
    )
    assert scope.generation_header(tok, "{{ raise_exception('no') }}") is None
