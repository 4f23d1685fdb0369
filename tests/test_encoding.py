"""neat.encoding: a prompt and its candidates, rendered, fitted, tokenised and batched (no model needed)."""

from __future__ import annotations

import torch

from neat.encoding import (PromptCandidates, batch_tokens, collate, collate_packed, encode_response, fit_turns,
                           render_prompt)


class CharTokenizer:
    """One id per character, EOS 1, no chat template: plain `Human:`/`Assistant:` turns."""

    chat_template = None
    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


TOK = CharTokenizer()
USER = {"role": "user", "content": "hi"}


def test_render_prompt_plain_turns_and_steering_replaces_the_system_turn():
    assert render_prompt(TOK, [USER]) == "\n\nHuman: hi\n\nAssistant:"
    steered = render_prompt(TOK, [{"role": "system", "content": "old"}, USER], system="new")
    assert steered == "\n\nSystem: new\n\nHuman: hi\n\nAssistant:"


def test_fit_turns_drops_earliest_exchanges_keeps_system_then_cuts_left():
    system = {"role": "system", "content": "S"}
    turns = [system, {"role": "user", "content": "a" * 50}, {"role": "assistant", "content": "b" * 50}, USER]
    full, ids = fit_turns(TOK, turns, 10_000)
    assert full == render_prompt(TOK, turns) and len(ids) == len(full)
    text, ids = fit_turns(TOK, turns, 40)
    assert text == render_prompt(TOK, [system, USER])  # the first exchange went, the system turn stayed
    assert len(ids) == len(text) <= 40
    text, ids = fit_turns(TOK, [{"role": "user", "content": "x" * 100}], 30)  # one turn: cut from the left
    assert len(ids) == 30 and ids == [ord(c) for c in text][-30:]


def test_encode_response_scores_eos_unless_cut():
    assert encode_response(TOK, "abc", 8) == [97, 98, 99, 1]
    assert encode_response(TOK, "abcdef", 4) == [97, 98, 99, 100]


def groups():
    return [PromptCandidates("p0", [USER], ["ab", "c"], [1.0, 0.0], ["chosen", "rejected"]),
            PromptCandidates("p1", [{"role": "user", "content": "yo"}], ["xyz"], [2.0], ["positive"])]


def test_collate_one_sequence_per_candidate_with_response_mask_after_the_prompt():
    batch = collate(TOK, groups(), 100, 10, pad_id=0)
    prompt = len(render_prompt(TOK, [USER]))
    assert batch.slot.tolist() == [[0, 0], [0, 1], [1, 0]]
    assert batch.rewards.tolist() == [[1.0, 0.0], [2.0, 0.0]] and batch.mask.tolist() == [[True, True], [True, False]]
    assert batch.origins == [["chosen", "rejected"], ["positive"]]
    assert batch.response_mask[0].nonzero().flatten().tolist() == list(range(prompt, prompt + 3))  # "ab" + EOS
    assert batch.input_ids[1, prompt:prompt + 2].tolist() == [ord("c"), 1]
    assert batch_tokens(batch) == int(batch.attention_mask.sum()) == 3 * prompt + 3 + 2 + 4


def test_collate_packed_has_the_prompt_once_and_the_same_slots():
    plain, packed = collate(TOK, groups(), 100, 10, 0), collate_packed(TOK, groups(), 100, 10, 0)
    assert packed.input_ids.shape[0] == 2
    assert torch.equal(packed.slot, plain.slot) and torch.equal(packed.rewards, plain.rewards)
    assert torch.equal(packed.mask, plain.mask) and packed.origins == plain.origins
    prompt = len(render_prompt(TOK, [USER]))
    # p0's 2nd candidate repeats only the prompt's last token (it predicts the candidate's first; see neat.packing)
    assert batch_tokens(packed) == batch_tokens(plain) - (prompt - 1)
