"""Tests for datasets (TFDS arithmetic builder, GSM8K via TFDS and JSONL) and grain pipelines."""

import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
from tokenizers import processors

from jaxrl_llm.data.arithmetic import ArithmeticConfig, JaxrlArithmetic, prepare_arithmetic
from jaxrl_llm.data.pipeline import (
    PromptTooLongError,
    TargetTooLongError,
    check_prompt_lengths,
    check_target_lengths,
    format_prompt,
    preference_dataset,
    prompt_dataset,
    sft_dataset,
    wrong_answer,
)
from jaxrl_llm.data.sources import (
    DatasetFieldError,
    cache_gsm8k_files,
    final_answer,
    gsm8k_builder,
    make_source,
    read_jsonl,
)
from jaxrl_llm.data.tokenizer import char_tokenizer

ALPHABET = "0123456789+-*/=# \n"
SPLITS = ("train", "validation", "test")


def data_config(**fields):
    defaults = dict(
        name="arithmetic",
        builder_config="add3_fixed",
        data_dir="",
        path="",
        question_field="question",
        answer_field="answer",
    )
    return ml_collections.ConfigDict({**defaults, **fields})


def read_all(source):
    return source.__getitems__(range(len(source))) if hasattr(source, "__getitems__") else list(source)


@pytest.fixture(scope="module")
def arithmetic_dir(tfds_dir):
    """add3_fixed (the default) prepared once for the session (about 8 s: 150k training questions)."""
    prepare_arithmetic("add3_fixed", tfds_dir)
    return tfds_dir


@pytest.fixture(scope="module")
def arithmetic_records(arithmetic_dir):
    config = data_config(data_dir=arithmetic_dir)
    return {split: read_all(make_source(config, split)) for split in SPLITS}


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer(ALPHABET)


# --- arithmetic TFDS builder ---------------------------------------------------------------------


def test_arithmetic_split_sizes_and_schema(arithmetic_records):
    assert {s: len(r) for s, r in arithmetic_records.items()} == {
        "train": 150_000,
        "validation": 512,
        "test": 512,
    }
    record = arithmetic_records["train"][0]
    assert set(record) == {"question", "answer"}
    assert all(isinstance(v, str) for v in record.values())


def test_arithmetic_splits_are_disjoint_and_unique(arithmetic_records):
    questions = {split: [r["question"] for r in records] for split, records in arithmetic_records.items()}
    for split, qs in questions.items():
        assert len(set(qs)) == len(qs), split
    assert not set(questions["train"]) & set(questions["validation"])
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["validation"]) & set(questions["test"])


def test_arithmetic_answers_are_correct(arithmetic_records):
    for records in arithmetic_records.values():
        for record in records:
            question = record["question"]
            a, b = question.removesuffix("=").split("+")
            assert question.endswith("=") and 100 <= int(a) <= 499 and 100 <= int(b) <= 499
            assert len(final_answer(record["answer"])) == 3
            assert record["answer"] == f"#### {int(a) + int(b)}"
            assert final_answer(record["answer"]) == str(eval(question[:-1]))


def test_arithmetic_generation_is_deterministic(tmp_path):
    first = prepare_arithmetic("add2", str(tmp_path / "a"))
    second = prepare_arithmetic("add2", str(tmp_path / "b"))
    for split in SPLITS:
        assert read_all(first.as_data_source(split)) == read_all(second.as_data_source(split)), split


def test_arithmetic_mul2_uses_every_question_once(tmp_path):
    builder = prepare_arithmetic("mul2", str(tmp_path))
    records = [r for split in SPLITS for r in read_all(builder.as_data_source(split))]
    assert len({r["question"] for r in records}) == len(records) == 100 * 100
    for r in records[:500]:
        question, answer = r["question"].decode(), r["answer"].decode()
        a, b = question.removesuffix("=").split("*")
        assert answer == f"#### {int(a) * int(b)}"


def test_arithmetic_configs_and_errors(tmp_path):
    assert list(JaxrlArithmetic.builder_configs) == ["add3_fixed", "add3", "add2", "mul2"]
    assert JaxrlArithmetic.name == "jaxrl_arithmetic" and str(JaxrlArithmetic.VERSION) == "1.2.0"
    with pytest.raises(
        ValueError, match="unknown arithmetic builder config 'add9'.*data.builder_config.*add3_fixed"
    ):
        prepare_arithmetic("add9", str(tmp_path))
    too_many = ArithmeticConfig(name="tiny_space", max_operand=3, num_train=10, num_validation=5, num_test=5)
    with pytest.raises(ValueError, match="asks for 20 distinct questions but only 16 exist"):
        prepare_arithmetic(too_many, str(tmp_path))


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("#### 579", "579"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("a #### 1\nb #### 1,234 ", "1234"),
        ("42", "42"),
        ("####", ""),
    ],
)
def test_final_answer(answer, expected):
    assert final_answer(answer) == expected


# --- make_source ---------------------------------------------------------------------------------


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


GSM8K_RECORDS = [
    {
        "question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
        "answer": "48/2 = 24\n48+24 = 72\n#### 72",
    },
    {
        "question": "Weng earns $12 an hour. How much for 50 minutes?",
        "answer": "12/60 = 0.2\n0.2*50 = 10\n#### 10",
    },
    {
        "question": "Betty needs $100 and has half. How much more does she need?",
        "answer": "100/2 = 50\n#### 5",
    },
]


def test_make_source_arithmetic(arithmetic_dir):
    source = make_source(data_config(data_dir=arithmetic_dir), "validation")
    assert len(source) == 512
    assert source[0] == read_all(source)[0] and source[-1] == source[511]
    with pytest.raises(IndexError):
        source[512]
    with pytest.raises(ValueError, match="has no split 'dev'.*'test', 'train', 'validation'"):
        make_source(data_config(data_dir=arithmetic_dir), "dev")


def test_make_source_jsonl(tmp_path):
    write_jsonl(tmp_path / "gsm8k_train.jsonl", GSM8K_RECORDS)
    source = make_source(data_config(name="jsonl", path=str(tmp_path / "gsm8k_{split}.jsonl")), "train")
    assert len(source) == 3 and source[0] == GSM8K_RECORDS[0]
    assert final_answer(source[1]["answer"]) == "10"


def test_jsonl_numbers_become_str_and_bad_lines_are_located(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "1+1=", "answer": 2}\n\n{"question": "2+2=", "answer": 4}\n')
    assert read_jsonl(str(path)) == [{"question": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "4"}]
    path.write_text('{"question": "1+1=", "answer": 2}\n{"question": oops}\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:2 is not valid JSON"):
        read_jsonl(str(path))


def test_make_source_errors(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"unknown dataset 'squad' in config field data\.name.*'arithmetic', 'code', 'countdown', 'gsm8k', 'jsonl'",
    ):
        make_source(data_config(name="squad"), "train")
    pattern = str(tmp_path / "gsm8k_{split}.jsonl")
    with pytest.raises(
        FileNotFoundError, match=r"split 'test'.*gsm8k_test\.jsonl does not exist.*data\.path"
    ):
        make_source(data_config(name="jsonl", path=pattern), "test")
    with pytest.raises(ValueError, match=r"placeholder.*--config\.data\.path="):
        make_source(data_config(name="jsonl", path=str(tmp_path / "all.jsonl")), "train")
    write_jsonl(tmp_path / "gsm8k_empty.jsonl", [])
    with pytest.raises(ValueError, match="no records"):
        make_source(data_config(name="jsonl", path=pattern), "empty")


def test_dataset_field_error_names_field_record_and_fix(tmp_path):
    write_jsonl(tmp_path / "math_train.jsonl", [{"problem": "1+1=", "solution": "#### 2"}])
    config = data_config(name="jsonl", path=str(tmp_path / "math_{split}.jsonl"))
    with pytest.raises(DatasetFieldError) as info:
        make_source(config, "train")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for part in ["record 0", "'question'", "['problem', 'solution']", "--config.data.question_field"]:
        assert part in message
    config.question_field = "problem"
    with pytest.raises(DatasetFieldError, match=r"no field 'answer'.*--config\.data\.answer_field"):
        make_source(config, "train")
    config.answer_field = "solution"
    assert make_source(config, "train")[0]["problem"] == "1+1="


def test_field_error_of_a_later_record_surfaces_in_its_batch(tokenizer):
    records = [{"question": f"{i}+1=", "answer": f"#### {i + 1}"} for i in range(4)]
    records[2] = {"question": "2+1="}
    dataset = prompt_dataset(records, tokenizer, batch_size=2, max_prompt_len=8, seed=0, shuffle=False)
    assert dataset[0]["prompt_ids"].shape == (2, 8)
    with pytest.raises(
        DatasetFieldError, match=r"record 2 has no field 'answer'; its fields are \['question'\]"
    ):
        dataset[1]


# --- GSM8K through TFDS's real builder, offline ----------------------------------------------------


def write_gsm8k_files(directory):
    os.makedirs(directory, exist_ok=True)
    for split in ["train", "test", "train_socratic", "test_socratic"]:
        records = GSM8K_RECORDS if split == "train" else GSM8K_RECORDS[:1]
        write_jsonl(os.path.join(directory, f"{split}.jsonl"), records)


def test_gsm8k_tfds_builder_prepares_offline_from_local_files(tmp_path):
    write_gsm8k_files(tmp_path / "jsonl")
    data_dir = str(tmp_path / "tfds")
    cache_gsm8k_files(str(tmp_path / "jsonl"), data_dir)
    builder = gsm8k_builder(data_dir)
    assert builder.info.full_name == "gsm8k/1.0.0"
    assert os.path.isdir(os.path.join(data_dir, "gsm8k", "1.0.0"))
    assert any(
        f.endswith(".array_record-00000-of-00001")
        for f in os.listdir(os.path.join(data_dir, "gsm8k", "1.0.0"))
    )
    source = make_source(data_config(name="gsm8k", data_dir=data_dir), "train")
    records = sorted(read_all(source), key=lambda r: r["question"])
    expected = sorted(GSM8K_RECORDS, key=lambda r: r["question"])
    assert [(r["question"], r["answer"]) for r in records] == [(r["question"], r["answer"]) for r in expected]
    assert {r["short_answer"] for r in records} == {"72", "10", "5"}
    assert len(make_source(data_config(name="gsm8k", data_dir=data_dir), "test")) == 1
    assert len(make_source(data_config(name="gsm8k", data_dir=data_dir), "train[:2]")) == 2


def test_cache_gsm8k_files_names_missing_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", GSM8K_RECORDS)
    with pytest.raises(FileNotFoundError, match=r"test\.jsonl is missing.*'train_socratic\.jsonl'"):
        cache_gsm8k_files(str(tmp_path), str(tmp_path / "tfds"))


def test_no_tensorflow_import(tmp_path):
    """Preparing and reading every source, and building batches, never imports TensorFlow.

    In a subprocess, since another test of the session could import it.
    """
    write_gsm8k_files(tmp_path / "jsonl")
    write_jsonl(tmp_path / "g_train.jsonl", GSM8K_RECORDS)
    script = textwrap.dedent(
        f"""
        import sys
        import ml_collections
        from jaxrl_llm.data.arithmetic import ArithmeticConfig, prepare_arithmetic
        from jaxrl_llm.data.pipeline import sft_dataset
        from jaxrl_llm.data.sources import cache_gsm8k_files, make_source
        from jaxrl_llm.data.tokenizer import char_tokenizer

        data_dir = {str(tmp_path / "tfds")!r}
        small = ArithmeticConfig(name="small", num_train=64, num_validation=8, num_test=8)
        source = prepare_arithmetic(small, data_dir).as_data_source("train")
        assert len(source) == 64 and source[0]["answer"].startswith(b"#### ")
        config = ml_collections.ConfigDict(dict(name="arithmetic", builder_config="add2", data_dir=data_dir))
        batch = sft_dataset(make_source(config, "test"), char_tokenizer({ALPHABET!r}), batch_size=4,
                            max_prompt_len=8, max_target_len=5, seed=0)[3]
        assert batch["target_ids"].shape == (4, 5)
        cache_gsm8k_files({str(tmp_path / "jsonl")!r}, data_dir)
        assert len(make_source(ml_collections.ConfigDict(dict(name="gsm8k", data_dir=data_dir)), "train")) == 3
        jsonl = ml_collections.ConfigDict(dict(name="jsonl", path={str(tmp_path / "g_{split}.jsonl")!r}))
        assert len(make_source(jsonl, "train")) == 3
        print("tensorflow" in sys.modules, "apache_beam" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["False", "False"]


# --- grain pipelines -----------------------------------------------------------------------------


def small_source(n=12):
    return [{"question": f"{i}+{2 * i}=", "answer": f"#### {3 * i}"} for i in range(n)]


def test_prompt_dataset_shapes_and_left_padding(arithmetic_dir, tokenizer):
    source = make_source(data_config(data_dir=arithmetic_dir), "train")
    batch = prompt_dataset(source, tokenizer, batch_size=8, max_prompt_len=12, seed=0)[5]
    assert set(batch) == {"prompt_ids", "prompt_mask", "prompts", "answers", "index"}
    assert batch["prompt_ids"].shape == batch["prompt_mask"].shape == (8, 12)
    assert batch["prompt_ids"].dtype == batch["prompt_mask"].dtype == np.int32
    assert batch["prompts"].shape == batch["answers"].shape == batch["index"].shape == (8,)
    for ids, mask, prompt, answer, index in zip(
        *(batch[k] for k in ["prompt_ids", "prompt_mask", "prompts", "answers", "index"]), strict=True
    ):
        n = mask.sum()
        assert (mask[12 - n :] == 1).all() and (mask[: 12 - n] == 0).all()  # left padded
        assert (ids[: 12 - n] == tokenizer.pad_id).all()
        assert tokenizer.decode(ids[12 - n :]) == prompt == source[int(index)]["question"]
        assert answer == source[int(index)]["answer"]


def test_prompt_dataset_is_a_pure_function_of_seed_and_step(tokenizer):
    make = lambda seed: prompt_dataset(small_source(), tokenizer, batch_size=4, max_prompt_len=8, seed=seed)
    first, second, other_seed = make(7), make(7), make(8)
    for step in [0, 1, 5, 1000]:
        for key, value in first[step].items():
            np.testing.assert_array_equal(value, second[step][key])
    assert any(not np.array_equal(first[s]["index"], first[s + 1]["index"]) for s in range(3))
    assert any(not np.array_equal(first[s]["index"], other_seed[s]["index"]) for s in range(3))


def test_prompt_dataset_epochs_are_reshuffled_permutations(tokenizer):
    dataset = prompt_dataset(small_source(12), tokenizer, batch_size=4, max_prompt_len=8, seed=3)
    epochs = [np.concatenate([dataset[3 * e + s]["index"] for s in range(3)]) for e in range(4)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(12))
    assert len({tuple(order.tolist()) for order in epochs}) > 1  # reshuffled per epoch
    assert epochs[0].tolist() != list(range(12))


def test_prompt_dataset_without_shuffle_and_single_epoch(tokenizer):
    dataset = prompt_dataset(
        small_source(10), tokenizer, batch_size=4, max_prompt_len=8, seed=0, shuffle=False, num_epochs=1
    )
    assert len(dataset) == 3
    assert [dataset[s]["index"].tolist() for s in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_prompt_too_long_error(tokenizer):
    source = small_source(12)
    source[7] = {"question": "123456789+987654321=", "answer": "#### 1111111110"}
    dataset = prompt_dataset(source, tokenizer, batch_size=12, max_prompt_len=8, seed=0)
    with pytest.raises(PromptTooLongError) as info:
        dataset[0]
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for part in [
        "record 7",
        "20 tokens",
        "budget of 8",
        "'123456789+987654321='",
        "--config.data.max_prompt_len=20",
    ]:
        assert part in message
    with pytest.raises(PromptTooLongError, match=r"record 7 has 20 tokens.*max_prompt_len=20"):
        check_prompt_lengths(source, tokenizer, 8)
    assert check_prompt_lengths(source, tokenizer, 20) == 20
    long_question = {"question": "1" * 500 + "=", "answer": "#### 1"}
    with pytest.raises(PromptTooLongError, match=r"'1{200}\.\.\.'"):
        check_prompt_lengths([long_question], tokenizer, 8)


def test_sft_targets_end_with_eos_and_decode_to_final_answer(arithmetic_dir, tokenizer):
    source = make_source(data_config(data_dir=arithmetic_dir), "validation")
    batch = sft_dataset(source, tokenizer, batch_size=16, max_prompt_len=8, max_target_len=6, seed=1)[2]
    assert batch["target_ids"].shape == batch["target_mask"].shape == (16, 6)
    assert batch["target_ids"].dtype == batch["target_mask"].dtype == np.int32
    eos = tokenizer.eos_ids[0]
    for ids, mask, answer in zip(batch["target_ids"], batch["target_mask"], batch["answers"], strict=True):
        n = mask.sum()
        assert (mask[:n] == 1).all() and (mask[n:] == 0).all()  # right padded
        assert ids[n - 1] == eos and (ids[n:] == tokenizer.pad_id).all()
        assert tokenizer.decode(ids[: n - 1]) == final_answer(answer)
        assert tokenizer.decode(ids) == final_answer(answer)  # eos/pad are special: skipped
    assert check_target_lengths(source, tokenizer, 6) <= 5


def test_sft_full_answer_target_and_target_too_long(tokenizer):
    source = [{"question": "2+2=", "answer": "2 2\n#### 4"}, {"question": "3+3=", "answer": "#### 6"}]
    batch = sft_dataset(
        source,
        tokenizer,
        batch_size=2,
        max_prompt_len=4,
        max_target_len=12,
        seed=0,
        target="answer",
        shuffle=False,
    )[0]
    assert tokenizer.decode(batch["target_ids"][0]) == "2 2\n#### 4"
    assert batch["target_mask"][0].sum() == len("2 2\n#### 4") + 1
    dataset = sft_dataset(
        source,
        tokenizer,
        batch_size=2,
        max_prompt_len=4,
        max_target_len=8,
        seed=0,
        target="answer",
        shuffle=False,
    )
    with pytest.raises(
        TargetTooLongError,
        match=r"record 0 has 11 tokens, more than the budget of 8.*--config\.sampling\.max_new_tokens=11",
    ):
        dataset[0]
    with pytest.raises(TargetTooLongError, match="max_new_tokens=11"):
        check_target_lengths(source, tokenizer, 8, target="answer")
    with pytest.raises(ValueError, match="target must be 'final_answer' or 'answer'"):
        sft_dataset(
            source, tokenizer, batch_size=2, max_prompt_len=4, max_target_len=8, seed=0, target="reasoning"
        )


def test_preference_pairs(arithmetic_dir, tokenizer):
    source = make_source(data_config(data_dir=arithmetic_dir), "validation")
    dataset = preference_dataset(source, tokenizer, batch_size=32, max_prompt_len=8, max_target_len=6, seed=5)
    again = preference_dataset(source, tokenizer, batch_size=32, max_prompt_len=8, max_target_len=6, seed=5)
    eos = tokenizer.eos_ids[0]
    for step in range(4):
        batch = dataset[step]
        np.testing.assert_array_equal(batch["rejected_ids"], again[step]["rejected_ids"])
        for key in ["chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask"]:
            assert batch[key].shape == (32, 6) and batch[key].dtype == np.int32
        for row in range(32):
            chosen, rejected = batch["chosen"][row], batch["rejected"][row]
            assert chosen == final_answer(batch["answers"][row]) != rejected
            assert int(rejected) >= 0 and abs(len(rejected) - len(chosen)) <= 1
            for ids, mask, text in [
                (batch["chosen_ids"], batch["chosen_mask"], chosen),
                (batch["rejected_ids"], batch["rejected_mask"], rejected),
            ]:
                n = mask[row].sum()
                assert ids[row, n - 1] == eos and tokenizer.decode(ids[row, : n - 1]) == text


@pytest.mark.parametrize("correct", ["0", "7", "10", "579", "1998", "-12", "2.5", "n/a"])
def test_wrong_answer_is_deterministic_and_wrong(correct):
    wrong = [wrong_answer(correct, seed=0, index=i) for i in range(200)]
    assert wrong == [wrong_answer(correct, seed=0, index=i) for i in range(200)]
    assert correct not in wrong
    assert len(set(wrong)) > 1 or correct == "n/a"
    if correct.isdigit():
        assert all(w.isdigit() and (len(w) == 1 or w[0] != "0") for w in wrong)


# --- chat prompts --------------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    """Characters plus a bos-adding post-processor and a chat template."""
    tok = char_tokenizer(ALPHABET + "<>/abcdefghijklmnopqrstuvwxyzW?")
    tok.backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_id)]
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_format_prompt(chat_tokenizer):
    assert format_prompt("1+2=", chat_tokenizer, chat=False) == "1+2="
    assert format_prompt("1+2=", chat_tokenizer, chat=False, instruction="add ") == "add 1+2="
    assert (
        format_prompt("1+2=", chat_tokenizer, chat=True, instruction="add ")
        == "<user>add 1+2=</s><assistant>"
    )


def test_chat_prompts_get_no_special_tokens_plain_ones_do(chat_tokenizer):
    source = small_source(4)
    plain = prompt_dataset(source, chat_tokenizer, batch_size=4, max_prompt_len=12, seed=0, shuffle=False)[0]
    chat = prompt_dataset(
        source,
        chat_tokenizer,
        batch_size=4,
        max_prompt_len=40,
        seed=0,
        shuffle=False,
        chat=True,
        instruction="What is ",
    )[0]
    bos = chat_tokenizer.bos_id
    for ids, mask in zip(plain["prompt_ids"], plain["prompt_mask"], strict=True):
        assert ids[12 - mask.sum()] == bos
    for ids, mask, prompt in zip(chat["prompt_ids"], chat["prompt_mask"], chat["prompts"], strict=True):
        assert bos not in ids[40 - mask.sum() :]
        assert prompt.startswith("<user>What is ") and prompt.endswith("=</s><assistant>")
        assert chat_tokenizer.decode(ids) == prompt
    assert check_prompt_lengths(source, chat_tokenizer, 40, chat=True, instruction="What is ") == len(
        chat["prompts"][-1]
    )
