"""Preference data from local JSON-lines files as a TFDS dataset, `jaxrl_preference`, written as
array_record: the 'preference_tfds' source (`sources.make_source`).

The files hold records in TRL's formats (`sources.record_format`), one split per file of a
pattern with a '{split}' placeholder (config field data.path, as for the 'jsonl' source):

  * pairs (DPO family): {"prompt", "chosen", "rejected"}, texts or chat-message lists ("prompt"
    may be absent when chosen and rejected are conversations that hold it);
  * unpaired (KTO): {"prompt", "completion", "label"}, the label a boolean or 0/1.

Feature schema, the same for both formats: one Text feature per field of `FIELDS`, holding the
JSON encoding of the record's value ('' when the record lacks the field), and `extra`, a JSON
object of the record's other fields (ids, scores, ...). Texts, chat-message lists and labels
thus come back exactly: `PreferenceSource` decodes every record to what `sources.read_jsonl`
gives for its line, so the pipeline (`pipeline.preference_dataset`, `unpaired_dataset`) sees
the same records, in the same order, as from the JSON-lines files (TFDS's shuffling on write is
disabled: record i of a split is record i of its file, as error messages number them).

Preparing reads each file once, checks every record with the pipeline's own checks
(`pipeline.preference_parts`: the same DatasetFieldError messages, prefixed with the file) and
writes array_record; later reads are random access through `as_data_source`, without
TensorFlow. The builder config is named after the files and a digest of their bytes: the same
files reuse the prepared dataset, edited files are prepared anew (the old version stays in the
TFDS data dir until deleted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence

import tensorflow_datasets as tfds

import jaxrl_llm.data.arithmetic  # noqa: F401  (TFDS importlib_resources workaround, see there)
from jaxrl_llm.data.pipeline import preference_parts
from jaxrl_llm.data.sources import DatasetFieldError, TfdsSource, read_jsonl, record_format, tfds_split

FIELDS = ("prompt", "chosen", "rejected", "completion", "label")
EXTRA = "extra"  # a JSON object of the fields not in FIELDS


def encode_record(record: Mapping) -> dict[str, str]:
    """A JSON-lines record as the builder's features: each field of FIELDS JSON-encoded ('' when
    absent), the other fields as one JSON object under EXTRA."""
    features = {f: json.dumps(record[f], ensure_ascii=False) if f in record else "" for f in FIELDS}
    features[EXTRA] = json.dumps({k: v for k, v in record.items() if k not in FIELDS}, ensure_ascii=False)
    return features


def decode_record(features: Mapping[str, str]) -> dict:
    """The record that `encode_record` encoded: `decode_record(encode_record(r)) == r`."""
    record = {f: json.loads(features[f]) for f in FIELDS if features[f]}
    record.update(json.loads(features[EXTRA]))
    return record


def check_records(records: Sequence[dict], path: str) -> str:
    """The record format ('pairs' or 'unpaired') of a file's records, every record checked with
    the pipeline's checks (`pipeline.preference_parts`, a DatasetFieldError naming the file and
    the record); question/answer records and empty files are refused."""
    if not records:
        raise DatasetFieldError(f"{path} holds no records; write the split's records there")
    fmt = record_format(records[0])
    if fmt == "question":
        raise DatasetFieldError(
            f"{path}: record 0 has fields {sorted(records[0])}, not a preference record: the "
            "'preference_tfds' dataset holds prompt/chosen/rejected pairs or prompt/completion/label "
            "examples (TRL's formats); read question/answer records with --config.data.name=jsonl"
        )
    for index, record in enumerate(records):
        try:
            preference_parts(record, fmt, index)
        except DatasetFieldError as error:
            raise DatasetFieldError(f"{path}: {error}") from error
    return fmt


@dataclasses.dataclass
class PreferenceConfig(tfds.core.BuilderConfig):
    """The JSON-lines files of one dataset: ((split, path), ...). Made by `preference_config`."""

    files: tuple[tuple[str, str], ...] = ()


class JaxrlPreference(tfds.core.GeneratorBasedBuilder):
    """TFDS builder `jaxrl_preference`: local preference JSON-lines files (module docstring). It
    has no predefined configs: each set of files is a `PreferenceConfig` (`preference_config`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Preference records in TRL's formats (prompt/chosen/rejected pairs or "
            "prompt/completion/label examples) from local JSON-lines files; each field holds the "
            "JSON encoding of the record's value ('' when absent), 'extra' the other fields.",
            features=tfds.features.FeaturesDict({f: tfds.features.Text() for f in FIELDS + (EXTRA,)}),
            disable_shuffling=True,  # record i of a split is the file's record i
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        splits = {}
        for split, path in self.builder_config.files:
            records = read_jsonl(path)
            check_records(records, path)  # every file checked before anything is written
            splits[split] = self._generate_examples(records)
        return splits

    def _generate_examples(self, records: list[dict]):
        for index, record in enumerate(records):
            yield index, encode_record(record)


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def preference_config(files: Mapping[str, str]) -> PreferenceConfig:
    """The builder config of {split: JSON-lines path}: named `<stem>-<digest>`, the stem the
    first file's name without its split name and extension, the digest that of the split names
    and the files' bytes (so edited files make a new config)."""
    for split in files:
        if not re.fullmatch(r"[\w-]+", split):
            raise ValueError(
                f"split name {split!r} (config field data.splits) must be letters, digits, '_' or '-'"
            )
    digest = hashlib.sha256()
    for split, path in sorted(files.items()):
        digest.update(f"{split}\0{_file_digest(path)}\0".encode())
    split, path = next(iter(files.items()))
    name = os.path.splitext(os.path.basename(path))[0].replace(split, "")
    stem = re.sub(r"\W+", "_", name).strip("_") or "data"
    return PreferenceConfig(
        name=f"{stem}-{digest.hexdigest()[:16]}",
        description="JSON-lines files: " + ", ".join(f"{s}={p}" for s, p in files.items()),
        files=tuple(files.items()),
    )


def prepare_preference(files: Mapping[str, str], data_dir: str | None = None) -> JaxrlPreference:
    """Builds `jaxrl_preference/<config>` of {split: JSON-lines path} as array_record (once per
    content of the files; later calls reuse it). Every record is checked first (`check_records`).

    data_dir: TFDS data directory; None or '' for TFDS's default (~/tensorflow_datasets).
    Returns the prepared builder: read a split with `preference_split(builder, split)`.
    """
    config = preference_config(files)
    builder = JaxrlPreference(config=config, data_dir=data_dir or None, file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    return builder


class PreferenceSource(Sequence):
    """A split of a prepared `jaxrl_preference` dataset, random access, whose records are
    decoded back to the JSON-lines records (`decode_record`)."""

    def __init__(self, source: TfdsSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return decode_record(self.source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """Many records in one read (faster than one __getitem__ each)."""
        return [decode_record(r) for r in self.source.__getitems__(indices)]


def preference_split(builder: JaxrlPreference, split: str) -> PreferenceSource:
    """The decoded records of `split` of a prepared builder (slices like 'train[:90%]' work)."""
    return PreferenceSource(tfds_split(builder, split))
