"""Dataset sources: random-access sequences of question/answer records, chosen by config.

`make_source(config.data, split)` is the one entry point the trainer calls. Every source has
`len()` and `__getitem__` and yields dicts of Python str in the GSM8K schema
{"question": ..., "answer": "<reasoning>\\n#### <final>"} (field names configurable):

  * 'arithmetic': the synthetic TFDS builder `jaxrl_arithmetic` (offline, prepared on first use);
  * 'countdown': the synthetic TFDS builder `jaxrl_countdown` (offline, prepared on first use;
    verified by the `countdown` reward, jaxrl_llm/data/countdown.py);
  * 'gsm8k': TFDS's own `gsm8k` builder (downloads from GitHub on first use; offline, seed its
    download cache with `cache_gsm8k_files`);
  * 'jsonl': local JSON-lines files, one record per line, e.g. GSM8K's own files;
  * 'preference_tfds': local JSON-lines files of preference records (below) converted once into
    the TFDS builder `jaxrl_preference` (jaxrl_llm/data/preference.py), then read by random access;
  * 'code': a synthetic code task in memory (jaxrl_llm/data/code.py; answers are unit tests).

JSON-lines records may instead hold preference data in TRL's formats (`record_format`):
prompt/chosen/rejected pairs (DPO family) or prompt/completion/label unpaired examples (KTO),
texts or chat-message lists, or prompt/completion/labels scored completions (multi-label reward
models); `jaxrl_llm.data.pipeline` reads them.

TFDS data is always written as array_record and read through `as_data_source`, so TensorFlow is
never imported.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence


class DatasetFieldError(ValueError):
    """A record lacks the question or answer field named by the data config (or a preference
    record is malformed: a missing chosen/rejected/completion/label field, a bad label)."""


RECORD_FORMATS = ("question", "pairs", "unpaired", "scored")


def record_format(record: Mapping) -> str:
    """How a record gives its training text (one of RECORD_FORMATS):

      'pairs': {"prompt", "chosen", "rejected"}, TRL's preference format (DPO family); "prompt"
        may be absent when chosen/rejected are chat conversations that hold it;
      'unpaired': {"prompt", "completion", "label"}, TRL's unpaired preference format (KTO);
      'scored': {"prompt", "completion", "labels"}, a completion with K real-valued aspect
        scores (`labels`: a list of K numbers; multi-label reward models);
      'question': anything else, the GSM8K schema {question, answer} (field names from the data
        config); preference pipelines synthesise pairs / labels from the final answer.

    Decided by the presence of "chosen"/"rejected" (pairs), else of "labels" (scored), else of
    "completion" or "prompt" + "label" (unpaired); a dataset's format is that of its first
    record."""
    if "chosen" in record or "rejected" in record:
        return "pairs"
    if "labels" in record:
        return "scored"
    if "completion" in record or ("prompt" in record and "label" in record):
        return "unpaired"
    return "question"


def final_answer(answer_text: str) -> str:
    """The final answer of a GSM8K-style answer: the text after the last '####', stripped, commas
    removed ("...\\n#### 1,234" -> "1234"). Without '####' the whole text is the final answer."""
    return answer_text.rsplit("####", 1)[-1].strip().replace(",", "")


def get_field(record: Mapping, field: str, index: int, config_field: str) -> str:
    """record[field] as str; raises DatasetFieldError naming the fix when the field is missing.

    config_field is the data config field that names `field`, e.g. 'data.question_field'.
    """
    if field not in record:
        raise DatasetFieldError(
            f"record {index} has no field {field!r}; its fields are {sorted(record)}. "
            f"Set --config.{config_field} to the field that holds it."
        )
    value = record[field]
    if value is None:
        raise DatasetFieldError(
            f"record {index} has field {field!r} = null; fix or drop that record (config field {config_field} "
            "names the field read)"
        )
    return str(value)


class TfdsSource(Sequence):
    """A TFDS array_record data source whose records have Text features decoded to str."""

    def __init__(self, data_source):
        self.data_source = data_source

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"record index {index} out of range for {len(self)} records")
        return _decode(self.data_source[index % len(self)])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Many records in one read (faster than one __getitem__ each)."""
        return [_decode(record) for record in self.data_source.__getitems__(list(indices))]


def _decode(record: Mapping) -> dict:
    return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in record.items()}


def tfds_split(builder, split: str) -> TfdsSource:
    """Reads `split` of a prepared array_record TFDS builder (slices like 'train[:90%]' work)."""
    available = sorted(builder.info.splits.keys())
    if split.split("[")[0] not in available:
        raise ValueError(
            f"dataset {builder.info.full_name} has no split {split!r}; its splits are {available}"
        )
    return TfdsSource(builder.as_data_source(split))


def _arithmetic_source(config, split: str) -> TfdsSource:
    from jaxrl_llm.data.arithmetic import prepare_arithmetic

    builder = prepare_arithmetic(
        getattr(config, "builder_config", "") or "add3_fixed", getattr(config, "data_dir", "")
    )
    return tfds_split(builder, split)


def _countdown_source(config, split: str) -> TfdsSource:
    from jaxrl_llm.data.countdown import prepare_countdown

    builder = prepare_countdown(
        getattr(config, "builder_config", "") or "n3", getattr(config, "data_dir", "")
    )
    return tfds_split(builder, split)


def gsm8k_builder(data_dir: str = ""):
    """TFDS's real `gsm8k` builder, prepared as array_record (downloads on first use).

    data_dir: TFDS data directory, '' for TFDS's default. Splits: train, test, train_socratic,
    test_socratic (no validation; use a slice such as 'train[-500:]').
    """
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text.gsm8k  # noqa: F401  (TFDS registers its builders lazily)

    import jaxrl_llm.data.arithmetic  # noqa: F401  (TFDS workaround, see there)

    builder = tfds.builder("gsm8k", data_dir=data_dir or None, file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    return builder


def cache_gsm8k_files(jsonl_dir: str, data_dir: str = "") -> None:
    """Places local copies of GSM8K's JSON-lines files where TFDS's `gsm8k` builder looks for its
    downloads, so that `gsm8k_builder(data_dir)` prepares the real builder without a network.

    jsonl_dir must hold train.jsonl, test.jsonl, train_socratic.jsonl and test_socratic.jsonl (the
    files of github.com/openai/grade-school-math, grade_school_math/data/). TFDS registers no
    checksums for gsm8k, so it accepts any cached file that has an INFO sidecar; its manual_dir
    mechanism needs registered checksums and so cannot be used.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums, resource
    from tensorflow_datasets.text.gsm8k import gsm8k

    import jaxrl_llm.data.arithmetic  # noqa: F401  (TFDS workaround, see there)

    builder = tfds.builder("gsm8k", data_dir=data_dir or None, file_format="array_record")
    download_dir = builder.data_dir_root / "downloads" / "gsm8k"
    download_dir.mkdir(parents=True, exist_ok=True)
    for split, url in gsm8k._URLS.items():
        local = os.path.join(jsonl_dir, f"{split}.jsonl")
        if not os.path.isfile(local):
            raise FileNotFoundError(
                f"{local} is missing: cache_gsm8k_files needs {sorted(f'{s}.jsonl' for s in gsm8k._URLS)} "
                f"in {jsonl_dir} (from {url.rsplit('/', 1)[0]}/)"
            )
        cached = download_dir / resource.get_dl_fname(url)
        shutil.copyfile(local, cached)
        resource.write_info_file(
            url=url,
            path=cached,
            dataset_name="gsm8k",
            original_fname=f"{split}.jsonl",
            url_info=checksums.compute_url_info(cached),
        )


def _gsm8k_source(config, split: str) -> TfdsSource:
    return tfds_split(gsm8k_builder(getattr(config, "data_dir", "")), split)


def read_jsonl(path: str) -> list[dict]:
    """Records of a JSON-lines file (blank lines skipped; numbers become str)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_number} is not valid JSON ({e}): {line[:200]!r}") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number} is not a JSON object: {line[:200]!r}")
            records.append({k: str(v) if isinstance(v, int | float) else v for k, v in record.items()})
    return records


def jsonl_path(config, split: str) -> str:
    """The JSON-lines file of `split`: data.path with '{split}' replaced, checked to exist."""
    pattern = getattr(config, "path", "")
    if "{split}" not in pattern:
        raise ValueError(
            f"data.path={pattern!r} must contain a '{{split}}' placeholder, e.g. "
            "--config.data.path=/data/gsm8k_{split}.jsonl"
        )
    path = pattern.format(split=split)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no file for split {split!r}: {path} does not exist (from --config.data.path={pattern!r}); "
            "write the split there or point data.path at the right files"
        )
    return path


def _jsonl_source(config, split: str) -> list[dict]:
    return read_jsonl(jsonl_path(config, split))


def _preference_source(config, split: str):
    """The 'preference_tfds' source: every split of data.splits (default: `split` alone) from
    data.path's files, prepared as one `jaxrl_preference` dataset in data.data_dir."""
    from jaxrl_llm.data.preference import preference_split, prepare_preference

    base = split.split("[")[0]
    splits = list(dict.fromkeys(s.split("[")[0] for s in getattr(config, "splits", None) or (base,)))
    if base not in splits:
        raise ValueError(
            f"split {split!r} is not one of data.splits={tuple(splits)}: the 'preference_tfds' dataset "
            "holds the splits of data.splits; add it there"
        )
    files = {s: jsonl_path(config, s) for s in splits}
    return preference_split(prepare_preference(files, getattr(config, "data_dir", "")), split)


def _code_source(config, split: str) -> list[dict]:
    from jaxrl_llm.data.code import code_source

    return code_source(config, split)


SOURCES = {
    "arithmetic": _arithmetic_source,
    "code": _code_source,
    "countdown": _countdown_source,
    "gsm8k": _gsm8k_source,
    "jsonl": _jsonl_source,
    "preference_tfds": _preference_source,
}


class Subset:
    """Records [start, stop) of a random-access source, itself random access."""

    def __init__(self, source, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.source[self.start + index]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        return [self[i] for i in indices]


def train_subset(source, data_config):
    """The training records `data.train_offset` .. `data.train_offset + data.train_records`
    (train_records 0: every record from the offset). For data-limited runs (a proxy reward model
    trained on few pairs) and disjoint subsets (an ensemble's members)."""
    offset, count = (
        int(getattr(data_config, "train_offset", 0)),
        int(getattr(data_config, "train_records", 0)),
    )
    if offset < 0 or count < 0 or offset + count > len(source) or offset >= len(source):
        raise ValueError(
            f"data.train_offset={offset}, data.train_records={count}: the training split has "
            f"{len(source)} records; choose offset + records <= {len(source)} (records 0: all from the offset)"
        )
    if offset == 0 and count == 0:
        return source
    return Subset(source, offset, offset + count if count else len(source))


def make_source(data_config, split: str) -> Sequence[dict]:
    """The records of one split, random access: `len(source)`, `source[i]` -> dict of str.

    data_config fields: name ('arithmetic' | 'code' | 'countdown' | 'gsm8k' | 'jsonl' |
    'preference_tfds'), builder_config (arithmetic config, default 'add3_fixed'; countdown config,
    default 'n3'), data_dir (TFDS data dir, '' = default), path (jsonl and preference_tfds:
    contains '{split}'), splits (preference_tfds: the splits prepared together, every one needs
    its file), question_field, answer_field, train_offset / train_records (a slice of the
    training split, `train_subset`).

    'preference_tfds' converts the JSON-lines files of preference records (prompt/chosen/rejected
    pairs or prompt/completion/label examples, texts or chat-message lists) once into the TFDS
    dataset `jaxrl_preference` (array_record in data_dir; prepared anew when a file changes),
    checking every record, and reads it by random access; its records equal the 'jsonl' source's
    for the same files (jaxrl_llm/data/preference.py). The fields
    of the first record are checked here (question and answer; preference records, see
    `record_format`, are checked by the pipeline that reads them).
    """
    name = getattr(data_config, "name", None)
    if name not in SOURCES:
        raise ValueError(
            f"unknown dataset {name!r} in config field data.name; known datasets: {sorted(SOURCES)}"
        )
    source = SOURCES[name](data_config, split)
    if split == "train":
        source = train_subset(source, data_config)
    if len(source) == 0:
        raise ValueError(f"split {split!r} of dataset {name!r} has no records")
    if record_format(source[0]) != "question":
        return source
    get_field(source[0], getattr(data_config, "question_field", "question"), 0, "data.question_field")
    get_field(source[0], getattr(data_config, "answer_field", "answer"), 0, "data.answer_field")
    return source
