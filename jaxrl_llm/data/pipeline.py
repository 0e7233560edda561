"""Grain pipelines: tokenized, fixed-shape batches addressable by training step.

Every dataset here is a `grain.MapDataset` over an infinite, per-epoch reshuffled stream, so the
batch of training step s is `dataset[s]`: a pure function of (seed, s). Resuming at step s
reproduces the data order with no iterator state to checkpoint. Batches are dicts of numpy
arrays with fixed shapes (prompts left-padded to P, targets right-padded to T), plus the prompt
and answer texts as numpy str arrays and the source record `index` [B] of each row.

Preference data comes from question/answer records (pairs and labels synthesised from the final
answer: `wrong_answer`) or from records in TRL's preference formats (`sources.record_format`):
prompt/chosen/rejected pairs (`preference_dataset`) and prompt/completion/label unpaired
examples (`unpaired_dataset`, KTO), as texts or chat-message lists (`conversation_parts`).
Scored completions for multi-label reward models (`scored_dataset`) come from
prompt/completion/labels records, or are synthesised from question/answer records
(`jaxrl_llm.data.aspects`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import grain
import numpy as np

from jaxrl_llm.data.sources import DatasetFieldError, final_answer, get_field, record_format


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
    pair_records=None,
) -> grain.MapDataset:
    """Preference pairs for DPO-style methods: prompt_dataset's fields plus

    chosen_ids, chosen_mask: np.int32 [B, T]: the chosen completion + EOS, right-padded to T;
    rejected_ids, rejected_mask: np.int32 [B, T]: the rejected completion + EOS;
    chosen, rejected: str [B], the two texts.

    Question/answer records (verifiable tasks): chosen = final_answer(answer), rejected =
    wrong_answer(final answer, seed, index). Records with chosen/rejected fields
    (`sources.record_format` 'pairs', TRL's format): {"prompt": text, "chosen": text,
    "rejected": text}, or chat messages (`conversation_parts`: a "prompt" message list and/or
    chosen/rejected conversations ending with the assistant's completion; the prompt then needs
    data.chat=True); every record is checked here, before the first batch, and `answers` is ''.

    pair_records: None, or `(records) -> records` (`Algorithm.pair_records`): each batch's
    records (dicts with the texts 'prompt', 'chosen', 'rejected', and 'index', 'answer') are
    replaced by what it returns before they are encoded, so B records may give another number
    of rows (PPO-M: 2B). Records it gives an int 'group' become `group_ids` [rows]: the rows of
    one group stay in one micro-batch for an algorithm with `whole_groups` (SRPO); an int
    'head' becomes `head_ids` [rows], the LM head of a multi-head policy each row trains (MAH-DPO).
    """
    fmt = _format_for(source, "preference")
    if fmt == "pairs":
        records = preference_records(source, tokenizer, "pairs", chat=chat, instruction=instruction)
        stream, prepare = records, _indexed(len(records))
    else:
        stream = source
        prompt_fields = _prompt_fields(
            len(source), tokenizer, chat, instruction, question_field, answer_field
        )

        def prepare(index, record):
            r = prompt_fields(index, record)
            chosen = final_answer(r["answer"])
            return {**r, "chosen": chosen, "rejected": wrong_answer(chosen, seed, r["index"])}

    def batch_fn(records):
        if pair_records is not None:
            records = pair_records(list(records))
        batch = _prompt_batch(records, tokenizer, max_prompt_len, chat)
        chosen, rejected = [r["chosen"] for r in records], [r["rejected"] for r in records]
        batch["chosen_ids"], batch["chosen_mask"] = _target_batch(
            chosen, batch["index"], tokenizer, max_target_len
        )
        batch["rejected_ids"], batch["rejected_mask"] = _target_batch(
            rejected, batch["index"], tokenizer, max_target_len
        )
        batch["chosen"], batch["rejected"] = np.array(chosen, dtype=str), np.array(rejected, dtype=str)
        for field, key in (("group", "group_ids"), ("head", "head_ids")):  # from a pair_records
            if field in records[0]:
                batch[key] = np.array([r[field] for r in records], np.int32)
        return batch

    return _stream(
        stream,
        prepare,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        batch_size=batch_size,
        batch_fn=batch_fn,
    )


# ---- KTO's unpaired examples ---------------------------------------------------------------------

_LABEL_STREAM = 0x6B746F  # the numpy seed word of the synthetic desirable labels ('kto')


def desirable_labels(num_records: int, seed: int, desirable_fraction: float = 0.5) -> np.ndarray:
    """bool [num_records]: which question/answer records `unpaired_dataset` turns into a
    desirable example (their correct final answer) rather than an undesirable one
    (`wrong_answer`). Exactly ceil(fraction · n) records are desirable, those whose position in
    a permutation drawn from (seed, 'kto') is below that count: deterministic in (seed, index)
    for a given source, the same in every epoch. (ceil: with fraction 0.5 and an odd n the
    desirable class is the larger, so λ_D n_D / (λ_U n_U) stays >= 1, see `check_class_balance`.)"""
    if not 0.0 <= desirable_fraction <= 1.0:
        raise ValueError(
            f"data.desirable_fraction={desirable_fraction!r} must be in [0, 1] (the share of records "
            "that give their correct answer as a desirable example); set --config.data.desirable_fraction"
        )
    count = math.ceil(desirable_fraction * num_records - 1e-9)
    rank = np.random.default_rng([seed, _LABEL_STREAM]).permutation(num_records)
    return rank < count


def check_class_balance(
    num_desirable: int, num_undesirable: int, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> float:
    """KTO's advice on class weights (Ethayarajh et al., arXiv 2402.01306, eq. 8): keep
    λ_D·n_D / (λ_U·n_U) in [1, 4/3]. Warns (UserWarning) outside that range with the weights
    that would fit, as TRL `KTOTrainer.__init__` does (TRL checks only when n_D != n_U; here
    whenever the ratio is out of range). Counts are clamped to >= 1 as in TRL. Returns the ratio."""
    n_d, n_u = max(int(num_desirable), 1), max(int(num_undesirable), 1)
    ratio = desirable_weight * n_d / (undesirable_weight * n_u)
    if not 1.0 <= ratio <= 4.0 / 3.0:
        d_low, u_high = n_u * undesirable_weight / n_d, n_d * desirable_weight / n_u
        warnings.warn(
            f"KTO class balance: {num_desirable} desirable and {num_undesirable} undesirable examples "
            f"with algo.desirable_weight={desirable_weight} and algo.undesirable_weight="
            f"{undesirable_weight} give λ_D·n_D / (λ_U·n_U) = {ratio:.3g}, outside the recommended "
            f"[1, 4/3]; set EITHER algo.desirable_weight in [{d_low:.3g}, {d_low * 4 / 3:.3g}] OR "
            f"algo.undesirable_weight in [{u_high * 3 / 4:.3g}, {u_high:.3g}] (not both), or change "
            "the data's balance (data.desirable_fraction for synthesised labels)",
            UserWarning,
            stacklevel=2,
        )
    return ratio


def unpaired_dataset(
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
    desirable_fraction: float = 0.5,
    class_weights: tuple[float, float] | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """Unpaired examples for KTO (`Algorithm.data == 'unpaired'`): prompt_dataset's fields plus

      chosen_ids, chosen_mask: np.int32 [B, T]: row i's completion y_i + EOS, right-padded to T;
      rejected_ids, rejected_mask: np.int32 [B, T]: row i's KL completion, the completion of
        row i − 1 of this batch (row 0: row B − 1's), so that (x_i, y_{i−1}) is a mismatched
        pair for KTO's reference point z0 (TRL `kto_trainer.py::_get_kl_dataset`, "+1 offset");
      label: np.float32 [B], 1.0 desirable, 0.0 undesirable;
      completion, kl_completion: str [B], the two texts.

    The trainer reads them as a `PreferenceBatch` (chosen = y_i, rejected = y_{i−1},
    extras['label']); the mismatch is formed here over the whole data batch, so splitting it
    into mini- or micro-batches never changes which completion goes with which prompt.
    KTO needs batch_size >= 2 (with one row the KL completion is the row's own).

    Question/answer records: record i gives final_answer(answer) (desirable) when
    `desirable_labels(n, seed, desirable_fraction)[i]`, else wrong_answer(final answer, seed,
    i) (undesirable). Records with a completion field (`sources.record_format` 'unpaired', TRL's
    format): {"prompt": text or messages, "completion": text or messages, "label": true/false
    or 1/0}, all checked here, before the first batch (`conversation_parts`, `parse_label`).
    Prompt/chosen/rejected pairs give two examples each (`unpair_records`).
    class_weights (λ_D, λ_U): given, the dataset's class counts are checked with
    `check_class_balance` (a warning).
    """
    fmt = _format_for(source, "unpaired")
    if fmt in ("unpaired", "pairs"):
        records = preference_records(source, tokenizer, fmt, chat=chat, instruction=instruction)
        if fmt == "pairs":
            records = unpair_records(records)
        labels = np.array([r["label"] > 0 for r in records], bool)
        stream, prepare = records, _indexed(len(records))
    else:
        labels = desirable_labels(len(source), seed, desirable_fraction)
        stream = source
        prompt_fields = _prompt_fields(
            len(source), tokenizer, chat, instruction, question_field, answer_field
        )

        def prepare(index, record):
            r = prompt_fields(index, record)
            correct, good = final_answer(r["answer"]), bool(labels[r["index"]])
            completion = correct if good else wrong_answer(correct, seed, r["index"])
            return {**r, "completion": completion, "label": float(good)}

    if class_weights is not None:
        check_class_balance(int(labels.sum()), int((~labels).sum()), *class_weights)

    def batch_fn(records):
        batch = _prompt_batch(records, tokenizer, max_prompt_len, chat)
        completions = [r["completion"] for r in records]
        batch["chosen_ids"], batch["chosen_mask"] = _target_batch(
            completions, batch["index"], tokenizer, max_target_len
        )
        # Mismatched pairs: row i takes row i − 1's completion (cyclic), under row i's prompt.
        batch["rejected_ids"] = np.roll(batch["chosen_ids"], 1, axis=0)
        batch["rejected_mask"] = np.roll(batch["chosen_mask"], 1, axis=0)
        batch["label"] = np.array([r["label"] for r in records], np.float32)
        batch["completion"] = np.array(completions, dtype=str)
        batch["kl_completion"] = np.roll(batch["completion"], 1)
        return batch

    return _stream(
        stream,
        prepare,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        batch_size=batch_size,
        batch_fn=batch_fn,
    )


def unpair_records(pairs: list[dict]) -> list[dict]:
    """KTO from paired data (TRL's `unpair_preference_dataset`): each {"prompt", "chosen",
    "rejected"} record gives {"prompt", "completion": chosen, "label": 1.0} then {"prompt",
    "completion": rejected, "label": 0.0}; 2N examples, half desirable. A batch's KL completion
    is the previous row's (`unpaired_dataset`): after shuffling it rarely comes from the same
    pair (unshuffled, every rejected row's would be its own prompt's chosen completion)."""
    return [
        {"prompt": r["prompt"], "completion": r[side], "label": label}
        for r in pairs
        for side, label in (("chosen", 1.0), ("rejected", 0.0))
    ]


# ---- scored completions (multi-label reward models) ------------------------------------------------


def scored_dataset(
    source,
    tokenizer,
    *,
    batch_size: int,
    max_prompt_len: int,
    max_target_len: int,
    seed: int,
    num_labels: int | None = None,
    label_range=(0.0, 1.0),
    chat: bool = False,
    instruction: str = "",
    question_field: str = "question",
    answer_field: str = "answer",
    shuffle: bool = True,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """Completions with K real-valued labels (`Algorithm.data == 'scored'`, a multi-label
    reward model): prompt_dataset's fields plus

      completion_ids, completion_mask: np.int32 [B, T]: the completion + EOS, right-padded to T;
      labels: np.float32 [B, K], the completion's aspect scores in [0, 1];
      completion: str [B], the completion texts.

    Question/answer records: `aspects.aspect_example(final answer, seed, index)`, the final
    answer or a near miss, bare or with a suffix, and its K = 3 synthetic aspect scores
    (correctness, brevity, format); num_labels, when given, must be 3. Records with a labels
    field (`sources.record_format` 'scored'): {"prompt": text or messages, "completion": text
    or messages, "labels": [K numbers]}, all checked here, before the first batch
    (`parse_labels`: K = num_labels when given, each label within `label_range`, config field
    data.label_range, and mapped from it to [0, 1]).
    """
    fmt = _format_for(source, "scored")
    if fmt == "scored":
        records = preference_records(
            source,
            tokenizer,
            "scored",
            chat=chat,
            instruction=instruction,
            num_labels=num_labels,
            label_range=label_range,
        )
        stream, prepare = records, _indexed(len(records))
    else:
        from jaxrl_llm.data.aspects import aspect_example, check_num_labels

        check_num_labels(num_labels)
        stream = source
        prompt_fields = _prompt_fields(
            len(source), tokenizer, chat, instruction, question_field, answer_field
        )

        def prepare(index, record):
            r = prompt_fields(index, record)
            completion, labels = aspect_example(final_answer(r["answer"]), seed, r["index"])
            return {**r, "completion": completion, "labels": labels}

    def batch_fn(records):
        batch = _prompt_batch(records, tokenizer, max_prompt_len, chat)
        completions = [r["completion"] for r in records]
        batch["completion_ids"], batch["completion_mask"] = _target_batch(
            completions, batch["index"], tokenizer, max_target_len
        )
        batch["labels"] = np.array([r["labels"] for r in records], np.float32)
        batch["completion"] = np.array(completions, dtype=str)
        return batch

    return _stream(
        stream,
        prepare,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        batch_size=batch_size,
        batch_fn=batch_fn,
    )


# ---- records in TRL's preference formats -----------------------------------------------------------

_FORMAT_FIELDS = {
    "question": "question/answer",
    "pairs": "prompt/chosen/rejected",
    "unpaired": "prompt/completion/label",
    "scored": "prompt/completion/labels",
}
_ACCEPTED_FORMATS = {
    "preference": ("question", "pairs"),
    "unpaired": ("question", "unpaired", "pairs"),
    "scored": ("question", "scored"),
}
_FIX = "fix the record in the file of --config.data.path"


def _format_for(source, data_kind: str) -> str:
    """`record_format` of the source's first record, checked to suit the algorithm's data kind."""
    fmt = record_format(source[0])
    accepted = _ACCEPTED_FORMATS.get(data_kind, ("question",))
    if fmt not in accepted:
        raise DatasetFieldError(
            f"the dataset's records are {_FORMAT_FIELDS[fmt]} records (record 0 has fields "
            f"{sorted(source[0])}), which an algorithm with data={data_kind!r} cannot train on: it "
            f"needs {' or '.join(_FORMAT_FIELDS[f] for f in accepted)} records. Choose another "
            "algorithm (config field algo.name; prompt/chosen/rejected pairs: the DPO family or "
            "kto, prompt/completion/label: kto, prompt/completion/labels: multi_label_rm) or another "
            "dataset (data.path)"
            + (
                ", and set sft.steps=0 (SFT trains on question/answer records)"
                if data_kind == "supervised"
                else ""
            )
        )
    return fmt


def _indexed(num_records: int):
    """The grain map of already-normalised records: adds the record index (and answer '')."""

    def prepare(index, record):
        return {**record, "index": index % num_records, "answer": ""}

    return prepare


_TRUE_LABELS, _FALSE_LABELS = ("1", "1.0", "true"), ("0", "0.0", "false")


def parse_label(value, index: int) -> float:
    """An unpaired record's label as 1.0 (desirable) / 0.0 (undesirable): a JSON boolean or 0/1
    (`read_jsonl` turns JSON numbers and booleans into str: "True", "1", ...). Else a
    DatasetFieldError naming the record."""
    text = str(value).strip().lower() if isinstance(value, str | int | float) else None
    if text in _TRUE_LABELS:
        return 1.0
    if text in _FALSE_LABELS:
        return 0.0
    raise DatasetFieldError(
        f"record {index} has label={value!r}; a label must be a boolean (true: desirable, false: "
        f"undesirable) or 0/1; {_FIX}"
    )


def parse_labels(value, index: int, num_labels: int | None = None, label_range=(0.0, 1.0)) -> tuple:
    """A scored record's labels: a non-empty list of K finite numbers (K = `num_labels` when
    given: the reward head's outputs, config field model.num_labels), each within `label_range`
    = (low, high) (the labels' scale, config field data.label_range), mapped to [0, 1] by
    (y − low) / (high − low). Returns the K mapped floats; else a DatasetFieldError naming the
    record. Example: [3, 1] with label_range (0, 4) -> (0.75, 0.25)."""
    low, high = (float(x) for x in label_range)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(
            f"data.label_range={tuple(label_range)!r} must be (low, high) with finite low < high, the "
            "scale of the records' labels; set --config.data.label_range"
        )
    numbers = isinstance(value, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not numbers or not value:
        raise DatasetFieldError(
            f"record {index} has labels={repr(value)[:200]}; expected a non-empty list of finite "
            f"numbers (one score per aspect); {_FIX}"
        )
    if num_labels is not None and len(value) != num_labels:
        raise DatasetFieldError(
            f"record {index} has {len(value)} labels, but the reward head has model.num_labels="
            f"{num_labels} outputs; set --config.model.num_labels={len(value)}, or {_FIX}"
        )
    if not all(low <= v <= high for v in value):
        raise DatasetFieldError(
            f"record {index} has labels {list(value)} outside data.label_range=({low:g}, {high:g}); "
            f"set --config.data.label_range to the labels' scale (low, high), or {_FIX}"
        )
    return tuple((v - low) / (high - low) for v in value)


def _message_list(value, index: int, field: str) -> list[dict]:
    """`value` checked to be a list of {"role": str, "content": str} chat messages."""
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )
    if not ok:
        raise DatasetFieldError(
            f"record {index} has field {field!r} = {str(value)[:200]!r}; expected a text or a list of "
            f'chat messages {{"role": ..., "content": ...}} with string role and content; {_FIX}'
        )
    return value


def conversation_parts(record, field: str, index: int) -> tuple[str | list[dict], str]:
    """(prompt, completion) of one completion field ('chosen', 'rejected' or 'completion') of a
    preference record, in TRL's formats:

      text:          {"prompt": "2+2=", field: "4"}  -> ("2+2=", "4")
      chat, explicit prompt: {"prompt": [messages], field: [{"role": "assistant", ...}]}
      chat, implicit prompt: {field: [user, assistant, ..., assistant]}

    A message list must end with an assistant message: its content is the completion, and the
    prompt is every message before it ("prompt"'s messages first; a text "prompt" becomes a
    user message when messages follow it). The prompt is a text or a message list (rendered by
    `render_prompt`). Errors (DatasetFieldError) name the record and the field."""
    if field not in record:
        raise DatasetFieldError(
            f"record {index} has no field {field!r}; its fields are {sorted(record)}; {_FIX}"
        )
    value, prompt = record[field], record.get("prompt")
    if isinstance(value, str):
        if prompt is None:
            raise DatasetFieldError(
                f"record {index} has a text {field!r} but no field 'prompt' (only a conversation, a "
                f"list of chat messages, can hold its own prompt); {_FIX}"
            )
        return prompt, value
    messages = _message_list(value, index, field)
    if not messages or messages[-1]["role"] != "assistant":
        last = messages[-1]["role"] if messages else "nothing"
        raise DatasetFieldError(
            f"record {index}'s {field!r} conversation ends with {last!r}, not an assistant message (its "
            f"content is the completion trained on); {_FIX}"
        )
    before = messages[:-1]
    if before:
        head = [] if prompt is None else prompt
        if isinstance(head, str):
            head = [{"role": "user", "content": head}]
        prompt = _message_list(head, index, "prompt") + before
    if prompt is None or (isinstance(prompt, list) and not prompt):
        raise DatasetFieldError(
            f"record {index} has no prompt: no field 'prompt' and no messages before the assistant's "
            f"in {field!r}; {_FIX}"
        )
    return prompt, messages[-1]["content"]


def render_prompt(prompt, tokenizer, chat: bool, instruction: str, index: int) -> str:
    """The prompt text of a preference record: a text as `format_prompt` makes it (instruction +
    text, in the chat template when chat=True); a message list through the tokenizer's chat
    template with the generation prompt (needs data.chat=True; data.instruction is not added)."""
    if isinstance(prompt, str):
        return format_prompt(prompt, tokenizer, chat, instruction)
    messages = _message_list(prompt, index, "prompt")
    if not chat:
        raise DatasetFieldError(
            f"record {index}'s prompt is a list of chat messages; set --config.data.chat=True so that the "
            "tokenizer's chat template renders it (prompts are encoded without special tokens then)"
        )
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def preference_parts(
    record, fmt: str, index: int, num_labels: int | None = None, label_range=(0.0, 1.0)
) -> tuple[str | list[dict], dict]:
    """(prompt, fields) of one record of TRL's preference formats, every field checked; needs
    no tokenizer (the prompt is not rendered yet: a text or a message list):
    fmt 'pairs' -> fields {"chosen", "rejected"} (texts; chosen and rejected must hold the same
    prompt; and "objective", an int, when the record has one), 'unpaired' -> {"completion": text, "label": 1.0 | 0.0}, 'scored' ->
    {"completion": text, "labels": K floats in [0, 1]} (`parse_labels` with `num_labels` and
    `label_range`).
    Raises DatasetFieldError naming the record (index) and what is wrong with it."""
    if not isinstance(record, dict):
        raise DatasetFieldError(f"record {index} is not a JSON object: {str(record)[:200]!r}; {_FIX}")
    if fmt == "pairs":
        prompt, chosen = conversation_parts(record, "chosen", index)
        other, rejected = conversation_parts(record, "rejected", index)
        if other != prompt:
            raise DatasetFieldError(
                f"record {index}: 'chosen' and 'rejected' hold different prompts ({str(prompt)[:100]!r} vs "
                f"{str(other)[:100]!r}); a pair shares one prompt; {_FIX}"
            )
        fields = {"chosen": chosen, "rejected": rejected}
        if "objective" in record:  # the objective of the pair (MAH-DPO's head), an int
            value = str(record["objective"]).strip()
            if not value.isdigit():
                raise DatasetFieldError(
                    f"record {index}: 'objective' must be a non-negative integer (the pair's objective), "
                    f"got {record['objective']!r}; {_FIX}"
                )
            fields["objective"] = int(value)
        return prompt, fields
    prompt, completion = conversation_parts(record, "completion", index)
    if fmt == "scored":
        if "labels" not in record:
            raise DatasetFieldError(
                f"record {index} has no field 'labels' (a list of K aspect scores); its fields are "
                f"{sorted(record)}; {_FIX}"
            )
        labels = parse_labels(record["labels"], index, num_labels, label_range)
        return prompt, {"completion": completion, "labels": labels}
    if "label" not in record:
        raise DatasetFieldError(
            f"record {index} has no field 'label' (true: desirable, false: undesirable); its fields "
            f"are {sorted(record)}; {_FIX}"
        )
    return prompt, {"completion": completion, "label": parse_label(record["label"], index)}


def preference_records(
    source,
    tokenizer,
    fmt: str,
    *,
    chat: bool = False,
    instruction: str = "",
    indices=None,
    num_labels: int | None = None,
    label_range=(0.0, 1.0),
) -> list[dict]:
    """Records of TRL's preference formats normalised to texts, every field checked
    (`preference_parts`): fmt 'pairs' -> [{"prompt", "chosen", "rejected"}], 'unpaired' ->
    [{"prompt", "completion", "label": 1.0 | 0.0}], 'scored' -> [{"prompt", "completion",
    "labels"}] (num_labels, label_range: `parse_labels`). "prompt" is the rendered prompt text
    (`render_prompt`). indices: which records (default all).
    Raises DatasetFieldError naming the first malformed record."""
    out = []
    for i in range(len(source)) if indices is None else indices:
        prompt, fields = preference_parts(source[i], fmt, i, num_labels, label_range)
        out.append({"prompt": render_prompt(prompt, tokenizer, chat, instruction, i), **fields})
    return out


def check_preference_records(
    source,
    tokenizer,
    data_kinds: Sequence[str],
    *,
    max_prompt_len: int,
    max_target_len: int,
    chat: bool = False,
    instruction: str = "",
    limit: int | None = None,
    num_labels: int | None = None,
    label_range=(0.0, 1.0),
) -> None:
    """Start-up check of a dataset of preference records (`sources.record_format` 'pairs',
    'unpaired' or 'scored'; the trainer's `_check_data`): the format suits each of `data_kinds`
    (the phases' `Algorithm.data`: 'supervised' for an SFT warm-start), and the first `limit`
    records (all if None) are well formed (`preference_records`; scored labels with
    `num_labels`, `label_range`) and fit the prompt and target budgets (PromptTooLongError /
    TargetTooLongError naming the record and the length needed)."""
    fmt = [_format_for(source, kind) for kind in data_kinds][0]
    n = len(source) if limit is None else min(limit, len(source))
    records = preference_records(
        source,
        tokenizer,
        fmt,
        chat=chat,
        instruction=instruction,
        indices=range(n),
        num_labels=num_labels,
        label_range=label_range,
    )
    if not records:
        return

    def prompts(texts, indices):
        return _encode_prompts(texts, tokenizer, 1, chat, indices)

    def targets(texts, indices):
        return encode_texts(
            texts,
            tokenizer,
            1,
            padding_side="right",
            add_special_tokens=False,
            append_eos=True,
            indices=indices,
        )

    _scan(records, lambda r, i: r["prompt"], prompts, max_prompt_len, "prompt", PromptTooLongError, None)
    for field in ("chosen", "rejected") if fmt == "pairs" else ("completion",):
        _scan(records, lambda r, i, f=field: r[f], targets, max_target_len, field, TargetTooLongError, None)
