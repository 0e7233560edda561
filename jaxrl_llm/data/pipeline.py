"""Grain pipelines: tokenized, fixed-shape batches addressable by training step.

Every dataset here is a `grain.MapDataset` over an infinite, per-epoch reshuffled stream, so the
batch of training step s is `dataset[s]`: a pure function of (seed, s). Resuming at step s
reproduces the data order with no iterator state to checkpoint. Batches are dicts of numpy
arrays with fixed shapes (prompts left-padded to P, targets right-padded to T), plus the prompt
and answer texts as numpy str arrays and the source record `index` [B] of each row.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from jaxrl_llm.data.sources import final_answer, get_field


class PromptTooLongError(ValueError):
    """A formatted prompt has more tokens than `data.max_prompt_len`."""

    field = "data.max_prompt_len"


class UnencodableTextError(ValueError):
    """A record's text holds a character the tokenizer has no token for (a character vocabulary
    without an unknown token): the message names the record, the character and the fix."""

    field = "tokenizer.alphabet"


class TargetTooLongError(ValueError):
    """A target (answer + EOS) has more tokens than `sampling.max_new_tokens` (the trainer's T)."""

    field = "sampling.max_new_tokens"


def format_prompt(question: str, tokenizer, chat: bool, instruction: str = "") -> str:
    """The prompt text: `instruction + question`, wrapped in the chat template when chat=True."""
    if not chat:
        return instruction + question
    messages = [{"role": "user", "content": instruction + question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def encode_texts(
    texts: Sequence[str],
    tokenizer,
    length: int,
    *,
    padding_side: str,
    add_special_tokens: bool,
    append_eos: bool,
    indices: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids and mask, np.int32 [B, length], plus each text's token count [B] (EOS included).

    Rows longer than `length` are cut to fit (check the counts to refuse them); padding_side
    'left' ends every row in the last column, 'right' starts every row in column 0. append_eos
    adds tokenizer.eos_ids[0] after each text. Padding uses tokenizer.pad_id.
    """
    if tokenizer.pad_id is None:
        raise ValueError("this tokenizer has neither a pad nor an eos token: set tokenizer.pad_id")
    if append_eos and not tokenizer.eos_ids:
        raise ValueError("targets end with an EOS token but this tokenizer has none: set tokenizer.eos_ids")
    try:
        encodings = tokenizer.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    except Exception as error:  # e.g. tokenizers' "WordLevel error: Missing [UNK] token"
        raise _unencodable(tokenizer, texts, indices, add_special_tokens, error) from error
    rows = [e.ids for e in encodings]
    if append_eos:
        rows = [row + [tokenizer.eos_ids[0]] for row in rows]
    ids = np.full((len(rows), length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        n = min(len(row), length)
        columns = slice(length - n, length) if padding_side == "left" else slice(0, n)
        ids[i, columns] = row[:n]
        mask[i, columns] = 1
    return ids, mask, np.array([len(row) for row in rows], np.int64)


def _unencodable(tokenizer, texts, indices, add_special_tokens: bool, error) -> UnencodableTextError:
    """The first text (and in it the first character) the tokenizer cannot encode."""
    for i, text in enumerate(texts):
        try:
            tokenizer.backend.encode(text, add_special_tokens=add_special_tokens)
            continue
        except Exception:
            pass
        bad = next((c for c in dict.fromkeys(text) if _fails(tokenizer, c)), None)
        record = f"record {indices[i]}" if indices is not None else f"text {i} of the batch"
        shown = text if len(text) <= 200 else text[:200] + "..."
        what = f"the character {bad!r}" if bad is not None else "a sequence"
        return UnencodableTextError(
            f"{record} holds {what} that the tokenizer cannot encode ({error}): {shown!r}. Add it to the "
            "character tokenizer's alphabet (--config.tokenizer.alphabet) or clean the dataset."
        )
    return UnencodableTextError(f"the tokenizer failed on a batch: {error}")


def _fails(tokenizer, text: str) -> bool:
    try:
        tokenizer.backend.encode(text, add_special_tokens=False)
        return False
    except Exception:
        return True


def _encode_prompts(prompts: Sequence[str], tokenizer, max_prompt_len: int, chat: bool, indices=None):
    # Chat templates write their own special tokens; plain prompts get the post-processor's (bos).
    return encode_texts(
        prompts,
        tokenizer,
        max_prompt_len,
        padding_side="left",
        add_special_tokens=not chat,
        append_eos=False,
        indices=indices,
    )


def _too_long(error, kind: str, index: int, text: str, n: int, budget: int, needed: int) -> ValueError:
    shown = text if len(text) <= 200 else text[:200] + "..."
    return error(
        f"the {kind} of record {index} has {n} tokens, more than the budget of {budget}: {shown!r}. "
        f"Raise the budget with --config.{error.field}={needed} (the longest {kind} checked needs "
        f"{needed} tokens)."
    )


def _check_lengths(lengths: np.ndarray, texts, indices, budget: int, kind: str, error) -> None:
    """Raises `error` for the first row of a batch whose token count exceeds budget."""
    if lengths.max() > budget:
        i = int(np.argmax(lengths > budget))
        raise _too_long(error, kind, int(indices[i]), texts[i], int(lengths[i]), budget, int(lengths.max()))


def _target_text(answer: str, target: str) -> str:
    if target == "final_answer":
        return final_answer(answer)
    if target == "answer":
        return answer
    raise ValueError(f"target must be 'final_answer' or 'answer', got {target!r}")


def _records(source, indices: range) -> list:
    """source[indices] in one read when the source supports it (array_record: ~100x faster)."""
    if hasattr(source, "__getitems__"):
        return source.__getitems__(indices)
    return [source[i] for i in indices]


def _scan(
    source, text_of, encode, budget: int, kind: str, error, limit: int | None, chunk: int = 8192
) -> int:
    """Encodes text_of(record, i) for the first `limit` records (all if None) in chunks; raises
    `error` naming the first record over budget and the length the longest needs; returns the
    longest length."""
    total = len(source) if limit is None else min(limit, len(source))
    lengths = np.zeros(total, np.int64)
    for start in range(0, total, chunk):
        indices = range(start, min(start + chunk, total))
        texts = [text_of(r, i) for r, i in zip(_records(source, indices), indices, strict=True)]
        lengths[indices.start : indices.stop] = encode(texts, indices)[2]
    if lengths.size and lengths.max() > budget:
        i = int(np.argmax(lengths > budget))
        text = text_of(source[i], i)
        raise _too_long(error, kind, i, text, int(lengths[i]), budget, int(lengths.max()))
    return int(lengths.max()) if lengths.size else 0


def check_prompt_lengths(
    source,
    tokenizer,
    max_prompt_len: int,
    *,
    chat: bool = False,
    instruction: str = "",
    question_field: str = "question",
    answer_field: str = "answer",
    limit: int | None = None,
) -> int:
    """Tokenizes the first `limit` prompts of `source` (all if None); returns the longest length.
    Also checks each scanned record's answer field exists and is not null.

    Raises PromptTooLongError at the first prompt over max_prompt_len (call this at start-up so a
    long prompt fails the run before training rather than mid-run; batches are checked again
    when they are built, so a bounded scan of a huge dataset still never trains on a cut prompt).
    Reading TFDS records costs ~70 us each (protobuf parsing): 200k records take ~10 s.
    """

    def encode(texts, indices):
        return _encode_prompts(texts, tokenizer, 1, chat, indices)

    def text_of(record, i):
        question = get_field(record, question_field, i, "data.question_field")
        get_field(record, answer_field, i, "data.answer_field")
        return format_prompt(question, tokenizer, chat, instruction)

    return _scan(source, text_of, encode, max_prompt_len, "prompt", PromptTooLongError, limit)


def check_target_lengths(
    source,
    tokenizer,
    max_target_len: int,
    *,
    target: str = "final_answer",
    answer_field: str = "answer",
    limit: int | None = None,
) -> int:
    """Tokenizes the first `limit` SFT targets (+ EOS) of `source` (all if None); returns the
    longest length in tokens. Raises TargetTooLongError at the first target over max_target_len.
    """

    def encode(texts, indices):
        return encode_texts(
            texts,
            tokenizer,
            1,
            padding_side="right",
            add_special_tokens=False,
            append_eos=True,
            indices=indices,
        )

    def text_of(record, i):
        return _target_text(get_field(record, answer_field, i, "data.answer_field"), target)

    return _scan(source, text_of, encode, max_target_len, "target", TargetTooLongError, limit)


def _stream(source, prepare, *, seed: int, shuffle: bool, num_epochs: int | None, batch_size: int, batch_fn):
    """source -> map_with_index(prepare) -> shuffle -> repeat -> batch(batch_fn)."""
    dataset = grain.MapDataset.source(source).map_with_index(prepare)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if num_epochs != 1:
        dataset = dataset.repeat(num_epochs)
    return dataset.batch(batch_size, batch_fn=batch_fn)


def _prompt_fields(num_records, tokenizer, chat, instruction, question_field, answer_field):
    """The per-record step shared by every dataset: index, formatted prompt, raw answer."""

    def prepare(index, record):
        index %= num_records  # grain passes the index of the repeated stream
        question = get_field(record, question_field, index, "data.question_field")
        answer = get_field(record, answer_field, index, "data.answer_field")
        return {
            "index": index,
            "prompt": format_prompt(question, tokenizer, chat, instruction),
            "answer": answer,
        }

    return prepare


def _prompt_batch(records, tokenizer, max_prompt_len, chat) -> dict:
    prompts = [r["prompt"] for r in records]
    indices = [r["index"] for r in records]
    ids, mask, lengths = _encode_prompts(prompts, tokenizer, max_prompt_len, chat, indices)
    _check_lengths(lengths, prompts, indices, max_prompt_len, "prompt", PromptTooLongError)
    return {
        "prompt_ids": ids,
        "prompt_mask": mask,
        "prompts": np.array(prompts, dtype=str),
        "answers": np.array([r["answer"] for r in records], dtype=str),
        "index": np.array(indices, np.int32),
    }


def _target_batch(texts, indices, tokenizer, max_target_len) -> tuple[np.ndarray, np.ndarray]:
    ids, mask, lengths = encode_texts(
        texts,
        tokenizer,
        max_target_len,
        padding_side="right",
        add_special_tokens=False,
        append_eos=True,
        indices=indices,
    )
    _check_lengths(lengths, texts, indices, max_target_len, "target", TargetTooLongError)
    return ids, mask


def prompt_dataset(
    source,
    tokenizer,
    *,
    batch_size: int,
    max_prompt_len: int,
    seed: int,
    chat: bool = False,
    instruction: str = "",
    question_field: str = "question",
    answer_field: str = "answer",
    shuffle: bool = True,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """Prompt batches for RL: `dataset[step]` is a dict of

      prompt_ids, prompt_mask: np.int32 [B, P], left-padded to exactly P = max_prompt_len;
      prompts: str [B], the formatted prompt texts; answers: str [B], the raw answer fields;
      index: np.int32 [B], the source record of each row.

    Epochs are reshuffled (seed, epoch); num_epochs=None repeats forever (then the last batch of
    an epoch continues into the next), num_epochs=1 gives one pass with a short last batch.
    Raises PromptTooLongError when a prompt of the requested batch exceeds max_prompt_len.
    """
    prepare = _prompt_fields(len(source), tokenizer, chat, instruction, question_field, answer_field)
    batch_fn = lambda records: _prompt_batch(records, tokenizer, max_prompt_len, chat)
    return _stream(
        source,
        prepare,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        batch_size=batch_size,
        batch_fn=batch_fn,
    )


def sft_dataset(
    source,
    tokenizer,
    *,
    batch_size: int,
    max_prompt_len: int,
    max_target_len: int,
    seed: int,
    target: str = "final_answer",
    chat: bool = False,
    instruction: str = "",
    question_field: str = "question",
    answer_field: str = "answer",
    shuffle: bool = True,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """Supervised batches: prompt_dataset's fields plus

      target_ids, target_mask: np.int32 [B, T], right-padded to exactly T = max_target_len: the
        target's tokens then tokenizer.eos_ids[0]; mask 1 on target tokens including the EOS.

    target='final_answer' trains on final_answer(answer) (arithmetic: "579"), 'answer' on the whole
    answer text (GSM8K reasoning). Targets are encoded without special tokens. Raises
    TargetTooLongError when a target + EOS exceeds max_target_len.
    """
    _target_text("", target)  # validates `target` now rather than at the first batch
    prepare = _prompt_fields(len(source), tokenizer, chat, instruction, question_field, answer_field)

    def batch_fn(records):
        batch = _prompt_batch(records, tokenizer, max_prompt_len, chat)
        texts = [_target_text(r["answer"], target) for r in records]
        batch["target_ids"], batch["target_mask"] = _target_batch(
            texts, batch["index"], tokenizer, max_target_len
        )
        return batch

    return _stream(
        source,
        prepare,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        batch_size=batch_size,
        batch_fn=batch_fn,
    )


def wrong_answer(correct: str, seed: int, index: int) -> str:
    """A plausible wrong answer, deterministic in (seed, index) and never equal to `correct`.

    Integers get one digit changed or an offset of ±1..±10 (kept non-negative when `correct` is);
    other numbers get an offset; anything else gets a '1' appended.
    """
    rng = np.random.default_rng([seed, index])
    try:
        value = int(correct)
    except ValueError:
        try:
            return f"{float(correct) + int(rng.integers(1, 11)):g}"
        except ValueError:
            return correct + "1"
    digits = str(abs(value))
    if rng.random() < 0.5:
        position = int(rng.integers(len(digits)))
        low = 1 if position == 0 and len(digits) > 1 else 0  # no leading zero
        choices = [d for d in "0123456789"[low:] if d != digits[position]]
        digits = digits[:position] + choices[int(rng.integers(len(choices)))] + digits[position + 1 :]
        return ("-" if value < 0 else "") + digits
    offsets = [d for d in range(-10, 11) if d != 0 and (value < 0 or value + d >= 0)]
    return str(value + offsets[int(rng.integers(len(offsets)))])


def preference_dataset(
    source,
    tokenizer,
    *,
    batch_size: int,
    max_prompt_len: int,
    max_target_len: int,
    seed: int,
    chat: bool = False,
    instruction: str = "",
    question_field: str = "question",
    answer_field: str = "answer",
    shuffle: bool = True,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """Preference pairs for DPO-style methods on verifiable tasks: prompt_dataset's fields plus

    chosen_ids, chosen_mask: np.int32 [B, T]: final_answer(answer) + EOS, right-padded to T;
    rejected_ids, rejected_mask: np.int32 [B, T]: wrong_answer(final answer, seed, index) + EOS;
    chosen, rejected: str [B], the two texts.
    """
    prepare = _prompt_fields(len(source), tokenizer, chat, instruction, question_field, answer_field)

    def batch_fn(records):
        batch = _prompt_batch(records, tokenizer, max_prompt_len, chat)
        chosen = [final_answer(r["answer"]) for r in records]
        rejected = [wrong_answer(c, seed, r["index"]) for c, r in zip(chosen, records, strict=True)]
        batch["chosen_ids"], batch["chosen_mask"] = _target_batch(
            chosen, batch["index"], tokenizer, max_target_len
        )
        batch["rejected_ids"], batch["rejected_mask"] = _target_batch(
            rejected, batch["index"], tokenizer, max_target_len
        )
        batch["chosen"], batch["rejected"] = np.array(chosen, dtype=str), np.array(rejected, dtype=str)
        return batch

    return _stream(
        source,
        prepare,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        batch_size=batch_size,
        batch_fn=batch_fn,
    )
