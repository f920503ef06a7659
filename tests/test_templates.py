"""Label masking from the chat template: what is supervised, the self-check, truncation, generation prompts."""

from pathlib import Path

import pytest

from vlalign.data.llava_json import Record, Turn
from vlalign.data.templates import IGNORE_INDEX, prompt_ids, tokenize_record
from vlalign.errors import DataError
from vlalign.models.llm import load_tokenizer

NV = 16  # visual tokens per image (the tiny CLIP's 4x4 grid)
IM_END = "<|im_end|>\n"

QUESTION_1 = "What color is the triangle?"
ANSWER_1 = "The triangle is green."
QUESTION_2 = "How many shapes are in the picture?"
ANSWER_2 = "There are 2 shapes."


@pytest.fixture(scope="module")
def tok(tiny_models):
    return load_tokenizer(tiny_models["llm"], "<image>")


@pytest.fixture(scope="module")
def image_id(tok):
    token_id = tok.convert_tokens_to_ids("<image>")
    assert token_id != tok.unk_token_id and tok.convert_ids_to_tokens(token_id) == "<image>"
    return token_id


def multi_turn(record_id="inst-7", image=Path("img.png")) -> Record:
    first = f"<image>\n{QUESTION_1}" if image is not None else QUESTION_1
    return Record(record_id, image, (Turn("user", first), Turn("assistant", ANSWER_1),
                                     Turn("user", QUESTION_2), Turn("assistant", ANSWER_2)), "data.json")


def caption_record(record_id="cap-3", caption="There is a red circle on the left.") -> Record:
    return Record(record_id, Path("img.png"), (Turn("user", "<image>\nDescribe the image briefly."),
                                               Turn("assistant", caption)), "data.json")


def supervised_runs(labels) -> list[list[int]]:
    """Maximal runs of consecutive supervised labels."""
    runs, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    if current:
        runs.append(current)
    return runs


# --- chat format -----------------------------------------------------------------------------------------


def test_chat_supervises_exactly_each_answer_and_its_end_of_turn(tok, image_id):
    out = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=512)
    assert not out.truncated
    assert len(out.input_ids) == len(out.labels)

    runs = supervised_runs(out.labels)
    assert [tok.decode(run) for run in runs] == [ANSWER_1 + IM_END, ANSWER_2 + IM_END]
    for position, label in enumerate(out.labels):
        if label != IGNORE_INDEX:
            assert label == out.input_ids[position]

    # Nothing from user turns (or the role headers) is supervised.
    supervised_text = "".join(tok.decode(run) for run in runs)
    for user_text in ("triangle?", "How many", "user", "assistant", "<|im_start|>"):
        assert user_text not in supervised_text

    # The rest of the sequence is the user side of the conversation, in order.
    unsupervised = tok.decode([t for t, label in zip(out.input_ids, out.labels)
                               if label == IGNORE_INDEX and t != image_id])
    assert QUESTION_1 in unsupervised and QUESTION_2 in unsupervised
    assert unsupervised.index(QUESTION_1) < unsupervised.index(QUESTION_2)
    assert ANSWER_1 not in unsupervised and ANSWER_2 not in unsupervised


def test_chat_expands_the_image_placeholder_once_in_the_first_user_turn(tok, image_id):
    out = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=512)
    positions = [i for i, t in enumerate(out.input_ids) if t == image_id]
    assert len(positions) == NV
    assert positions == list(range(positions[0], positions[0] + NV))  # one contiguous block
    assert all(out.labels[i] == IGNORE_INDEX for i in positions)
    before = tok.decode(out.input_ids[:positions[0]])
    after = tok.decode(out.input_ids[positions[-1] + 1:])
    assert before == "<|im_start|>user\n"
    assert after.startswith(f"\n{QUESTION_1}")


def test_chat_text_only_record_has_no_image_tokens(tok, image_id):
    out = tokenize_record(multi_turn("text-1", image=None), tok, "chat", image_id, NV, max_length=512)
    assert image_id not in out.input_ids
    assert [tok.decode(run) for run in supervised_runs(out.labels)] == [ANSWER_1 + IM_END, ANSWER_2 + IM_END]


def test_chat_system_prompt_is_never_supervised(tok, image_id):
    out = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=512,
                          system_prompt="You are a helpful assistant.")
    assert tok.decode(out.input_ids).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert [tok.decode(run) for run in supervised_runs(out.labels)] == [ANSWER_1 + IM_END, ANSWER_2 + IM_END]


# --- plain (stage 1) format --------------------------------------------------------------------------------


def test_plain_puts_image_first_and_supervises_only_caption_and_eos(tok, image_id):
    caption = "There is a red circle on the left."
    out = tokenize_record(caption_record(caption=caption), tok, "plain", image_id, NV, max_length=512)
    assert out.input_ids[:NV] == [image_id] * NV
    assert out.labels[:NV] == [IGNORE_INDEX] * NV
    assert image_id not in out.input_ids[NV:]
    # Everything after the visual block is supervised: the caption, then EOS; the prompt is gone.
    assert out.labels[NV:] == out.input_ids[NV:]
    assert out.input_ids[-1] == tok.eos_token_id
    assert tok.decode(out.input_ids[NV:-1]) == caption
    assert "Describe" not in tok.decode(out.input_ids)


def test_plain_rejects_text_only_and_multi_turn_records(tok, image_id):
    with pytest.raises(DataError, match="text-1") as info:
        tokenize_record(multi_turn("text-1", image=None), tok, "plain", image_id, NV, max_length=512)
    assert info.value.reason == "plain_needs_image"
    with pytest.raises(DataError, match="inst-7") as info:
        tokenize_record(multi_turn(), tok, "plain", image_id, NV, max_length=512)
    assert info.value.reason == "plain_needs_one_pair"


# --- the masking self-check --------------------------------------------------------------------------------

# Generation prompt says "assistant", but assistant turns are rendered under another header.
def renamed_role(header):
    return ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>" + header + "\n' + "
            "m['content'] + '<|im_end|>\n' }}{% else %}"
            "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


# Assistant turns are rendered without their content.
DROPS_ANSWERS = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n<|im_end|>\n' }}"
                 "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Assistant content is rewritten (upper-cased).
REWRITES_ANSWERS = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' + "
                    "m['content'] | upper + '<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + m['role'] + '\n' + "
                    "m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
                    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# The generation prompt ends in a space, so the byte-level tokenizer glues it onto the answer's first word:
# that token straddles the answer boundary, is not supervised, and the answer would lose its first word.
SPACE_BEFORE_ANSWER = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>assistant: ' + "
                       "m['content'] + '<|im_end|>\n' }}{% else %}{{ '<|im_start|>' + m['role'] + '\n' + "
                       "m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
                       "{% if add_generation_prompt %}{{ '<|im_start|>assistant: ' }}{% endif %}")
@pytest.mark.parametrize("template, reason, says", [
    (renamed_role("bot"), "template_mismatch", "differently from its generation prompt"),
    # Same length as "assistant": the answer text would still be found at the expected offset.
    (renamed_role("gpt_model"), "template_mismatch", "differently from its generation prompt"),
    (DROPS_ANSWERS, "template_mismatch", "drops or rewrites"),
    (REWRITES_ANSWERS, "template_mismatch", "drops or rewrites"),
    (SPACE_BEFORE_ANSWER, "label_mask_mismatch", "disagree"),
], ids=["generation-prompt-differs", "generation-prompt-differs-same-length", "drops-answer", "rewrites-answer",
        "answer-token-straddles-boundary"])
def test_self_check_rejects_a_wrong_template(tok, image_id, template, reason, says):
    with pytest.raises(DataError) as info:
        tokenize_record(multi_turn("inst-42"), tok, "chat", image_id, NV, max_length=512, chat_template=template)
    assert info.value.reason == reason
    assert info.value.record_id == "inst-42"
    assert "inst-42" in str(info.value) and "data.json" in str(info.value)
    assert says in str(info.value)


def test_straddling_template_really_loses_the_first_answer_word(tok):
    # Guard for the test above: the failure comes from the tokenizer merging across the boundary.
    text = "<|im_start|>assistant: " + ANSWER_1
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    answer_start = text.index(ANSWER_1)
    assert any(start < answer_start < end for start, end in encoded["offset_mapping"])


def test_self_check_rejects_a_template_with_unstable_history(tok, image_id):
    # Writes a closing marker only when the conversation is exactly one exchange long: each answer is
    # located fine on its own, but the full conversation no longer starts with the first exchange's render.
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                "{% endfor %}{% if messages | length == 2 %}{{ '(end)' }}{% endif %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(DataError, match="inst-9") as info:
        tokenize_record(multi_turn("inst-9"), tok, "chat", image_id, NV, max_length=512, chat_template=template)
    assert info.value.reason == "template_mismatch"
    assert "not stable" in str(info.value)


def test_custom_template_that_is_consistent_is_accepted(tok, image_id):
    template = ("{% for m in messages %}{{ '### ' + m['role'] + ':\n' + m['content'] + '\n<|im_end|>\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}")
    out = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=512, chat_template=template)
    assert [tok.decode(run) for run in supervised_runs(out.labels)] == [
        ANSWER_1 + "\n<|im_end|>\n", ANSWER_2 + "\n<|im_end|>\n"]
    assert out.input_ids.count(image_id) == NV


def test_tokenizer_without_template_needs_one(tiny_models, image_id):
    bare = load_tokenizer(tiny_models["llm"], "<image>")
    bare.chat_template = None
    with pytest.raises(DataError, match="inst-7") as info:
        tokenize_record(multi_turn(), bare, "chat", image_id, NV, max_length=512)
    assert info.value.reason == "no_chat_template"


# --- truncation ----------------------------------------------------------------------------------------------


def test_plain_truncation_cuts_text_after_an_intact_visual_block(tok, image_id):
    full = tokenize_record(caption_record(), tok, "plain", image_id, NV, max_length=512)
    assert len(full.input_ids) > NV + 3
    out = tokenize_record(caption_record(), tok, "plain", image_id, NV, max_length=NV + 2)
    assert out.truncated
    assert out.input_ids == full.input_ids[:NV + 2]
    assert out.input_ids[:NV] == [image_id] * NV
    assert out.labels[NV:] == out.input_ids[NV:]  # the caption's first tokens stay supervised


def test_chat_truncation_keeps_the_visual_block_and_cuts_the_end(tok, image_id):
    full = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=512)
    first_answer_end = len(supervised_runs(full.labels)[0])
    first_supervised = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    limit = first_supervised + first_answer_end + 3
    assert limit < len(full.input_ids)
    out = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=limit)
    assert out.truncated and len(out.input_ids) == limit
    assert out.input_ids == full.input_ids[:limit] and out.labels == full.labels[:limit]
    assert out.input_ids.count(image_id) == NV


def test_limit_inside_the_visual_block_is_too_long(tok, image_id):
    # Chat: the visual block starts after "<|im_start|>user\n" and ends at image_end.
    full = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=512)
    image_end = max(i for i, t in enumerate(full.input_ids) if t == image_id) + 1
    for limit in (NV // 2, image_end - 1, image_end):
        with pytest.raises(DataError, match="inst-7") as info:
            tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=limit)
        assert info.value.reason == "too_long"
    # Plain: nothing fits in front of the block, so even the bare block alone is too long.
    with pytest.raises(DataError, match="cap-3") as info:
        tokenize_record(caption_record(), tok, "plain", image_id, NV, max_length=NV)
    assert info.value.reason == "too_long"


def test_image_in_a_later_turn_is_never_cut_even_with_supervised_text_before_it(tok, image_id):
    # The first answer comes before the image: a limit inside the visual block would still leave
    # supervised tokens, so only the visual-block rule stops a half-spliced image.
    record = Record("inst-late", Path("img.png"), (
        Turn("user", QUESTION_2), Turn("assistant", ANSWER_2),
        Turn("user", f"<image>\n{QUESTION_1}"), Turn("assistant", ANSWER_1)), "data.json")
    full = tokenize_record(record, tok, "chat", image_id, NV, max_length=512)
    positions = [i for i, t in enumerate(full.input_ids) if t == image_id]
    assert len(positions) == NV and any(label != IGNORE_INDEX for label in full.labels[:positions[0]])
    for limit in (positions[0], positions[0] + 1, positions[-1], positions[-1] + 1):
        with pytest.raises(DataError, match="inst-late.*visual tokens") as info:
            tokenize_record(record, tok, "chat", image_id, NV, max_length=limit)
        assert info.value.reason == "too_long"
    out = tokenize_record(record, tok, "chat", image_id, NV, max_length=positions[-1] + 2)
    assert out.truncated and out.input_ids.count(image_id) == NV


def test_truncation_that_leaves_no_supervised_token_is_too_long(tok, image_id):
    full = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=512)
    image_end = max(i for i, t in enumerate(full.input_ids) if t == image_id) + 1
    first_supervised = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    assert first_supervised > image_end + 1
    # Room for the visual block and some question text, but the first answer falls outside.
    with pytest.raises(DataError, match="inst-7") as info:
        tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=first_supervised)
    assert info.value.reason == "too_long"
    assert "no supervised token" in str(info.value)
    # One more token and the first answer token is in: accepted.
    out = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=first_supervised + 1)
    assert out.labels[-1] != IGNORE_INDEX


# --- generation prompts --------------------------------------------------------------------------------------


def test_prompt_ids_match_the_training_layout(tok, image_id):
    train = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=512)
    first_supervised = next(i for i, label in enumerate(train.labels) if label != IGNORE_INDEX)
    prompt = prompt_ids(tok, "chat", QUESTION_1, image_id, NV)
    # The prompt is exactly what the model saw before its first supervised answer token.
    assert prompt == train.input_ids[:first_supervised]
    assert prompt.count(image_id) == NV
    assert tok.decode([t for t in prompt if t != image_id]).endswith("<|im_start|>assistant\n")


def test_prompt_ids_with_system_prompt_and_custom_template(tok, image_id):
    template = ("{% for m in messages %}{{ '### ' + m['role'] + ':\n' + m['content'] + '\n<|im_end|>\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}")
    system = "You are a helpful assistant."
    train = tokenize_record(multi_turn(), tok, "chat", image_id, NV, max_length=512, system_prompt=system,
                            chat_template=template)
    first_supervised = next(i for i, label in enumerate(train.labels) if label != IGNORE_INDEX)
    assert prompt_ids(tok, "chat", QUESTION_1, image_id, NV, system_prompt=system,
                      chat_template=template) == train.input_ids[:first_supervised]


def test_prompt_ids_text_only_and_plain(tok, image_id):
    train = tokenize_record(multi_turn("text-1", image=None), tok, "chat", image_id, NV, max_length=512)
    first_supervised = next(i for i, label in enumerate(train.labels) if label != IGNORE_INDEX)
    assert prompt_ids(tok, "chat", QUESTION_1, None, NV) == train.input_ids[:first_supervised]

    plain = tokenize_record(caption_record(), tok, "plain", image_id, NV, max_length=512)
    assert prompt_ids(tok, "plain", "", image_id, NV) == plain.input_ids[:NV]
