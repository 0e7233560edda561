"""Multi-turn episodes, token-in/token-out: `multi_turn(env, max_turns, max_obs_tokens)`.

An episode alternates sampled model turns with observations from a host-side environment
(a tool, a checker, a simulated user):

    prompt | turn 1 | observation 1 | turn 2 | observation 2 | ... | turn K

Turn 1 samples G responses per prompt (`ctx.sample`); after each turn `env.step` returns an
`Observation`; while the episode is not done and turns remain, the next turn samples one
continuation per row from the context prompt + every previous turn and observation (built with
`extend_prompts`, left-padded, so each real token has the position the training forward gives
it: `positions_from_mask` of [left-padded prompt | right-padded response]). A row whose episode
ended stops there (its later turns are empty; the fixed-shape sampler still runs over every row
while any row is active, and stops once none is).

The Rollout row (token-in/token-out: never a re-tokenised conversation):

    response_ids   [turn 1 ids | obs 1 ids | turn 2 ids | ... | turn k ids | pad ...]
    response_mask   1 on every real token (model turns and observations: all attended), 0 on pad
    loss_mask       1 on the model's tokens only (observations carry no loss)
    logp_behav      the sampler's log-probs on model tokens, 0 on observations and pad

with T_total = max_turns * sampling.max_new_tokens + (max_turns - 1) * max_obs_tokens columns,
the exact sampled ids of every turn (stop token included) and the observation ids
concatenated, with no padding inside.

Observations: `Observation.ids` are used verbatim; otherwise `text` is encoded with
`tokenizer.encode(text, add_special_tokens=False)`, or, in chat mode, rendered as a message of
`observation_role` ('tool') with the tokenizer's chat template: its ids are exactly what
rendering the whole conversation adds after the model's turn (the template's end of the
assistant turn not sampled, e.g. the newline after <|im_end|> or the whole closing when the turn
was cut at max_new_tokens, then the observation message and the next generation prompt). Chat
mode is on when the tokenizer has a chat template and the prompts are rendered with it
(`data.chat=True`, see `pipeline.format_prompt`), or forced with `chat=True/False`. A template
that is not prefix-stable (rendering the conversation so far is not a prefix of rendering it
with the next message, e.g. one that rewrites earlier turns) raises a ValueError naming the turn
and showing where the two renderings differ. `max_obs_tokens` bounds each observation's ids
(template tokens included); a longer one is an error.

Rewards: when the environment gives a `reward` in the last observation of every episode, those
are the rewards (extras['reward/env']); otherwise the configured reward sources (`ctx.score`)
score the decoded model turns (only loss-mask tokens: `ctx.decode(..., loss_mask=...)`; every
model turn concatenated, or only the last one with `score_turns='last'`), with `finished` =
the last model turn ended with a stop token. The configured sources are scored either way and
logged as extras['reward/<source>']. extras: 'turns' [N] (model turns taken), 'finished',
'reward/<source>', 'prompt_index', 'reward/env' when the env gives rewards. Metrics:
multi_turn/{turns, observation_tokens, done_fraction}.

Determinism: turn k samples with `fold_in(rng, k)`; an environment must be a deterministic
function of (prompt, answer, the turns it is shown) so a resumed run repeats every episode.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxrl_llm.registry import Registry
from jaxrl_llm.rollout.strategies import (
    PromptBatch,
    StrategyContext,
    extend_prompts,
    register_strategy,
    reward_extras,
)
from jaxrl_llm.types import Rollout, RolloutStrategy


class Observation(NamedTuple):
    """What the environment returns after a model turn.

    text: the observation's text (encoded, or rendered as a chat message), or None.
    ids: token ids used verbatim instead of `text` (the environment formats them itself).
    done: the episode ends here (no further turn is sampled).
    reward: the episode's reward (read from the last observation of each episode), or None to
      let the configured reward sources score it.
    """

    text: str | None = None
    ids: list[int] | None = None
    done: bool = False
    reward: float | None = None


class Environment(NamedTuple):
    """A host-side environment: `reset(prompt, answer) -> state` once per episode (row), then
    `step(state, turn_text, turn_ids) -> (state, Observation)` after every model turn.
    turn_text is the turn decoded without its stop token; turn_ids the exact sampled ids (stop
    token included). State is any Python object; both must be deterministic."""

    reset: Callable[[str, str], Any]
    step: Callable[[Any, str, list], tuple[Any, Observation]]


_ENVIRONMENTS = Registry("environment", "rollout.env", "jaxrl_llm.register_environment")


def register_environment(name: str, *, overwrite: bool = False):
    """Decorator registering an environment factory `(**kwargs) -> Environment` under `name`
    (selectable as `multi_turn(env=name, env_args=...)` or config.rollout.env)."""
    return _ENVIRONMENTS.register(name, overwrite=overwrite)


def registered_environments() -> list[str]:
    return _ENVIRONMENTS.names()


def get_environment(name: str, **kwargs) -> Environment:
    """The registered environment `name` built with `kwargs`."""
    env = _ENVIRONMENTS.get(name)(**kwargs)
    if not isinstance(env, Environment):
        raise TypeError(f"environment factory {name!r} returned {type(env).__name__}, not an Environment")
    return env


# ----------------------------------------------------------------------------- chat templates

_SENTINEL = "JAXRLLLMSENTINEL7"


def _first_difference(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


class _Chat:
    """Renders observations as chat messages and checks that the template is prefix-stable."""

    def __init__(self, tokenizer, role: str):
        self.tokenizer, self.role = tokenizer, role
        self._user = None  # the rendering of a user message around its content, once

    def render(self, messages, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt)
        except Exception as error:
            roles = [m["role"] for m in messages]
            raise ValueError(
                f"multi_turn: the chat template failed to render a conversation with roles {roles} "
                f"({type(error).__name__}: {error}); observations are '{self.role}' messages "
                "(multi_turn(observation_role=...), config field rollout.observation_role)"
            ) from error

    def user_content(self, prompt: str) -> str | None:
        """The user message `prompt` is the rendering of (`format_prompt` with chat), or None."""
        if self._user is None:
            self._user = self.render([{"role": "user", "content": _SENTINEL}], True).partition(_SENTINEL)
        head, _, tail = self._user
        if len(prompt) < len(head) + len(tail) or not (prompt.startswith(head) and prompt.endswith(tail)):
            return None
        content = prompt[len(head) : len(prompt) - len(tail)]
        return content if self.render([{"role": "user", "content": content}], True) == prompt else None

    def check_prefix(self, before: str, after: str, turn: int, what_before: str, what_after: str):
        if after.startswith(before):
            return
        i = _first_difference(before, after)
        lo = max(i - 40, 0)
        raise ValueError(
            f"multi_turn: the chat template is not prefix-stable at turn {turn}: rendering {what_before} "
            f"is not a prefix of rendering {what_after}; they differ from character {i}: "
            f"{before[lo : i + 60]!r} vs {after[lo : i + 60]!r}. Token-in/token-out needs each rendering "
            "to extend the previous one (a template that rewrites earlier turns does not); use another "
            "template or observation_role, or chat=False"
        )

    def observation_text(self, history: list, turn_text: str, stop_text: str | None, text: str, turn: int):
        """(the observation's text after model turn `turn`, the messages including both).

        history: the messages before the turn; stop_text: the text of the stop token that ended
        the turn (None when it was cut at max_new_tokens)."""
        context = self.render(history, True)
        with_turn = [*history, {"role": "assistant", "content": turn_text}]
        closed = self.render(with_turn, False)
        what = f"the conversation before model turn {turn} (with the generation prompt)"
        self.check_prefix(context, closed, turn, what, f"it with model turn {turn}")
        probe = self.render([*history, {"role": "assistant", "content": _SENTINEL}], False)
        self.check_prefix(context, probe, turn, what, f"it with model turn {turn}")
        at = probe.rfind(_SENTINEL, len(context))
        if at < 0:
            raise ValueError(
                f"multi_turn: the chat template does not write the assistant's content (turn {turn})"
            )
        closing = probe[at + len(_SENTINEL) :]  # what the template writes after the content
        if stop_text and closing.startswith(stop_text):
            closing = closing[len(stop_text) :]  # the model sampled that part
        with_obs = [*with_turn, {"role": self.role, "content": text}]
        following = self.render(with_obs, True)
        self.check_prefix(
            closed,
            following,
            turn,
            f"the conversation up to model turn {turn}",
            f"it with observation {turn} (a '{self.role}' message)",
        )
        return closing + following[len(closed) :], with_obs


def _chat_for(tokenizer, prompts: PromptBatch, mode: bool | None, role: str):
    """(_Chat, user contents per prompt) in chat mode, else (None, None)."""
    if mode is False or (mode is None and not getattr(tokenizer, "chat_template", None)):
        return None, None
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("multi_turn(chat=True): the tokenizer has no chat template")
    chat = _Chat(tokenizer, role)
    try:
        contents = [chat.user_content(str(p)) for p in prompts.prompts]
    except ValueError:
        if mode:
            raise
        return None, None  # auto: a template that cannot render a user message is not in use
    if any(c is None for c in contents):
        if mode:
            p = str(prompts.prompts[[c is None for c in contents].index(True)])
            raise ValueError(
                f"multi_turn(chat=True): the prompt {p!r} is not a user message rendered with the "
                "tokenizer's chat template (set data.chat=True, or chat=False for plain observations)"
            )
        return None, None
    return chat, contents


# ----------------------------------------------------------------------------- the strategy


def multi_turn(
    env: Environment | str,
    max_turns: int,
    max_obs_tokens: int,
    num_samples: int | None = None,
    env_args: dict | None = None,
    observation_role: str = "tool",
    chat: bool | None = None,
    score_turns: str = "all",
) -> RolloutStrategy:
    """Multi-turn episodes with `env` (an `Environment` or a registered name, built with
    `env_args`): G = num_samples (default `sampling.num_samples`) episodes per prompt of at most
    `max_turns` model turns, observations of at most `max_obs_tokens` ids between them. Row
    layout, chat rendering and the rewards rule: the module docstring. score_turns: 'all' (the
    configured sources score every model turn's text, concatenated) or 'last' (the last turn's)."""
    if max_turns < 1:
        raise ValueError(f"multi_turn: max_turns={max_turns} must be >= 1")
    if max_obs_tokens < 0:
        raise ValueError(f"multi_turn: max_obs_tokens={max_obs_tokens} must be >= 0")
    if score_turns not in ("all", "last"):
        raise ValueError(f"multi_turn: score_turns={score_turns!r}; use 'all' or 'last'")
    if isinstance(env, str):
        args = env_args.to_dict() if hasattr(env_args, "to_dict") else dict(env_args or {})
        env = get_environment(env, **args)
    if not isinstance(env, Environment):
        raise TypeError(
            f"multi_turn: env must be an Environment or a registered name, got {type(env).__name__}"
        )

    def collect(ctx: StrategyContext, prompts: PromptBatch, rng) -> Rollout:
        g = num_samples or ctx.num_samples
        t = ctx.sampling.max_new_tokens
        width = max_turns * t + (max_turns - 1) * max_obs_tokens
        rows = prompts.repeat(g)
        n = len(rows.prompt_ids)
        renderer, contents = _chat_for(ctx.tokenizer, prompts, chat, observation_role)
        messages = [[{"role": "user", "content": contents[i // g]}] for i in range(n)] if renderer else None
        stop_ids = set(ctx.sampling.stop_ids)
        states = [env.reset(str(p), str(a)) for p, a in zip(rows.prompts, rows.answers, strict=True)]
        pieces: list[list] = [[] for _ in range(n)]  # (ids, sampler log-probs or None) per row
        context: list[list[int]] = [[] for _ in range(n)]  # everything after the prompt
        last_obs: list[Observation | None] = [None] * n
        turns = np.zeros(n, np.int32)
        finished = np.zeros(n, bool)
        done = np.zeros(n, bool)
        active = np.ones(n, bool)
        for turn in range(max_turns):
            turn_rng = jax.random.fold_in(rng, turn)
            if turn == 0:
                out = ctx.sample(prompts.prompt_ids, prompts.prompt_mask, turn_rng, num_samples=g)
            else:
                ids, mask = extend_prompts(
                    rows.prompt_ids, rows.prompt_mask, context, turn * (t + max_obs_tokens)
                )
                out = ctx.sample(ids, mask, turn_rng, num_samples=1)
            texts, _ = ctx.decode(out.response_ids, out.response_mask)
            for i in np.flatnonzero(active):
                length = int(np.asarray(out.response_mask[i]).sum())
                turn_ids = [int(x) for x in out.response_ids[i, :length]]
                pieces[i].append((turn_ids, np.asarray(out.logprobs[i, :length], np.float32)))
                context[i] += turn_ids
                turns[i] += 1
                finished[i] = bool(turn_ids) and turn_ids[-1] in stop_ids
                states[i], obs = _step(env, states[i], texts[i], turn_ids, turn + 1, rows, i)
                last_obs[i] = obs
                if obs.done or turn == max_turns - 1:
                    active[i], done[i] = False, bool(obs.done)
                    continue
                obs_ids = _observation_ids(
                    ctx, obs, renderer, messages, i, texts[i], turn_ids, finished[i], turn + 1
                )
                if len(obs_ids) > max_obs_tokens:
                    raise ValueError(
                        f"multi_turn: the observation after turn {turn + 1} of row {i} has {len(obs_ids)} "
                        f"tokens, more than max_obs_tokens={max_obs_tokens} (config field "
                        f"rollout.max_obs_tokens, chat template tokens included): {obs.text!r}"
                    )
                pieces[i].append((obs_ids, None))
                context[i] += obs_ids
            if not active.any():
                break
        return _assemble(ctx, rows, prompts, g, width, pieces, last_obs, turns, finished, done, score_turns)

    return RolloutStrategy(collect)


def _step(env: Environment, state, text: str, ids: list, turn: int, rows: PromptBatch, i: int):
    try:
        result = env.step(state, text, ids)
    except Exception as error:
        raise RuntimeError(
            f"multi_turn: env.step raised after turn {turn} of row {i} (prompt {str(rows.prompts[i])!r}, "
            f"turn text {text!r}): {type(error).__name__}: {error}"
        ) from error
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Observation)):
        raise TypeError(f"multi_turn: env.step must return (state, Observation), got {result!r}")
    return result


def _observation_ids(ctx, obs: Observation, renderer, messages, i, turn_text, turn_ids, finished, turn):
    if renderer is not None and (obs.text is not None or obs.ids is not None):
        text = obs.text if obs.text is not None else ctx.tokenizer.decode(obs.ids)
        stop_text = ctx.tokenizer.decode([turn_ids[-1]], skip_special_tokens=False) if finished else None
        rendered, messages[i] = renderer.observation_text(messages[i], turn_text, stop_text, text, turn)
        if obs.ids is None:
            return ctx.tokenizer.encode(rendered, add_special_tokens=False)
    if obs.ids is not None:
        return [int(x) for x in obs.ids]
    if obs.text is None:
        return []
    return ctx.tokenizer.encode(obs.text, add_special_tokens=False)


def _assemble(ctx, rows, prompts, g, width, pieces, last_obs, turns, finished, done, score_turns) -> Rollout:
    n = len(pieces)
    resp = np.full((n, width), ctx.sampling.pad_id, np.int32)
    resp_mask = np.zeros((n, width), np.int32)
    loss = np.zeros((n, width), np.float32)
    last_turn = np.zeros((n, width), np.float32)
    logp = np.zeros((n, width), np.float32)
    obs_tokens = np.zeros(n, np.float32)
    for i, row in enumerate(pieces):
        at = 0
        for ids, lp in row:
            k = len(ids)
            resp[i, at : at + k] = ids
            resp_mask[i, at : at + k] = 1
            if lp is None:
                obs_tokens[i] += k
            else:
                loss[i, at : at + k] = 1.0
                logp[i, at : at + k] = lp
                last_turn[i] = 0.0
                last_turn[i, at : at + k] = 1.0
            at += k
    completions, _ = ctx.decode(resp, resp_mask, loss_mask=loss if score_turns == "all" else last_turn)
    scores = ctx.score(rows, resp, resp_mask, completions, finished)
    env_rewards = [None if o is None else o.reward for o in last_obs]
    given = [r is not None for r in env_rewards]
    extras = {
        **reward_extras(scores, finished, rows),
        "prompt_index": np.repeat(np.arange(len(prompts.prompt_ids), dtype=np.int32), g),
        "turns": turns,
    }
    if all(given):
        rewards = np.asarray(env_rewards, np.float32)
        extras["reward/env"] = rewards
    elif any(given):
        raise ValueError(
            "multi_turn: the environment gave a reward in the last observation of some episodes but "
            f"not of others (rows {[i for i, x in enumerate(given) if not x][:5]} have none); give one "
            "always (env rewards) or never (the configured reward sources score the episodes)"
        )
    else:
        rewards = np.asarray(scores.rewards, np.float32)
    return Rollout(
        prompt_ids=rows.prompt_ids,
        prompt_mask=rows.prompt_mask,
        response_ids=resp,
        response_mask=resp_mask,
        loss_mask=loss,
        group_ids=np.repeat(np.arange(len(prompts.prompt_ids), dtype=np.int32), g),
        logp_behav=logp,
        rewards=rewards,
        extras=extras,
        metrics={
            "multi_turn/turns": float(turns.mean()),
            "multi_turn/observation_tokens": float(obs_tokens.mean()),
            "multi_turn/done_fraction": float(done.mean()),
        },
    )


register_strategy("multi_turn")(multi_turn)


# ----------------------------------------------------------------------------- example env

_EXPRESSION = r"\s*(\d{1,3})\s*([-+*])\s*(\d{1,3})\s*=?\s*"


@register_environment("calculator")
def calculator(max_turns: int = 2) -> Environment:
    """A calculator tool for the arithmetic task (an example; it does not make the task easier
    for a model that never writes an expression). After each model turn but the `max_turns`-th,
    the turn's text is evaluated as one expression 'a op b' (op in + - *, operands of at most 3
    digits, a trailing '=' allowed) and the observation is '=' + its value, or '=?' when the
    text is not such an expression (at most 7 characters). The episode ends (done) after
    `max_turns` model turns. No reward: the configured sources score the episode (use
    `score_turns='last'` to score the answer turn alone). State: the number of turns taken."""

    def reset(prompt: str, answer: str) -> int:
        return 0

    def step(turns: int, turn_text: str, turn_ids):
        turns += 1
        if turns >= max_turns:
            return turns, Observation(done=True)
        match = re.fullmatch(_EXPRESSION, turn_text)
        if match is None:
            return turns, Observation(text="=?")
        a, op, b = int(match[1]), match[2], int(match[3])
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        return turns, Observation(text=f"={value}")

    return Environment(reset, step)
