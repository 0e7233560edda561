"""Tests for jaxrl_llm.data.tokenizer, checked against transformers on an offline-trained BPE tokenizer."""

import json

import jinja2
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from jaxrl_llm.data.tokenizer import char_tokenizer, load_tokenizer

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>"]

# ChatML in the style of Qwen: indented blocks (trim_blocks / lstrip_blocks matter), tojson, raise_exception.
CHAT_TEMPLATE = """{% if tools %}
<|im_start|>system
Tools: {{ tools | tojson }}<|im_end|>
{% elif messages[0]['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant.<|im_end|>
{% endif %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] | trim }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 12 + 30? The answer is 42.",
    "Reinforcement learning from human feedback trains a reward model.",
    "Policy gradients push up the log-probability of good samples.",
    "Héllo wörld, ça va? Ünïcödé text gets byte-level pieces.",
    "def f(x):\n    return x * 2\n",
    "  leading spaces and trailing spaces  ",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
    "You are a helpful assistant.",
    "Please solve the following math problem step by step.",
] * 4


def _write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A checkpoint-like directory: trained byte-level BPE, ChatML template, multi-eos generation config."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(SENTENCES, trainer)
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    directory = tmp_path_factory.mktemp("bpe")
    backend.save(str(directory / "tokenizer.json"))
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|begin_of_text|>",
            "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": False, "rstrip": False},
            "pad_token": None,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    ids = {t: backend.token_to_id(t) for t in SPECIAL_TOKENS}
    _write_json(
        directory / "generation_config.json",
        {"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"], ids["<|eot_id|>"]]},
    )
    return directory


def test_special_ids_and_generation_config(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    vocab = tok.backend.get_vocab()
    assert tok.bos_id == vocab["<|begin_of_text|>"]
    assert tok.eos_ids == (vocab["<|im_end|>"], vocab["<|endoftext|>"], vocab["<|eot_id|>"])
    assert tok.pad_id == vocab["<|im_end|>"]  # no pad token anywhere: falls back to eos
    assert tok.vocab_size == len(vocab) == 400
    assert tok.chat_template == CHAT_TEMPLATE
    assert load_tokenizer(bpe_dir / "tokenizer.json").eos_ids == tok.eos_ids  # path of the file itself


def test_encode_decode_match_transformers(bpe_dir):
    import transformers

    tok = load_tokenizer(bpe_dir)
    hf = transformers.AutoTokenizer.from_pretrained(str(bpe_dir))
    texts = [
        "The quick brown fox.",
        "What is 7 + 35?",
        "  spaces   everywhere \n\n and newlines\t",
        "Ünïcödé ∑ 🙂 unseen characters",
        "<|im_start|>user\nhi<|im_end|>",
        "",
    ]
    for text in texts:
        for add_special_tokens in (True, False):
            ids = tok.encode(text, add_special_tokens=add_special_tokens)
            assert ids == hf.encode(text, add_special_tokens=add_special_tokens), (text, add_special_tokens)
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id
        assert (
            tok.decode(np.array(ids))
            == hf.decode(ids, skip_special_tokens=True)
            == text.replace("<|im_start|>", "").replace("<|im_end|>", "")
        )
        assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)


def test_chat_template_matches_transformers(bpe_dir):
    import transformers

    tok = load_tokenizer(bpe_dir)
    hf = transformers.AutoTokenizer.from_pretrained(str(bpe_dir))
    conversations = [
        [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": " Hi! "},
            {"role": "assistant", "content": "Hello."},
        ],
    ]
    for messages in conversations:
        for add_generation_prompt in (True, False):
            text = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
            expected = hf.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
            assert text == expected
            ids = tok.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=True
            )
            assert ids == hf.encode(expected, add_special_tokens=False)
    assert tok.apply_chat_template(conversations[0]).endswith("<|im_end|>\n<|im_start|>assistant\n")
    # kwargs become template variables; tojson keeps non-ASCII characters as HF's filter does.
    tools = [{"name": "café", "parameters": {"x": "int"}}]
    text = tok.apply_chat_template(conversations[0], tools=tools)
    assert text == hf.apply_chat_template(
        conversations[0], tools=tools, add_generation_prompt=True, tokenize=False
    )
    assert '"café"' in text
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role robot"):
        tok.apply_chat_template([{"role": "robot", "content": "beep"}])


def test_chat_template_sources(bpe_dir, tmp_path):
    backend = tokenizers.Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    backend.save(str(tmp_path / "tokenizer.json"))
    assert load_tokenizer(tmp_path).chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        load_tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}])
    templates = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    _write_json(tmp_path / "tokenizer_config.json", {"chat_template": templates})
    assert load_tokenizer(tmp_path).chat_template == "D"
    (tmp_path / "chat_template.jinja").write_text("J{{ bos_token }}", encoding="utf-8")
    assert load_tokenizer(tmp_path).chat_template == "J{{ bos_token }}"
    assert load_tokenizer(tmp_path).apply_chat_template([]) == "J"  # no bos token: undefined renders empty


def test_special_tokens_map_and_pad(bpe_dir, tmp_path):
    backend = tokenizers.Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    backend.save(str(tmp_path / "tokenizer.json"))
    _write_json(tmp_path / "tokenizer_config.json", {"eos_token": "<|endoftext|>", "bos_token": None})
    _write_json(
        tmp_path / "special_tokens_map.json",
        {
            "eos_token": "<|im_end|>",
            "pad_token": {"content": "<|im_start|>"},
            "bos_token": "<|begin_of_text|>",
        },
    )
    _write_json(tmp_path / "generation_config.json", {"eos_token_id": backend.token_to_id("<|eot_id|>")})
    tok = load_tokenizer(tmp_path)
    assert tok.eos_ids == (backend.token_to_id("<|endoftext|>"), backend.token_to_id("<|eot_id|>"))
    assert tok.pad_id == backend.token_to_id("<|im_start|>")
    assert tok.bos_id == backend.token_to_id("<|begin_of_text|>")
    (tmp_path / "special_tokens_map.json").unlink()
    _write_json(tmp_path / "generation_config.json", {"pad_token_id": 7})
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_ids, tok.pad_id) == (None, (backend.token_to_id("<|endoftext|>"),), 7)


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json") as info:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere" / "tokenizer.json")


def test_bad_special_token(bpe_dir, tmp_path):
    backend = tokenizers.Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    backend.save(str(tmp_path / "tokenizer.json"))
    _write_json(
        tmp_path / "tokenizer_config.json", {"eos_token": "<|im_end|>", "pad_token": "<|no_such_pad|>"}
    )
    with pytest.raises(ValueError, match=r"pad_token '<\|no_such_pad\|>' .*tokenizer_config.json"):
        load_tokenizer(tmp_path)


def test_encode_batch_padding(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    texts = ["What is 2 + 2?", "Hi", "The quick brown fox jumps over the lazy dog."]
    encoded = [tok.encode(t) for t in texts]
    width = max(len(e) for e in encoded) + 2
    ids, mask = tok.encode_batch(texts, max_length=width)
    assert ids.shape == mask.shape == (3, width) and ids.dtype == mask.dtype == np.int32
    for i, e in enumerate(encoded):
        pad = width - len(e)
        np.testing.assert_array_equal(ids[i], [tok.pad_id] * pad + e)
        np.testing.assert_array_equal(mask[i], [0] * pad + [1] * len(e))
    ids, mask = tok.encode_batch(texts, max_length=width, padding_side="right", add_special_tokens=False)
    for i, text in enumerate(texts):
        e = tok.encode(text, add_special_tokens=False)
        np.testing.assert_array_equal(ids[i], e + [tok.pad_id] * (width - len(e)))
        np.testing.assert_array_equal(mask[i], [1] * len(e) + [0] * (width - len(e)))
    assert tok.batch_decode(ids) == texts
    assert tok.batch_decode([e[:2] for e in encoded], skip_special_tokens=False) == [
        tok.decode(e[:2], skip_special_tokens=False) for e in encoded
    ]
    assert tok.encode_batch([], max_length=4)[0].shape == (0, 4)
    with pytest.raises(ValueError, match="padding_side"):
        tok.encode_batch(texts, max_length=width, padding_side="middle")


def test_encode_batch_too_long(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    long_text = "The quick brown fox jumps over the lazy dog. " * 3
    n = len(tok.encode(long_text))
    with pytest.raises(ValueError) as info:
        tok.encode_batch(["short", long_text], max_length=n - 1)
    message = str(info.value)
    assert "text 1" in message and f"{n} tokens" in message and f"max_length={n - 1}" in message
    assert "shorten the prompt" in message
    tok.encode_batch(["short", long_text], max_length=n)  # exactly fits


def test_char_tokenizer_round_trip():
    tok = char_tokenizer("0123456789+= abc\n")
    assert (tok.pad_id, tok.bos_id, tok.eos_ids, tok.vocab_size) == (0, 1, (2,), 3 + 17)
    for text in ["12+30=42", " a  b ", "\n\nabc\n", "", "  "]:
        ids = tok.encode(text)
        assert len(ids) == len(text)
        assert tok.decode(ids) == text
    assert tok.encode("a1") == [3 + 13, 3 + 1]
    assert tok.encode("<bos>1 2<eos>") == [1, 4, 15, 5, 2]
    assert tok.decode([1, 4, 15, 5, 2, 0, 0]) == "1 2"
    assert tok.decode([1, 4, 2], skip_special_tokens=False) == "<bos>1<eos>"
    ids, mask = tok.encode_batch(["1+1", "22"], max_length=4)
    np.testing.assert_array_equal(ids, [[0, 4, 13, 4], [0, 0, 5, 5]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 1, 1]])
    assert char_tokenizer("aab").vocab_size == 5  # repeated characters get one id
    with pytest.raises(Exception, match="UNK"):  # tokenizers raises a bare Exception
        tok.encode("xyz")


def test_char_tokenizer_save_load_and_transformers(tmp_path):
    import transformers

    tok = char_tokenizer("0123456789+-*= abcxyz\n")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tok.save(str(tmp_path))
    loaded = load_tokenizer(tmp_path)
    assert (loaded.bos_id, loaded.eos_ids, loaded.pad_id, loaded.vocab_size, loaded.chat_template) == (
        tok.bos_id,
        tok.eos_ids,
        tok.pad_id,
        tok.vocab_size,
        tok.chat_template,
    )
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    for text in ["12*3=36", " x y  z ", "a\nb\n\n", "<bos>1+1<eos>"]:
        ids = tok.encode(text)
        assert loaded.encode(text) == hf.encode(text) == auto.encode(text) == ids
        assert hf.decode(ids, skip_special_tokens=True) == loaded.decode(ids) == tok.decode(ids)
    messages = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]
    assert (
        loaded.apply_chat_template(messages) == hf.apply_chat_template(messages, tokenize=False) == "1+1\n2\n"
    )
