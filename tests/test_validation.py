"""Fail-loud validation: every config and data error is found before the first file is written
(or the first compile), and the message names the field (or record) and the fix."""

import json
import os

import pytest
from test_trainer import smoke

from jaxrl_llm.data.pipeline import UnencodableTextError
from jaxrl_llm.data.sources import DatasetFieldError
from jaxrl_llm.train.trainer import Trainer
from jaxrl_llm.train.validation import ConfigError


def refused(config, tmp_path, error, match):
    """Trainer(config) raises `error` matching `match` and leaves no workdir behind."""
    workdir = tmp_path / "run"
    with pytest.raises(error, match=match):
        Trainer(config, str(workdir))
    assert not workdir.exists(), sorted(os.listdir(workdir))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"sampling__temperature": 0.0}, r"sampling\.temperature=0 \(greedy\) cannot drive an RL phase"),
        ({"optimizer__learning_rate": -1e-3}, r"optimizer\.learning_rate=-0\.001 must be a finite number > 0"),
        ({"optimizer__learning_rate": float("nan")}, r"optimizer\.learning_rate=nan must be a finite"),
        ({"sft__optimizer__learning_rate": 0.0}, r"sft\.optimizer\.learning_rate=0\.0 must be"),
        ({"sft__batch_size": 0}, r"sft\.batch_size=0 must be an integer > 0"),
        ({"eval__batch_size": 0}, r"eval\.batch_size=0 must be an integer > 0"),
        ({"train__batch_size": -2}, r"train\.batch_size=-2 must be an integer > 0"),
        ({"sampling__max_new_tokens": 60}, r"max_prompt_len=12 \+ sampling\.max_new_tokens=60 = 72 .* max_position_embeddings=64"),
        ({"sampling__top_p": 0.0}, r"sampling\.top_p=0\.0 must be in \(0, 1\]"),
    ],
)  # fmt: skip
def test_bad_config_is_refused_before_any_file(overrides, match, tfds_dir, tmp_path):
    refused(smoke("grpo_arithmetic", tfds_dir, **overrides), tmp_path, ConfigError, match)


def test_bad_reward_weight_and_unknown_source_are_refused(tfds_dir, tmp_path):
    config = smoke("grpo_arithmetic", tfds_dir)
    config.rewards = {"exact_match": float("nan")}
    refused(config, tmp_path, ConfigError, r"rewards\.exact_match=nan must be a finite number")
    config.rewards = {"exact_mtach": 1.0}
    refused(
        config,
        tmp_path,
        ValueError,
        r"unknown reward source 'exact_mtach' in config field rewards.*exact_match",
    )


def jsonl_config(tfds_dir, tmp_path, records):
    for split in ("train", "validation", "test"):
        with open(tmp_path / f"data_{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    config = smoke("grpo_arithmetic", tfds_dir)
    config.data.name, config.data.path = "jsonl", str(tmp_path / "data_{split}.jsonl")
    return config


def test_unencodable_character_names_the_record_and_the_character(tfds_dir, tmp_path):
    records = [{"question": "1+2=", "answer": "#### 3"}] * 5 + [{"question": "1+x=", "answer": "#### 3"}]
    config = jsonl_config(tfds_dir, tmp_path, records)
    refused(config, tmp_path, UnencodableTextError, r"record 5 holds the character 'x'.*tokenizer\.alphabet")


def test_null_field_names_the_record_and_the_field(tfds_dir, tmp_path):
    records = [{"question": "1+2=", "answer": "#### 3"}] * 3 + [{"question": None, "answer": "#### 3"}]
    refused(
        jsonl_config(tfds_dir, tmp_path, records),
        tmp_path,
        DatasetFieldError,
        r"record 3 has field 'question' = null",
    )
    records = [{"question": "1+2=", "answer": None}]
    refused(
        jsonl_config(tfds_dir, tmp_path, records),
        tmp_path,
        DatasetFieldError,
        r"record 0 has field 'answer' = null",
    )


def test_unwritable_workdir_names_the_path(tfds_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=rf"workdir '{blocker}/run' is not writable"):
        Trainer(smoke("grpo_arithmetic", tfds_dir), str(blocker / "run"))


def test_refused_config_change_leaves_the_tokenizer_alone(tfds_dir, tmp_path):
    workdir = str(tmp_path / "run")
    Trainer(smoke("grpo_arithmetic", tfds_dir), workdir)
    tokenizer = os.path.join(workdir, "tokenizer", "tokenizer.json")
    before = open(tokenizer).read()
    other = smoke("grpo_arithmetic", tfds_dir)
    other.tokenizer.alphabet = other.tokenizer.alphabet + "xyz"
    with pytest.raises(ValueError, match="different config"):
        Trainer(other, workdir)
    assert open(tokenizer).read() == before
