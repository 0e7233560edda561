"""The 'preference_tfds' source (jaxrl_llm/data/preference.py): local JSON-lines preference files
(prompt/chosen/rejected pairs as texts and as chat messages, prompt/completion/label unpaired
examples) converted into the TFDS builder `jaxrl_preference` (array_record) and read back:

* every record round-trips exactly and in order (the same records as the 'jsonl' source);
* `pipeline.preference_dataset` / `unpaired_dataset` give identical batches from both sources;
* a dataset is prepared once per content of its files (an edited file is prepared anew);
* malformed files fail at build time with the pipeline's own errors, naming file and record;
* `configs/dpo_arithmetic.py:smoke` trains on it through the config (data.name).
"""

import json
import os

import ml_collections
import numpy as np
import pytest
from run_helpers import load_config

import jaxrl_llm as jrl
from jaxrl_llm.data import pipeline
from jaxrl_llm.data.preference import JaxrlPreference, decode_record, encode_record
from jaxrl_llm.data.sources import DatasetFieldError, make_source, read_jsonl
from jaxrl_llm.data.tokenizer import char_tokenizer
from jaxrl_llm.train.config import ARITHMETIC_ALPHABET

SPLITS = ("train", "validation", "test")
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    """Characters plus a chat template (chat-message prompts need data.chat=True)."""
    tok = char_tokenizer(ARITHMETIC_ALPHABET + "<>/abcdefghijklmnopqrstuvwxyz?")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def text_pairs(n=24):
    """Text pairs with an extra field; n > 1 so TFDS's usual shuffling on write would show."""
    return [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2), "id": i} for i in range(n)]


def chat_pairs(n=12):
    """Chat pairs in TRL's three shapes: explicit prompt, implicit prompt, text prompt + messages."""
    records = []
    for i in range(n):
        q = f"{i}+{i}="
        if i % 3 == 0:
            records.append(
                {"prompt": [user(q)], "chosen": [assistant(str(2 * i))], "rejected": [assistant("9")]}
            )
        elif i % 3 == 1:
            turns = [user("hi"), assistant("yo"), user(q)]
            records.append(
                {"chosen": turns + [assistant(str(2 * i))], "rejected": turns + [assistant(str(2 * i + 1))]}
            )
        else:
            records.append(
                {
                    "prompt": q,
                    "chosen": [user("why?"), assistant(str(2 * i))],
                    "rejected": [user("why?"), assistant("0")],
                }
            )
    return records


def unpaired(n=16):
    """Unpaired examples: labels as JSON booleans and 0/1, one chat prompt, an extra null field."""
    records = [{"prompt": f"{i}+2=", "completion": str(i + 2 + i % 2), "label": i % 2 == 0} for i in range(n)]
    records[1]["label"] = 0
    records[2]["label"] = 1
    records[3].update(prompt=[user("3+2=")], completion=[assistant("6")], score=None)
    return records


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def data_config(tmp_path, name, records, splits=SPLITS):
    """Writes `records` as every split's file <name>_<split>.jsonl (test: reversed, so splits
    differ); returns the 'preference_tfds' data config of them."""
    for split in splits:
        write_jsonl(tmp_path / f"{name}_{split}.jsonl", records[::-1] if split == "test" else records)
    return ml_collections.ConfigDict(
        dict(
            name="preference_tfds",
            path=str(tmp_path / f"{name}_{{split}}.jsonl"),
            data_dir=str(tmp_path / "tfds"),
            splits=splits,
        )
    )


def jsonl_config(config):
    return ml_collections.ConfigDict(dict(name="jsonl", path=config.path))


@pytest.mark.parametrize(
    "records", [text_pairs(), chat_pairs(), unpaired()], ids=["text", "chat", "unpaired"]
)
def test_records_round_trip_exactly(tmp_path, records):
    config = data_config(tmp_path, "prefs", records)
    for split in SPLITS:
        source = make_source(config, split)
        assert type(source).__name__ == "PreferenceSource"
        expected = read_jsonl(config.path.format(split=split))
        assert len(source) == len(expected)
        assert [source[i] for i in range(len(source))] == expected  # same records, same order
        assert source.__getitems__([2, 0, 1]) == [expected[2], expected[0], expected[1]]
        assert make_source(jsonl_config(config), split) == expected
    assert source[-1] == expected[-1]
    assert [r for r in make_source(config, "train[:3]")] == read_jsonl(config.path.format(split="train"))[:3]
    record = {"prompt": [user("a")], "chosen": [assistant("b")], "rejected": [assistant("c")], "score": "0.5"}
    assert decode_record(encode_record(record)) == record


def assert_same_batches(a, b, steps):
    for step in range(steps):
        x, y = a[step], b[step]
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"step {step}, {key}")


@pytest.mark.parametrize(
    "records, chat", [(text_pairs(), False), (chat_pairs(), True)], ids=["text_pairs", "chat_pairs"]
)
def test_preference_batches_match_the_jsonl_source(tmp_path, tokenizer, records, chat):
    config = data_config(tmp_path, "pairs", records)
    kwargs = dict(batch_size=5, max_prompt_len=64, max_target_len=4, seed=3, chat=chat)
    tfds_batches = pipeline.preference_dataset(make_source(config, "train"), tokenizer, **kwargs)
    jsonl_batches = pipeline.preference_dataset(
        make_source(jsonl_config(config), "train"), tokenizer, **kwargs
    )
    assert_same_batches(tfds_batches, jsonl_batches, steps=2 * len(records) // 5 + 1)  # past an epoch
    assert "chosen_ids" in tfds_batches[0]


def test_unpaired_batches_match_the_jsonl_source(tmp_path, tokenizer):
    config = data_config(tmp_path, "kto", unpaired())
    kwargs = dict(batch_size=4, max_prompt_len=32, max_target_len=3, seed=1, chat=True)
    tfds_batches = pipeline.unpaired_dataset(make_source(config, "train"), tokenizer, **kwargs)
    jsonl_batches = pipeline.unpaired_dataset(make_source(jsonl_config(config), "train"), tokenizer, **kwargs)
    assert_same_batches(tfds_batches, jsonl_batches, steps=6)
    labels = np.concatenate([tfds_batches[s]["label"] for s in range(4)])  # one epoch
    assert labels.sum() == 8 and sorted(tfds_batches[0]) == sorted(jsonl_batches[0])


def test_prepared_once_per_content(tmp_path, monkeypatch):
    config = data_config(tmp_path, "prefs", text_pairs(6))
    make_source(config, "train")
    root = tmp_path / "tfds" / "jaxrl_preference"
    (prepared,) = os.listdir(root)
    assert prepared.startswith("prefs-")  # the files' name without the split, then the digest

    def no_rebuild(self, dl_manager):
        raise AssertionError("prepared again")

    with monkeypatch.context() as patch:
        patch.setattr(JaxrlPreference, "_split_generators", no_rebuild)
        assert len(make_source(config, "test")) == 6  # read from the prepared dataset
    write_jsonl(tmp_path / "prefs_train.jsonl", text_pairs(7))  # an edited file: a new dataset
    assert len(make_source(config, "train")) == 7
    assert len(os.listdir(root)) == 2


@pytest.mark.parametrize(
    "records, message",
    [
        (
            text_pairs(3) + [{"prompt": "1+1=", "chosen": "2"}],
            r"bad_train\.jsonl: record 3 has no field 'rejected'.*data\.path",
        ),
        (
            [
                {"prompt": "1+1=", "completion": "2", "label": True},
                {"prompt": "2+2=", "completion": "4", "label": "yes"},
            ],
            r"bad_train\.jsonl: record 1 has label='yes'.*boolean",
        ),
        (
            [{"question": "1+1=", "answer": "#### 2"}],
            r"bad_train\.jsonl: record 0 has fields \['answer', 'question'\], not a preference record.*data\.name=jsonl",
        ),
    ],
    ids=["missing_field", "bad_label", "question_records"],
)
def test_malformed_file_fails_at_build_time(tmp_path, records, message):
    config = data_config(tmp_path, "bad", text_pairs(3), splits=("validation",))
    write_jsonl(tmp_path / "bad_train.jsonl", records)
    config.splits = ("validation", "train")
    with pytest.raises(DatasetFieldError, match=message):
        make_source(config, "validation")  # the whole dataset is checked before anything is written
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))  # nothing prepared
    with pytest.raises(ValueError, match=r"split 'extra' is not one of data\.splits"):
        make_source(config, "extra")


def test_dpo_trains_on_it_through_the_config(tmp_path):
    config = load_config("dpo_arithmetic")
    config.data.update(data_config(tmp_path, "dpo", text_pairs(32)))
    config.sft.steps = 0  # SFT needs question/answer records
    config.train.update(steps=2, checkpoint_every=2)
    config.eval.update(num_prompts=8, batch_size=8)
    workdir = str(tmp_path / "run")
    summary = jrl.Trainer(config, workdir).fit()
    rows = [r for r in jrl.read_metrics(workdir, phase="main") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert "preference_accuracy" in summary["main_after"]
    tfds_dirs = os.listdir(tmp_path / "tfds")
    assert "jaxrl_preference" in tfds_dirs and "jaxrl_arithmetic" not in tfds_dirs
