"""Rollout strategies: how the batch of a training step is collected (host side).

A `RolloutStrategy` is `collect(ctx, prompts, rng) -> Rollout`. `ctx` is a `StrategyContext`
(the current params, the step, `sample` with per-call sampling overrides, `score` with the
configured reward sources, deterministic extra prompts for the step, the tokenizer, auxiliary
models); `prompts` is the step's `PromptBatch`; `rng` is derived from the step. Strategies
wrap each other like optax wrappers:

    dynamic_sampling(greedy_baseline(group_sampling()), max_rounds=4)

Every strategy is a pure function of (ctx.step, prompts, rng, params), so a run killed at any
step and resumed collects exactly the same batches. The Rollout a strategy returns holds host
(numpy) arrays with fixed shapes; per-row side information goes in `extras` (kept row-aligned
by every selection here), scalars to report in `metrics`.

Registered by name for configs (`config.rollout.name`, its other fields the factory's keyword
arguments; `inner` may name another registered strategy).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxrl_llm.data.sources import final_answer
from jaxrl_llm.registry import Registry
from jaxrl_llm.rewards.math import get_reward, score_completions
from jaxrl_llm.types import Rollout, RolloutStrategy


class PromptBatch(NamedTuple):
    """Prompts of one collection call (numpy, host).

    prompt_ids, prompt_mask: [B, P] int32, left-padded; prompts: str [B] formatted prompt
    texts; answers: str [B] the dataset's answer fields; index: int32 [B] source records.
    """

    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    prompts: np.ndarray
    answers: np.ndarray
    index: np.ndarray

    @classmethod
    def from_dict(cls, batch: dict) -> PromptBatch:
        n = len(batch["prompt_ids"])
        index = batch.get("index", np.arange(n, dtype=np.int32))
        return cls(batch["prompt_ids"], batch["prompt_mask"], batch["prompts"], batch["answers"], index)

    def repeat(self, g: int) -> PromptBatch:
        """Each prompt repeated g times in a row (rows b * g .. b * g + g - 1 = prompt b)."""
        return PromptBatch(*(np.repeat(x, g, axis=0) for x in self))


def decode_responses(
    tokenizer, ids: np.ndarray, mask: np.ndarray, stop_ids, loss_mask: np.ndarray | None = None
) -> tuple[list[str], np.ndarray]:
    """Response rows [N, T] -> (completion texts without the stop token, finished flags [N]).
    With `loss_mask`, only its positions are decoded (a multi-turn row's model turns)."""
    is_stop = np.isin(ids, np.asarray(tuple(stop_ids) or (-1,))) & (mask == 1)
    keep = (mask == 1) & ~is_stop
    if loss_mask is not None:
        keep &= np.asarray(loss_mask) > 0
    completions = tokenizer.batch_decode([row[k].tolist() for row, k in zip(ids, keep, strict=True)])
    return completions, is_stop.any(axis=1)


class Scores(NamedTuple):
    """rewards [N] float32: the weighted total of every source; per_source: name -> [N] raw values."""

    rewards: np.ndarray
    per_source: dict


@dataclasses.dataclass
class StrategyContext:
    """What a strategy can use. Built by the trainer once per step (see the module docstring).

    sample(prompt_ids, prompt_mask, rng, **overrides) -> SampleOutput of numpy arrays; the
      overrides replace `SamplingConfig` fields for this call (temperature=0.0 is greedy,
      num_samples, max_new_tokens, top_k, top_p); each distinct config compiles once.
    score(prompts, response_ids, response_mask, completions=None, finished=None) -> Scores:
      `prompts` has one row per response; texts are decoded when not given.
    extra_prompts(round) -> PromptBatch: the round-th extra prompt batch of this step (round
      >= 1), a deterministic function of (seed, step, round), disjoint from the main stream's order.
    """

    params: Any
    step: int
    num_samples: int
    sampling: Any
    tokenizer: Any
    aux: dict
    sample_fn: Callable
    score_fn: Callable
    extra_prompts: Callable[[int], PromptBatch]
    times: dict = dataclasses.field(default_factory=lambda: {"sample_time": 0.0, "score_time": 0.0})
    generated_tokens: int = 0

    def sample(self, prompt_ids, prompt_mask, rng, **overrides):
        t0 = time.perf_counter()
        out = self.sample_fn(self.params, prompt_ids, prompt_mask, rng, **overrides)
        self.times["sample_time"] += time.perf_counter() - t0
        self.generated_tokens += int(np.asarray(out.response_mask).sum())
        return out

    def decode(self, response_ids, response_mask, loss_mask=None) -> tuple[list[str], np.ndarray]:
        """(texts of the loss-mask tokens without stop tokens, finished flags [N])."""
        return decode_responses(
            self.tokenizer, response_ids, response_mask, self.sampling.stop_ids, loss_mask
        )

    def score(
        self, prompts: PromptBatch, response_ids, response_mask, completions=None, finished=None
    ) -> Scores:
        t0 = time.perf_counter()
        if completions is None:
            completions, finished = self.decode(response_ids, response_mask)
        scores = self.score_fn(prompts, response_ids, response_mask, completions, finished)
        self.times["score_time"] += time.perf_counter() - t0
        return scores


def reward_extras(scores: Scores, finished, rows: PromptBatch) -> dict:
    """The per-row extras every scoring strategy writes: 'reward/<source>', 'finished' and
    'record_index' (the dataset record of each row's prompt, `rows.index`: a prompt's identity
    across steps, for per-prompt state such as DCPO's cumulative statistics)."""
    return {
        **{f"reward/{name}": np.asarray(v, np.float32) for name, v in scores.per_source.items()},
        "finished": np.asarray(finished, np.float32),
        "record_index": np.asarray(rows.index, np.int32),
    }


def sampled_rollout(rows: PromptBatch, out, scores, finished, g: int, **extras) -> Rollout:
    """The Rollout of G = g samples per prompt (`out`, the sampler's output over `rows`, the
    prompts repeated g times) scored as `scores`: group ids and extras['prompt_index'] = the
    prompt of each row, the sampler's log-probs as behaviour log-probs, the reward extras
    (`reward_extras`) and `extras`."""
    prompt_index = np.repeat(np.arange(len(rows.prompt_ids) // g, dtype=np.int32), g)
    return Rollout(
        prompt_ids=rows.prompt_ids,
        prompt_mask=rows.prompt_mask,
        response_ids=out.response_ids,
        response_mask=out.response_mask,
        group_ids=prompt_index,
        logp_behav=out.logprobs,
        rewards=scores.rewards,
        extras={**reward_extras(scores, finished, rows), "prompt_index": prompt_index, **extras},
    )


def group_sampling(num_samples: int | None = None, **sampling_overrides) -> RolloutStrategy:
    """The default strategy: G = num_samples (default `sampling.num_samples`) responses per
    prompt, scored by the configured reward sources. Rows b * G + g hold prompt b's samples;
    group_ids = b; extras: 'reward/<source>', 'finished', 'record_index', 'prompt_index' (= b)."""

    def collect(ctx: StrategyContext, prompts: PromptBatch, rng) -> Rollout:
        g = num_samples or ctx.num_samples
        out = ctx.sample(prompts.prompt_ids, prompts.prompt_mask, rng, num_samples=g, **sampling_overrides)
        rows = prompts.repeat(g)
        completions, finished = ctx.decode(out.response_ids, out.response_mask)
        scores = ctx.score(rows, out.response_ids, out.response_mask, completions, finished)
        return sampled_rollout(rows, out, scores, finished, g)

    return RolloutStrategy(collect)


def _resolve(inner) -> RolloutStrategy:
    if inner is None:
        return group_sampling()
    if isinstance(inner, str):
        return make_strategy(inner)
    return inner


def select_rows(rollout: Rollout, rows) -> Rollout:
    """rollout[rows] on every per-row leaf (extras included); scalars and metrics kept."""
    rows = np.asarray(rows)

    def take(x):
        return x if x is None or np.ndim(x) == 0 else np.asarray(x)[rows]

    fields = {f: take(getattr(rollout, f)) for f in rollout._fields if f not in ("extras", "metrics")}
    return Rollout(
        **fields, extras={k: take(v) for k, v in rollout.extras.items()}, metrics=dict(rollout.metrics)
    )


def concat_rollouts(rollouts: list[Rollout]) -> Rollout:
    """Rows of every rollout in order (same fields, shapes and extras keys); group ids are
    offset so groups of different rollouts stay distinct; metrics are averaged."""
    first = rollouts[0]
    offset, group_ids = 0, []
    for r in rollouts:
        group_ids.append(np.asarray(r.group_ids) + offset)
        offset += int(np.max(r.group_ids)) + 1

    def cat(name, get):
        values = [get(r) for r in rollouts]
        if values[0] is None:
            return None
        return np.concatenate([np.asarray(v) for v in values])

    fields = {
        f: cat(f, lambda r, f=f: getattr(r, f))
        for f in first._fields
        if f not in ("extras", "metrics", "group_ids")
    }
    extras = {k: cat(k, lambda r, k=k: r.extras[k]) for k in first.extras}
    metrics = {k: float(np.mean([r.metrics[k] for r in rollouts if k in r.metrics])) for k in first.metrics}
    return Rollout(**fields, group_ids=np.concatenate(group_ids), extras=extras, metrics=metrics)


def _groups(group_ids) -> list[np.ndarray]:
    """Row indices of each group, in order of first appearance."""
    group_ids = np.asarray(group_ids)
    _, first = np.unique(group_ids, return_index=True)
    return [np.flatnonzero(group_ids == group_ids[i]) for i in np.sort(first)]


def rewards_vary(rewards: np.ndarray) -> bool:
    """DAPO's keep rule: the group's rewards are not all equal (some learning signal)."""
    return bool(np.max(rewards) > np.min(rewards))


def dynamic_sampling(
    inner: RolloutStrategy | str | None = None,
    keep: Callable[[np.ndarray], bool] = rewards_vary,
    max_rounds: int = 3,
) -> RolloutStrategy:
    """DAPO dynamic sampling (arXiv 2503.14476): keep only the groups for which `keep(rewards
    of the group)` holds (default: rewards vary), collecting `inner` on more prompts until as
    many groups as the step's prompts are kept or `max_rounds` collections were made.

    Round 0 uses the step's prompts, round r >= 1 `ctx.extra_prompts(r)` (a deterministic batch
    of the same size). Output: the first B kept groups in the order they were sampled, so the
    shapes never change. When fewer than B were kept after `max_rounds`, the batch is filled
    with the earliest discarded groups (fill rule: they carry no group-relative signal, so
    under GRPO-style advantages they add no gradient; their count is reported). Metrics:
    dynamic_sampling/{sampled_groups, kept_groups, filled_groups, rounds}.
    Compose greedy baselines inside (`dynamic_sampling(greedy_baseline())`), not outside.
    """
    if max_rounds < 1:
        raise ValueError(f"dynamic_sampling: max_rounds={max_rounds} must be >= 1")
    inner = _resolve(inner)

    def collect(ctx: StrategyContext, prompts: PromptBatch, rng) -> Rollout:
        wanted = len(prompts.prompt_ids)
        kept, dropped, collected, sampled = [], [], [], 0
        rounds = 0
        while len(kept) < wanted and rounds < max_rounds:
            batch = prompts if rounds == 0 else ctx.extra_prompts(rounds)
            rollout = inner.collect(ctx, batch, jax.random.fold_in(rng, rounds))
            base = sum(len(r.rewards) for r in collected)
            collected.append(rollout)
            for rows in _groups(rollout.group_ids):
                (kept if keep(np.asarray(rollout.rewards)[rows]) else dropped).append(rows + base)
                sampled += 1
            rounds += 1
        chosen = kept[:wanted]
        filled = max(wanted - len(chosen), 0)
        chosen = chosen + dropped[:filled]
        everything = concat_rollouts(collected)
        everything = everything._replace(
            extras={k: v for k, v in everything.extras.items() if k != "prompt_index"}
        )
        out = select_rows(everything, np.concatenate(chosen))
        out = _renumber_groups(out)
        metrics = {
            **out.metrics,
            "dynamic_sampling/sampled_groups": float(sampled),
            "dynamic_sampling/kept_groups": float(min(len(kept), wanted)),
            "dynamic_sampling/filled_groups": float(filled),
            "dynamic_sampling/rounds": float(rounds),
        }
        return out._replace(metrics=metrics)

    return RolloutStrategy(collect)


def _renumber_groups(rollout: Rollout) -> Rollout:
    """group_ids 0, 1, ... in order of first appearance (rows of a group stay together)."""
    _, first, inverse = np.unique(rollout.group_ids, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rollout._replace(group_ids=rank[inverse].astype(np.int32))


def greedy_baseline(inner: RolloutStrategy | str | None = None) -> RolloutStrategy:
    """ReMax's baseline (arXiv 2310.10505): one greedy response per prompt, scored like the
    samples; its reward goes to extras['baseline_rewards'] [N] on each of the prompt's rows
    (read by `remax_advantages`). Metric: greedy_reward_mean."""
    inner = _resolve(inner)

    def collect(ctx: StrategyContext, prompts: PromptBatch, rng) -> Rollout:
        rollout = inner.collect(ctx, prompts, jax.random.fold_in(rng, 0))
        if "prompt_index" not in rollout.extras:
            raise ValueError(
                "greedy_baseline needs extras['prompt_index'] from its inner strategy (group_sampling "
                "writes it); put greedy_baseline inside dynamic_sampling, not around it"
            )
        greedy = ctx.sample(
            prompts.prompt_ids,
            prompts.prompt_mask,
            jax.random.fold_in(rng, 1),
            temperature=0.0,
            num_samples=1,
        )
        scores = ctx.score(prompts, greedy.response_ids, greedy.response_mask)
        baseline = np.asarray(scores.rewards, np.float32)[rollout.extras["prompt_index"]]
        extras = {**rollout.extras, "baseline_rewards": baseline}
        metrics = {**rollout.metrics, "greedy_reward_mean": float(np.mean(scores.rewards))}
        return rollout._replace(extras=extras, metrics=metrics)

    return RolloutStrategy(collect)


def _prompt_index(rollout: Rollout, wrapper: str) -> np.ndarray:
    """Each row's prompt in the step's PromptBatch (`extras['prompt_index']`, group_sampling's)."""
    if "prompt_index" not in rollout.extras:
        raise ValueError(
            f"{wrapper} needs extras['prompt_index'] from its inner strategy (group_sampling writes "
            f"it); put {wrapper} inside dynamic_sampling, not around it"
        )
    return np.asarray(rollout.extras["prompt_index"])


def reference_baseline(
    inner: RolloutStrategy | str | None = None, reference: Callable[[str, str], str] | None = None
) -> RolloutStrategy:
    """CGPO's baseline (arXiv 2409.20370): the dataset's reference response y_base of each
    prompt, scored by the run's reward sources exactly like the samples (a verifier on its text,
    a reward model on prompt + its tokens); the score goes to extras['baseline_rewards'] [N] on
    each of the prompt's rows (the key `greedy_baseline` writes).

    y_base = `reference(prompt_text, answer)` followed by the tokenizer's first EOS id, a
    finished response; default final_answer(answer), the SFT target ("579" for arithmetic's
    "#### 579", which the exact-match verifier scores 1). Metric: reference_reward_mean.
    """
    inner = _resolve(inner)
    reference = reference or (lambda prompt, answer: final_answer(answer))

    def collect(ctx: StrategyContext, prompts: PromptBatch, rng) -> Rollout:
        rollout = inner.collect(ctx, prompts, rng)
        index = _prompt_index(rollout, "reference_baseline")
        if not ctx.tokenizer.eos_ids:
            raise ValueError(
                "reference_baseline ends the reference responses with EOS; set tokenizer.eos_ids"
            )
        texts = [reference(str(p), str(a)) for p, a in zip(prompts.prompts, prompts.answers, strict=True)]
        width = np.shape(rollout.response_ids)[1]
        ids = np.full((len(texts), width), ctx.sampling.pad_id, np.int32)
        mask = np.zeros((len(texts), width), np.int32)
        for i, text in enumerate(texts):
            row = [*ctx.tokenizer.encode(text, add_special_tokens=False), ctx.tokenizer.eos_ids[0]]
            if len(row) > width:
                raise ValueError(
                    f"reference_baseline: the reference response {text!r} and EOS take {len(row)} tokens, more "
                    f"than the response buffer of {width}; raise --config.sampling.max_new_tokens={len(row)}"
                )
            ids[i, : len(row)], mask[i, : len(row)] = row, 1
        scores = ctx.score(prompts, ids, mask, texts, np.ones(len(texts), bool))
        extras = {**rollout.extras, "baseline_rewards": np.asarray(scores.rewards, np.float32)[index]}
        metrics = {**rollout.metrics, "reference_reward_mean": float(np.mean(scores.rewards))}
        return rollout._replace(extras=extras, metrics=metrics)

    return RolloutStrategy(collect)


def judge_names(judges: str | tuple[str, ...]) -> tuple[str, ...]:
    """'a, b' or ('a', 'b') -> ('a', 'b'): the judges of `judge_samples`."""
    return tuple(n.strip() for n in (judges.split(",") if isinstance(judges, str) else judges) if n.strip())


def judge_samples(
    judges: str | tuple[str, ...], inner: RolloutStrategy | str | None = None
) -> RolloutStrategy:
    """Rule-based judges of every sample (CGPO's mixture of judges, arXiv 2409.20370): each judge
    is a registered reward function (`jaxrl_llm.rewards.register_reward`, e.g. 'finished',
    'is_number', 'format'), evaluated on the sample's text like a reward, and the sample passes
    it when the value is > 0.5. Writes extras['judge/<name>'] [N] (1.0 pass, 0.0 fail) for each
    name of `judges` (a tuple or a comma-separated string); they are not part of the reward."""
    names = judge_names(judges)
    functions = [(name, get_reward(name), 1.0) for name in names]
    inner = _resolve(inner)

    def collect(ctx: StrategyContext, prompts: PromptBatch, rng) -> Rollout:
        rollout = inner.collect(ctx, prompts, rng)
        index = _prompt_index(rollout, "judge_samples")
        completions, finished = ctx.decode(rollout.response_ids, rollout.response_mask, rollout.loss_mask)
        _, values = score_completions(
            functions, prompts.prompts[index], completions, prompts.answers[index], finished
        )
        verdicts = {f"judge/{name}": (values[name] > 0.5).astype(np.float32) for name in names}
        return rollout._replace(extras={**rollout.extras, **verdicts})

    return RolloutStrategy(collect)


def best_of_n(keep: int = 1, inner: RolloutStrategy | str | None = None) -> RolloutStrategy:
    """Best-of-n / rejection sampling (RAFT arXiv 2304.06767, ReST arXiv 2308.08998): of each
    group's samples keep the `keep` with the highest reward (ties: the earlier sample), so a
    step trains on B * keep rows. Pair with a supervised objective (`nll`) for RAFT. Metrics:
    best_of_n/reward_mean_all (every sample) beside the trainer's reward_mean (kept ones)."""
    inner = _resolve(inner)

    def collect(ctx: StrategyContext, prompts: PromptBatch, rng) -> Rollout:
        rollout = inner.collect(ctx, prompts, rng)
        rewards = np.asarray(rollout.rewards)
        groups = _groups(rollout.group_ids)
        if any(len(rows) < keep for rows in groups):
            raise ValueError(f"best_of_n: keep={keep} exceeds the group size {min(len(r) for r in groups)}")
        rows = [np.sort(rows[np.argsort(-rewards[rows], kind="stable")[:keep]]) for rows in groups]
        out = select_rows(rollout, np.concatenate(rows))
        return out._replace(metrics={**out.metrics, "best_of_n/reward_mean_all": float(rewards.mean())})

    return RolloutStrategy(collect)


def extend_prompts(prompt_ids, prompt_mask, additions: list, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts [N, P] with `additions[i]` (token ids) appended to row i's real
    tokens, left-padded to [N, P + width] (the new last column is a real token whenever the
    old one was). Used to continue sampling after a hint, a turn or an observation."""
    n, p = np.shape(prompt_ids)
    ids = np.zeros((n, p + width), np.int32)
    mask = np.zeros((n, p + width), np.int32)
    for i, extra in enumerate(additions):
        if len(extra) > width:
            raise ValueError(f"extend_prompts: row {i} adds {len(extra)} tokens, more than width={width}")
        real = np.asarray(prompt_ids[i])[np.asarray(prompt_mask[i]) > 0]
        row = np.concatenate([real, np.asarray(extra, np.int32)])
        ids[i, p + width - len(row) :] = row
        mask[i, p + width - len(row) :] = 1
    return ids, mask


def hinted_prefix(
    hint: Callable[[str, str], str],
    max_hint_tokens: int,
    loss_on_hint: bool = False,
    num_samples: int | None = None,
) -> RolloutStrategy:
    """Per-prompt hinted prefixes (guided rollouts: GHPO arXiv 2507.10628, Guide, LUFFY-style
    off-policy guidance): `hint(prompt_text, answer) -> text` (empty: no hint) is encoded and
    forced as the first tokens of each of the prompt's G responses; the policy continues from
    there (sampled with prompt + hint as context).

    The Rollout's response is [hint tokens | sampled tokens | padding] in a buffer of
    max_hint_tokens + sampling.max_new_tokens: response_mask 1 on both (attended), loss_mask 0
    on the hint unless `loss_on_hint`, logp_behav 0 on the hint (it was not sampled). Rewards
    score the whole response text (hint + continuation). extras: 'hint_length' [N] and
    'hinted' [N] (1.0 where a hint was given), beside group_sampling's.
    """

    def collect(ctx: StrategyContext, prompts: PromptBatch, rng) -> Rollout:
        g = num_samples or ctx.num_samples
        hints = []
        for text, answer in zip(prompts.prompts, prompts.answers, strict=True):
            h = hint(str(text), str(answer))
            ids = ctx.tokenizer.encode(h, add_special_tokens=False) if h else []
            if len(ids) > max_hint_tokens:
                raise ValueError(
                    f"hinted_prefix: a hint has {len(ids)} tokens > max_hint_tokens={max_hint_tokens}: {h!r}"
                )
            hints.append(ids)
        ids, mask = extend_prompts(prompts.prompt_ids, prompts.prompt_mask, hints, max_hint_tokens)
        out = ctx.sample(ids, mask, rng, num_samples=g)
        rows = prompts.repeat(g)
        hint_rows = [h for h in hints for _ in range(g)]
        t = ctx.sampling.max_new_tokens
        n = len(hint_rows)
        resp = np.full((n, max_hint_tokens + t), ctx.sampling.pad_id, np.int32)
        resp_mask = np.zeros_like(resp)
        loss = np.zeros(resp.shape, np.float32)
        logp = np.zeros(resp.shape, np.float32)
        for i, h in enumerate(hint_rows):
            k = len(h)
            length = int(out.response_mask[i].sum())
            resp[i, :k], resp[i, k : k + length] = h, out.response_ids[i, :length]
            resp_mask[i, : k + length] = 1
            loss[i, : k + length] = 1.0
            if not loss_on_hint:
                loss[i, :k] = 0.0
            logp[i, k : k + length] = out.logprobs[i, :length]
        completions, finished = ctx.decode(resp, resp_mask)
        scores = ctx.score(rows, resp, resp_mask, completions, finished)
        lengths = np.asarray([len(h) for h in hint_rows], np.float32)
        return Rollout(
            prompt_ids=rows.prompt_ids,
            prompt_mask=rows.prompt_mask,
            response_ids=resp,
            response_mask=resp_mask,
            loss_mask=loss,
            group_ids=np.repeat(np.arange(len(hints), dtype=np.int32), g),
            logp_behav=logp,
            rewards=scores.rewards,
            extras={
                **reward_extras(scores, finished, rows),
                "prompt_index": np.repeat(np.arange(len(hints), dtype=np.int32), g),
                "hint_length": lengths,
                "hinted": (lengths > 0).astype(np.float32),
            },
        )

    return RolloutStrategy(collect)


_STRATEGIES = Registry("rollout strategy", "rollout.name", "jaxrl_llm.register_strategy")


def register_strategy(name: str, *, overwrite: bool = False):
    """Decorator registering a strategy factory under `name` (selectable as config.rollout.name)."""
    return _STRATEGIES.register(name, overwrite=overwrite)


def registered_strategies() -> list[str]:
    return _STRATEGIES.names()


def make_strategy(name: str, **kwargs) -> RolloutStrategy:
    """Builds a registered strategy; unknown names and arguments name the config field."""
    factory = _STRATEGIES.get(name)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not takes_any:  # e.g. group_sampling(**sampling_overrides) takes any field
        raise ValueError(
            f"rollout strategy {name!r} has no argument(s) {unknown} (config fields "
            f"{', '.join('rollout.' + k for k in unknown)}); it accepts: {', '.join(params) or 'none'}"
        )
    return factory(**kwargs)


for _name, _factory in (
    ("group_sampling", group_sampling),
    ("dynamic_sampling", dynamic_sampling),
    ("greedy_baseline", greedy_baseline),
    ("best_of_n", best_of_n),
    ("reference_baseline", reference_baseline),
    ("judge_samples", judge_samples),
):
    register_strategy(_name)(_factory)
