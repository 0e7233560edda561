"""Rewards for model-written code, run in the sandbox (jaxrl_llm.rewards.sandbox).

  * `code_tests`: the fraction of unit tests that pass. The answer field holds the tests: a JSON
    (or Python-literal) list of test statements such as MBPP's `test_list`
    ('["assert f(1) == 4", ...]'), a dict with `tests`/`test_list` and optional `test_imports`
    and `test_setup_code`/`setup` (prepended to the code), or plain text with one `assert` per
    line. Each test runs after the completion's code in the same interpreter; passing means
    raising nothing. Exit codes and printed text never count as a pass (see the sandbox).
  * `code_tests_all`: 1.0 iff every test passes (the correctness check for eval.reward, whose
    accuracy counts values > 0.5).
  * `code_stdout`: 1.0 iff the program exits 0 and prints the expected output (trailing
    whitespace of each line and trailing blank lines ignored). The answer is the expected stdout,
    or JSON {"stdin": ..., "stdout": ...} ("input"/"output" also accepted).

The code of a completion is its last ```python (or ```py, or unlabelled) fenced block, a block
cut by the length limit running to the end; without fences, the whole completion. Code that
does not compile scores 0 without starting a sandbox. Programs run in `default_sandbox()`
(configure it with `jaxrl_llm.rewards.sandbox.configure_default_sandbox`). Each reward is
registered with the per-sample signature; `score_code_tests`/`score_code_stdout` (also the
`batched` attribute of the reward functions) score many samples in parallel on the sandbox pool,
running each distinct program once.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import warnings
from collections.abc import Sequence

import numpy as np

from jaxrl_llm.rewards import sandbox as sandbox_lib
from jaxrl_llm.rewards.math import register_reward

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PYTHON_FENCES = ("", "python", "py", "python3")


def extract_code(completion: str) -> str:
    """The code in a completion: its last python/py/unlabelled fenced block (an unclosed one
    runs to the end of the text), else the completion itself."""
    blocks = [body for lang, body in _FENCE.findall(completion) if lang.lower() in _PYTHON_FENCES]
    return blocks[-1] if blocks else completion


def _literal(text: str):
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def parse_tests(answer: str) -> tuple[str, tuple[str, ...]]:
    """(setup code, tests) of an answer field (formats in the module docstring)."""
    value = _literal(answer)
    setup = ""
    if isinstance(value, dict):
        tests = value.get("tests", value.get("test_list", ()))
        imports = value.get("test_imports", ())
        imports = [imports] if isinstance(imports, str) else list(imports)
        setup = "\n".join([*imports, value.get("test_setup_code", value.get("setup", "")) or ""]).strip()
    elif isinstance(value, list | tuple):
        tests = value
    else:
        lines = [line for line in answer.splitlines() if line.strip()]
        if lines and all(line.lstrip().startswith("assert") for line in lines):
            tests = lines
        else:
            tests = [answer] if answer.strip() else []
    if isinstance(tests, str):
        tests = [tests]
    return setup, tuple(str(t) for t in tests)


def parse_stdout_answer(answer: str) -> tuple[str, str]:
    """(stdin, expected stdout) of an answer field."""
    value = _literal(answer) if answer.lstrip().startswith("{") else None
    if isinstance(value, dict) and ("stdout" in value or "output" in value):
        return str(value.get("stdin", value.get("input", ""))), str(value.get("stdout", value.get("output")))
    return "", answer


def normalize_output(text: str) -> str:
    """Output compared by code_stdout: trailing whitespace of each line and trailing blank lines
    dropped."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def compiles(code: str) -> bool:
    """True when `code` is valid Python (compiled here, never executed)."""
    if len(code) > 1_000_000:
        return True  # let the sandbox decide rather than compile a huge text in the trainer
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(code, "<completion>", "exec", dont_inherit=True)
        return True
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return False


def tests_program(completion: str, answer: str) -> sandbox_lib.Program | None:
    """The sandbox program that runs the answer's tests on the completion's code; None when it
    cannot pass anything (no tests, or code that does not compile)."""
    setup, tests = parse_tests(answer)
    code = extract_code(completion)
    if not tests or not compiles(code):
        return None
    source = f"{setup}\n{code}" if setup else code
    return sandbox_lib.Program(source, tests=tests)


def stdout_program(completion: str, answer: str) -> tuple[sandbox_lib.Program | None, str]:
    """(the program, its expected stdout); the program is None when the code does not compile."""
    stdin, expected = parse_stdout_answer(answer)
    code = extract_code(completion)
    return (sandbox_lib.Program(code, stdin=stdin) if compiles(code) else None), expected


def _run_unique(programs: Sequence[sandbox_lib.Program | None], sandbox) -> list:
    """Results of the distinct non-None programs (each run once, in parallel), None elsewhere."""
    distinct = list(dict.fromkeys(p for p in programs if p is not None))
    results = dict(zip(distinct, sandbox_lib.run_many(distinct, sandbox), strict=True)) if distinct else {}
    return [None if p is None else results[p] for p in programs]


def score_code_tests(
    completions: Sequence[str], answers: Sequence[str], sandbox=None, require_all: bool = False
) -> np.ndarray:
    """Test pass rates [N] float32 of many completions (1.0/0.0 all-or-nothing with require_all)."""
    programs = [tests_program(c, a) for c, a in zip(completions, answers, strict=True)]
    scores = np.zeros(len(programs), np.float32)
    for i, result in enumerate(_run_unique(programs, sandbox)):
        if result is not None:
            rate = result.pass_rate
            scores[i] = float(rate == 1.0) if require_all else rate
    return scores


def score_code_stdout(completions: Sequence[str], answers: Sequence[str], sandbox=None) -> np.ndarray:
    """1.0 where a completion's program exits 0 printing the expected output, else 0.0 [N]."""
    pairs = [stdout_program(c, a) for c, a in zip(completions, answers, strict=True)]
    scores = np.zeros(len(pairs), np.float32)
    for i, result in enumerate(_run_unique([p for p, _ in pairs], sandbox)):
        if result is not None and result.ok and not result.truncated:
            scores[i] = float(normalize_output(result.stdout) == normalize_output(pairs[i][1]))
    return scores


@functools.lru_cache(maxsize=4096)
def _cached(kind: str, completion: str, answer: str, sandbox) -> float:
    if kind == "stdout":
        return float(score_code_stdout([completion], [answer], sandbox)[0])
    return float(score_code_tests([completion], [answer], sandbox, require_all=kind == "all")[0])


def _batched(kind: str):
    def batched(prompts, completions, answers, finished) -> np.ndarray:
        del prompts, finished
        if kind == "stdout":
            return score_code_stdout(completions, answers)
        return score_code_tests(completions, answers, require_all=kind == "all")

    batched.__name__ = f"batched_{kind}"
    return batched


@register_reward("code_tests")
def code_tests(*, prompt: str, completion: str, answer: str, finished: bool) -> float:
    """Fraction of the answer's unit tests that the completion's code passes."""
    del prompt, finished
    return _cached("tests", completion, answer, sandbox_lib.default_sandbox())


@register_reward("code_tests_all")
def code_tests_all(*, prompt: str, completion: str, answer: str, finished: bool) -> float:
    """1.0 iff the completion's code passes every test of the answer."""
    del prompt, finished
    return _cached("all", completion, answer, sandbox_lib.default_sandbox())


@register_reward("code_stdout")
def code_stdout(*, prompt: str, completion: str, answer: str, finished: bool) -> float:
    """1.0 iff the completion's program prints the answer's expected stdout (given its stdin)."""
    del prompt, finished
    return _cached("stdout", completion, answer, sandbox_lib.default_sandbox())


code_tests.batched = _batched("tests")
code_tests_all.batched = _batched("all")
code_stdout.batched = _batched("stdout")
