"""The Countdown verifier: does a completion's expression reach the target from the given numbers?

A Countdown question lists source numbers and a target, "3 7 25>46:" (numbers separated by
single spaces, '>', the target, ':'; `format_question`). A solution is an arithmetic expression
over + - * / and parentheses that uses EVERY source number exactly once (as a multiset: a number
given twice may be used twice) and whose exact value equals the target, e.g. "25+3*7". Many
solutions exist for most questions; the verifier checks any of them and never looks at the
dataset's reference solution (the `answer` field, used by SFT only).

Rules of the verifier (`check_solution`):
  * grammar: expr := term (('+' | '-') term)*, term := factor (('*' | '/') factor)*,
    factor := number | '(' expr ')'; usual precedence, left-associative; spaces are ignored; no
    unary minus, no leading zeros ("07"), no other characters;
  * arithmetic is exact over the rationals (fractions.Fraction): negative and fractional
    intermediates are allowed ("(7-25)/3+..." is fine if the total is exact); division by zero
    makes the expression invalid. (The generator of jaxrl_llm/data/countdown.py only builds
    reference solutions with positive-integer intermediates, the TV game's rule, so every
    question is solvable under either rule; the verifier takes the lenient one.)
  * the completion is the expression alone, optionally after a GSM8K marker ("... #### 25+3*7":
    the text after the last '####' is checked), surrounding whitespace ignored. Anything else
    (an "=46" suffix, words) fails to parse.

The numbers and target are read from the prompt: the LAST match of the question pattern in the
prompt text, so an instruction or a chat template around the question does not matter.
Malformed input of any kind scores 0; the rewards never raise.

Rewards (registered; pick them in `config.rewards` / `config.eval.reward`):
  * `countdown`: 1.0 iff the sample finished (emitted EOS, like `exact_match`) and its
    expression is a solution;
  * `countdown_format`: 1.0 iff the sample finished and its expression parses and uses exactly
    the given numbers (any value): a partial-credit shaping term.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

from jaxrl_llm.rewards.math import register_reward

# A question: numbers, '>', target, ':' (e.g. "3 7 25>46:").
QUESTION_PATTERN = re.compile(r"([0-9]+(?: [0-9]+)*)>([0-9]+):")
MAX_EXPRESSION_CHARS = 128  # longer completions are not parsed (score 0)

# An expression tree: an int leaf, or (op, left, right).
Node = int | tuple


def format_question(numbers, target: int) -> str:
    """The question text of a puzzle: `format_question([3, 7, 25], 46) == "3 7 25>46:"`."""
    return " ".join(str(int(n)) for n in numbers) + f">{int(target)}:"


def parse_question(prompt: str) -> tuple[list[int], int] | None:
    """(numbers, target) of the last question in `prompt`, or None when it holds none."""
    matches = QUESTION_PATTERN.findall(prompt)
    if not matches:
        return None
    numbers, target = matches[-1]
    return [int(n) for n in numbers.split(" ")], int(target)


_TOKEN = re.compile(r"\s*(?:([0-9]+)|([-+*/()]))")


def _tokens(text: str) -> list[int | str] | None:
    """Numbers (int) and operator/parenthesis characters of `text`; None on any other character
    or a number with a leading zero."""
    tokens, position, end = [], 0, len(text.rstrip())
    while position < end:
        match = _TOKEN.match(text, position)
        if match is None:
            return None
        number, symbol = match.groups()
        if number is not None and len(number) > 1 and number[0] == "0":
            return None
        tokens.append(int(number) if number is not None else symbol)
        position = match.end()
    return tokens


def parse_expression(text: str) -> Node | None:
    """The expression tree of `text` (int leaves, (op, left, right) nodes), or None when `text`
    is not exactly one expression of the grammar in the module docstring."""
    if len(text) > MAX_EXPRESSION_CHARS:
        return None
    tokens = _tokens(text)
    if not tokens:
        return None
    position = 0

    def peek():
        return tokens[position] if position < len(tokens) else None

    def binary(operand, ops):
        nonlocal position
        left = operand()
        while left is not None and peek() in ops:
            op = tokens[position]
            position += 1
            right = operand()
            left = None if right is None else (op, left, right)
        return left

    def factor():
        nonlocal position
        token = peek()
        if isinstance(token, int):
            position += 1
            return token
        if token != "(":
            return None
        position += 1
        inner = expression()
        if inner is None or peek() != ")":
            return None
        position += 1
        return inner

    def term():
        return binary(factor, ("*", "/"))

    def expression():
        return binary(term, ("+", "-"))

    # Nesting is at most MAX_EXPRESSION_CHARS / 2 parentheses deep: within Python's recursion limit.
    tree = expression()
    return tree if tree is not None and position == len(tokens) else None


def leaves(tree: Node) -> list[int]:
    """The numbers of an expression tree, left to right."""
    if isinstance(tree, int):
        return [tree]
    return leaves(tree[1]) + leaves(tree[2])


def evaluate(tree: Node) -> Fraction | None:
    """The exact value of an expression tree; None on division by zero."""
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = evaluate(left), evaluate(right)
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def format_expression(tree: Node) -> str:
    """The text of an expression tree with the fewest parentheses that keep its value.

    A child is parenthesised when it binds more loosely than its parent, or when it is the right
    operand of '-' or '/' with the same precedence; "a+(b-c)" is written "a+b-c" (same value).
    """
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    prec = _PRECEDENCE[op]

    def child(node, right_side: bool) -> str:
        text = format_expression(node)
        if isinstance(node, int):
            return text
        inner = _PRECEDENCE[node[0]]
        if inner < prec or (right_side and inner == prec and op in "-/"):
            return f"({text})"
        return text

    return child(left, False) + op + child(right, True)


def _expression_text(completion: str) -> str:
    return completion.rsplit("####", 1)[-1].strip()


def uses_numbers(expression: str, numbers) -> bool:
    """True iff `expression` parses and uses exactly the multiset `numbers`."""
    tree = parse_expression(expression)
    return tree is not None and Counter(leaves(tree)) == Counter(int(n) for n in numbers)


def check_solution(expression: str, numbers, target: int) -> bool:
    """True iff `expression` parses, uses exactly the multiset `numbers` (each once) and its
    exact value equals `target`. Never raises on malformed text."""
    tree = parse_expression(expression)
    if tree is None or Counter(leaves(tree)) != Counter(int(n) for n in numbers):
        return False
    return evaluate(tree) == target


@register_reward("countdown")
def countdown(*, prompt: str, completion: str, answer: str, finished: bool) -> float:
    """1.0 iff the sample finished and its expression reaches the prompt's target using each of
    the prompt's numbers exactly once (the reference solution in `answer` is not used)."""
    del answer
    puzzle = parse_question(prompt)
    if not finished or puzzle is None:
        return 0.0
    return float(check_solution(_expression_text(completion), *puzzle))


@register_reward("countdown_format")
def countdown_format(*, prompt: str, completion: str, answer: str, finished: bool) -> float:
    """1.0 iff the sample finished and its expression parses and uses exactly the prompt's
    numbers, whatever its value."""
    del answer
    puzzle = parse_question(prompt)
    if not finished or puzzle is None:
        return 0.0
    return float(uses_numbers(_expression_text(completion), puzzle[0]))
