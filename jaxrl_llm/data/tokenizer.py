"""Hugging Face tokenizers, loaded with the `tokenizers` library alone (no `transformers`).

A checkpoint directory holds `tokenizer.json` (the fast-tokenizer pipeline) and optionally
`tokenizer_config.json` (special-token strings, chat template), `chat_template.jinja`,
`special_tokens_map.json` and `generation_config.json` (extra end-of-sequence ids, pad id).
`Tokenizer` wraps the pipeline with the ids RL needs (bos, every eos, pad), encodes batches
into padded numpy arrays [B, S], and renders chat templates exactly as `transformers` does.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from collections.abc import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the special ids and chat template of a checkpoint.

    Attributes:
      backend: the wrapped `tokenizers.Tokenizer`.
      bos_id: beginning-of-sequence id, or None (Qwen has none).
      eos_ids: every id that ends a generation: the tokenizer's eos token first, then the ids of
        `generation_config.json` (e.g. Llama 3 instruct's <|eot_id|> and <|end_of_text|>).
      pad_id: padding id, or None. `load_tokenizer` falls back to eos_ids[0] when the checkpoint
        names no pad token; padded positions are masked, so the value only shows when decoding.
      chat_template: jinja2 source of the chat template, or None.
      vocab_size: number of ids, added tokens included (the model's embedding may have more rows).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        bos_id: int | None = None,
        eos_ids: Sequence[int] = (),
        pad_id: int | None = None,
        chat_template: str | None = None,
    ):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.pad_id = pad_id
        self.chat_template = chat_template
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids [S] of `text`; add_special_tokens runs the post-processor (e.g. Llama's bos)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ids [S] (list or array). Nothing is cut at eos: strip generations beforehand."""
        return self.backend.decode(_id_list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        """Texts of ids [B, S] (2-D array, or rows of any lengths), as `decode` on each row."""
        rows = [_id_list(row) for row in ids]
        return self.backend.decode_batch(rows, skip_special_tokens=skip_special_tokens)

    def encode_batch(
        self,
        texts: Sequence[str],
        max_length: int,
        padding_side: str = "left",
        add_special_tokens: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encodes `texts` and pads them with pad_id to `max_length` columns.

        Returns (ids, mask), both np.int32 [B, max_length], mask 1 on real tokens. Left padding
        (the default) ends every prompt in the last column, as batched generation expects; right
        padding starts every text in column 0. Nothing is ever truncated: a text longer than
        max_length raises ValueError.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if self.pad_id is None:
            raise ValueError("this tokenizer has neither a pad nor an eos token: set tokenizer.pad_id")
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        ids = np.full((len(encodings), max_length), self.pad_id, np.int32)
        mask = np.zeros((len(encodings), max_length), np.int32)
        for i, encoding in enumerate(encodings):
            n = len(encoding.ids)
            if n > max_length:
                raise ValueError(
                    f"text {i} of the batch has {n} tokens, more than max_length={max_length}; "
                    f"raise the maximum length to at least {n} or shorten the prompt (it is never truncated)"
                )
            columns = slice(max_length - n, max_length) if padding_side == "left" else slice(0, n)
            ids[i, columns] = encoding.ids
            mask[i, columns] = 1
        return ids, mask

    def apply_chat_template(
        self, messages: Sequence[dict], add_generation_prompt: bool = True, tokenize: bool = False, **kwargs
    ):
        """Renders a conversation with the chat template, exactly as `transformers` does.

        messages: [{"role": ..., "content": ...}, ...]. add_generation_prompt appends the opening
        of an assistant turn. kwargs become template variables (e.g. tools=[...],
        enable_thinking=False). Returns the text, or with tokenize=True its ids [S], encoded
        without special tokens since the template writes them itself.
        """
        if self.chat_template is None:
            raise ValueError(
                "this tokenizer has no chat template (none in tokenizer_config.json or "
                "chat_template.jinja): format prompts as plain text, or use an instruct model's tokenizer"
            )
        special = {"bos_token": self.bos_id, "eos_token": self.eos_ids[0] if self.eos_ids else None}
        variables = {
            "messages": messages,
            "tools": None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
            **{name: self.backend.id_to_token(i) for name, i in special.items() if i is not None},
            **kwargs,
        }
        text = _compile_chat_template(self.chat_template).render(**variables)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def save(self, directory: str) -> None:
        """Writes tokenizer.json and tokenizer_config.json into `directory` (created if missing).

        Both `load_tokenizer` and `transformers.AutoTokenizer.from_pretrained` read the result.
        Only eos_ids[0] is saved (as eos_token): further eos ids belong to generation_config.json.
        """
        os.makedirs(directory, exist_ok=True)
        self.backend.save(os.path.join(directory, "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast"}
        eos_id = self.eos_ids[0] if self.eos_ids else None
        for name, i in (("bos_token", self.bos_id), ("eos_token", eos_id), ("pad_token", self.pad_id)):
            if i is not None:
                config[name] = self.backend.id_to_token(i)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)


def load_tokenizer(path) -> Tokenizer:
    """Loads the tokenizer of a local Hugging Face checkpoint.

    path: a directory holding tokenizer.json, or the path of a tokenizer.json; the optional files
    below are read from the same directory:
      * tokenizer_config.json: bos_token / eos_token / pad_token (strings or {"content": ...}),
        chat_template (a string, or a list of {"name", "template"} of which "default" is taken);
      * special_tokens_map.json: special tokens that tokenizer_config.json leaves unset;
      * chat_template.jinja: the chat template, preferred over tokenizer_config.json's (as in
        `transformers`);
      * generation_config.json: eos_token_id (int or list) appended to eos_ids; pad_token_id
        used when no pad_token is set.
    With no pad token anywhere, pad_id falls back to eos_ids[0].

    Raises FileNotFoundError without tokenizer.json, and ValueError when a special token is not
    in the vocabulary.
    """
    path = os.fspath(path)
    tokenizer_file = path if os.path.isfile(path) else os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tokenizer_file):
        raise FileNotFoundError(
            f"no tokenizer at {tokenizer_file}: load_tokenizer expects a Hugging Face fast-tokenizer file "
            "'tokenizer.json' in the checkpoint directory (or the path of that file). A checkpoint with "
            "only a slow tokenizer (tokenizer.model, vocab.json + merges.txt) can be converted once with "
            "transformers.AutoTokenizer.from_pretrained(d).save_pretrained(d)."
        )
    directory = os.path.dirname(tokenizer_file)
    backend = tokenizers.Tokenizer.from_file(tokenizer_file)
    config = _read_json(directory, "tokenizer_config.json")
    special_map = _read_json(directory, "special_tokens_map.json")
    generation = _read_json(directory, "generation_config.json")

    def token_id(field: str) -> int | None:
        for filename, source in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
            token = source.get(field)
            if isinstance(token, dict):
                token = token["content"]
            if token is not None:
                i = backend.token_to_id(token)
                if i is None:
                    raise ValueError(
                        f"{field} {token!r} of {os.path.join(directory, filename)} is not in the "
                        f"vocabulary of {tokenizer_file}"
                    )
                return i
        return None

    eos_id = token_id("eos_token")
    eos_ids = [] if eos_id is None else [eos_id]
    generation_eos = generation.get("eos_token_id")
    for i in [generation_eos] if isinstance(generation_eos, int) else generation_eos or []:
        if i not in eos_ids:
            eos_ids.append(i)
    pad_id = token_id("pad_token")
    if pad_id is None:
        pad_id = generation.get("pad_token_id")
    if pad_id is None and eos_ids:
        pad_id = eos_ids[0]

    template_file = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(template_file):
        with open(template_file, encoding="utf-8") as f:
            chat_template = f.read()
    else:
        chat_template = config.get("chat_template")
        if isinstance(chat_template, list):
            chat_template = {t["name"]: t["template"] for t in chat_template}.get("default")
    return Tokenizer(backend, token_id("bos_token"), eos_ids, pad_id, chat_template)


def char_tokenizer(alphabet: str, special_tokens: Sequence[str] = ("<pad>", "<bos>", "<eos>")) -> Tokenizer:
    """A character-level tokenizer: one id per character, for tests and toy tasks.

    Ids: the three special_tokens (pad, bos, eos) are 0, 1, 2, then the distinct characters of
    `alphabet` in order. encode adds no special tokens, and decode(encode(s)) == s for every s
    over the alphabet, whitespace included. Encoding a character outside the alphabet raises.
    """
    pad, bos, eos = special_tokens
    vocab = {token: i for i, token in enumerate(dict.fromkeys([pad, bos, eos, *alphabet]))}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab))
    # [\s\S] rather than '.', which does not match newlines.
    backend.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([pad, bos, eos])
    return Tokenizer(backend, bos_id=vocab[bos], eos_ids=(vocab[eos],), pad_id=vocab[pad])


def _read_json(directory: str, filename: str) -> dict:
    """Contents of directory/filename, or {} when the file does not exist."""
    file = os.path.join(directory, filename)
    if not os.path.isfile(file):
        return {}
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def _id_list(ids) -> list[int]:
    """A 1-D id sequence (list, tuple or array) as a list of Python ints."""
    array = np.asarray(ids, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {array.shape}")
    return array.tolist()


@functools.lru_cache(maxsize=16)
def _compile_chat_template(source: str):
    """Compiles a chat template in the sandboxed jinja2 environment `transformers` uses."""
    import jinja2
    import jinja2.ext
    import jinja2.sandbox

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda format: datetime.datetime.now().strftime(format)
    return env.from_string(source)
