"""Reward calibration against verbalised overconfidence (Leng et al., "Taming overconfidence in
LLMs: reward calibration in RLHF", arXiv 2410.09724; official code SeanLeng1/Reward-Calibration,
`OpenRLHF/openrlhf/trainer/crm_trainer.py`, `models/loss.py`,
`trainer/ppo_utils/calibrated_experience_maker.py`, `cli/train_cppo.py`).

A verbalised confidence is a phrase `template.format(c)` ending a completion, c ∈ [0, 10]
(the paper's "Confidence: 8"; over the arithmetic task's alphabet e.g. " #8"). Reward models
learn to prefer confident completions whatever their quality; the two methods correct that:

  `ppo_m`  trains a calibrated reward model (head 'reward'): each preference pair becomes the
           pairs (chosen + high ≻ chosen + low) and (rejected + low ≻ rejected + high), host
           side before tokenisation (`confidence_pairs`, an `Algorithm.pair_records`), and the
           objective is PPO-M's loss on them. Ordinary PPO then uses the model as its reward.
  `ppo_c`  PPO whose rewards are calibrated online: the confidence is parsed from each sample
           and the sample scored without it (`confidence_sampling`), then the reward is moved
           up or down by the confidence around a running average of the rewards
           (`calibrated_rewards`, its EMA carried in the transform state).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.algorithms.ppo import ppo
from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.algorithms.reward_model import reward_model_objective
from jaxrl_llm.losses.reward import PPO_C_ADJUSTMENTS, ppo_c_rewards
from jaxrl_llm.rollout.strategies import sampled_rollout
from jaxrl_llm.transforms.base import chain, identity
from jaxrl_llm.types import Algorithm, Objective, Rollout, RolloutStrategy, RolloutTransform, add_metrics

CONFIDENCE = "confidence"  # Rollout.extras: each sample's stated confidence / 10 [B] (0.5 if none)
STATED = "confidence_stated"  # Rollout.extras: 1.0 where the sample states a confidence [B]
DEFAULT_TEMPLATE = " Confidence: {}"


def confidence_pattern(template: str, field: str = "algo.template") -> re.Pattern:
    """The regular expression of the phrase `template` writes: its text around '{}' (runs of
    whitespace matching any whitespace, leading whitespace optional, case-insensitive) with a
    number ('8', '7.5') in place of '{}', captured as group 1. A template needs exactly one
    '{}' and some text besides it (else every number of the answer would be a confidence)."""
    if template.count("{}") != 1:
        raise ValueError(f"{field}={template!r} must hold exactly one '{{}}' where the confidence goes")
    before, after = template.split("{}")
    if not (before + after).strip():
        raise ValueError(
            f"{field}={template!r} has no text besides '{{}}'; give the phrase around it (e.g. ' Confidence: {{}}')"
        )

    def literal(text: str) -> str:
        return r"\s*".join(re.escape(part) for part in text.split())

    return re.compile(r"\s*" + literal(before) + r"\s*(\d+(?:\.\d+)?)" + literal(after), re.IGNORECASE)


def parse_confidence(text: str, pattern: re.Pattern) -> tuple[str, float | None]:
    """(text without the phrase, confidence clipped to [0, 10]) of a completion, or (text, None)
    when it states none. As the official code: the first phrase gives the value, every phrase
    is removed and the result right-stripped."""
    match = pattern.search(text)
    if match is None:
        return text, None
    return pattern.sub("", text).rstrip(), min(max(float(match.group(1)), 0.0), 10.0)


def _number(value: float) -> str:
    return f"{value:g}"  # 9.0 -> '9', 7.5 -> '7.5'


def _check_levels(high: float, low: float) -> None:
    if not 0.0 <= low < high <= 10.0:
        raise ValueError(
            f"ppo_m: algo.low={low!r} and algo.high={high!r} must satisfy 0 <= low < high <= 10 (confidences on 0-10)"
        )


def confidence_pairs(
    template: str = DEFAULT_TEMPLATE, high: float = 9.0, low: float = 1.0, combined: bool = False
):
    """PPO-M's `Algorithm.pair_records`: B pair records (y_w, y_l) -> 2B, the first B
    (y_w + high, y_w + low), then B (y_l + low, y_l + high), `template.format(c)` appended to
    each completion (so it must be encodable by the task's tokenizer; a suffix too long for
    sampling.max_new_tokens is refused when the batch is built, naming that field); with
    `combined` the B plain pairs follow (3B rows)."""
    confidence_pattern(template)
    _check_levels(high, low)
    high_phrase, low_phrase = template.format(_number(high)), template.format(_number(low))

    def pair_records(records: list[dict]) -> list[dict]:
        from_chosen = [
            {**r, "chosen": r["chosen"] + high_phrase, "rejected": r["chosen"] + low_phrase} for r in records
        ]
        from_rejected = [
            {**r, "chosen": r["rejected"] + low_phrase, "rejected": r["rejected"] + high_phrase}
            for r in records
        ]
        return from_chosen + from_rejected + (list(records) if combined else [])

    return pair_records


def ppo_m_objective(margin: float = 0.0, blocks: int = 2) -> Objective:
    """PPO-M's loss on a batch of `confidence_pairs`: each of its 2B rows is a (preferred,
    dispreferred) pair, so

        L = (1/B) Σ_pairs [−log σ(r(cwh) − r(cwl) − m) − log σ(r(rwl) − r(rwh) − m)]
          = 2 · sequence_mean over the 2B rows of `bradley_terry_loss(r_first, r_second, m)`

    which is the mean over pairs of `losses.reward.ppo_m_loss` (the two terms of a pair may sit
    in different micro-batches: the sum is the same). With blocks = 3 (`combined`) the third
    block is the plain pairs and L gains their Bradley–Terry term: 3 · the row mean. outputs.scores: [4B] (the rows' first
    completions, then their second). Metrics: those of `reward_model_objective` over the 2B
    rows; 'accuracy' is the official "confidence accuracy", the mean of 1[r(cwh) > r(cwl)]
    and 1[r(rwl) > r(rwh)]."""
    bradley_terry = reward_model_objective(margin)

    def objective(outputs, batch, state):
        loss, metrics = bradley_terry(outputs, batch, state)
        return blocks * loss, metrics

    return objective


@register("ppo_m")
def ppo_m(
    template: str = DEFAULT_TEMPLATE,
    high: float = 9.0,
    low: float = 1.0,
    margin: float = 0.0,
    combined: bool = False,
) -> Algorithm:
    """PPO-M's calibrated reward model (arXiv 2410.09724, the official "version 5", `--loss
    sigmoid` of `crm_trainer.py` with `PairWiseLoss`): for each preference pair (x, y_w, y_l),
    with y ⊕ c the completion followed by the phrase `template.format(c)`,

        L = −log σ(r(x, y_w ⊕ high) − r(x, y_w ⊕ low) − m) − log σ(r(x, y_l ⊕ low) − r(x, y_l ⊕ high) − m)

    averaged over pairs (`ppo_m_objective`; the four sequences come from `confidence_pairs`, so
    a step of B pairs trains on 2B rows). Trains `RewardModel` (head 'reward') like
    `reward_model`: from the previous phase's trunk with a zero score head, or from a trained
    reward model when the initial checkpoint is one (`model.checkpoint` = an HF
    `*ForSequenceClassification` directory, e.g. a `reward_model` run exported with
    `save_checkpoint(..., head='reward')`, and sft.steps=0); the paper starts from a trained RM.
    Held-out evaluation scores the plain pairs (pair accuracy, calibration error).

    Defaults: m = 0 (the official margin loss is off by default); template " Confidence: {}"
    (the paper's phrase). high = 9 and low = 1 are assumptions: the paper's data gives each
    pair its own high and low confidences, whose distribution is not confirmed here; fixed
    values are used. `combined` is the official 'combined' variant, + −log σ(r(x, y_w) −
    r(x, y_l) − m) of the plain pair (the ranking kept while calibrating; 3B rows, and
    'accuracy' then also counts the plain pairs). Not reproduced: 'variant_1' (+ cwh vs rwl)
    and the K-wise listwise loss.
    """
    return Algorithm(
        data="preference",
        transform=identity(),
        objective=ppo_m_objective(margin, 3 if combined else 2),
        head="reward",
        pair_records=confidence_pairs(template, high, low, combined),
    )


def strip_confidence(
    tokenizer, pattern: re.Pattern, completions, finished, response_ids, response_mask, pad_id: int
):
    """The responses without their confidence phrases, to be scored. Rows [N]:

    returns (texts, confidence [N] = c/10 (0.5 where none is stated), stated [N] in {0, 1},
    ids, mask [N, T'] right-padded with pad_id). A row stating no confidence keeps its sampled
    tokens exactly; one stating one is its stripped text re-encoded (no special tokens) plus
    its stop token when it finished. T' = T unless a re-encoded row needs more."""
    response_ids, response_mask = np.asarray(response_ids), np.asarray(response_mask)
    n = len(completions)
    texts, rows = [], []
    confidence, stated = np.full(n, 0.5, np.float32), np.zeros(n, np.float32)
    for i, text in enumerate(completions):
        stripped, value = parse_confidence(text, pattern)
        texts.append(stripped)
        real = response_ids[i][response_mask[i] > 0].tolist()
        if value is None:
            rows.append(real)
            continue
        confidence[i], stated[i] = value / 10.0, 1.0
        rows.append(tokenizer.encode(stripped, add_special_tokens=False) + (real[-1:] if finished[i] else []))
    width = max([response_ids.shape[1], *(len(r) for r in rows)])
    ids, mask = np.full((n, width), pad_id, np.int32), np.zeros((n, width), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return texts, confidence, stated, ids, mask


def confidence_sampling(template: str = DEFAULT_TEMPLATE, num_samples: int | None = None) -> RolloutStrategy:
    """PPO-C's rollouts: `group_sampling`'s (G = num_samples, default `sampling.num_samples`,
    per prompt; the same rows, group ids and extras), each sample scored by the configured
    reward sources WITHOUT its confidence phrase (`strip_confidence`: verifiers get the
    stripped text, reward models the stripped tokens). The rollout keeps the sampled tokens,
    phrase included (what the policy is trained on). extras: CONFIDENCE (c/10, 0.5 when the
    sample states none, as the official default of 5) and STATED."""
    pattern = confidence_pattern(template)

    def collect(ctx, prompts, rng) -> Rollout:
        g = num_samples or ctx.num_samples
        out = ctx.sample(prompts.prompt_ids, prompts.prompt_mask, rng, num_samples=g)
        rows = prompts.repeat(g)
        completions, finished = ctx.decode(out.response_ids, out.response_mask)
        texts, confidence, stated, ids, mask = strip_confidence(
            ctx.tokenizer,
            pattern,
            completions,
            finished,
            out.response_ids,
            out.response_mask,
            ctx.sampling.pad_id,
        )
        scores = ctx.score(rows, ids, mask, texts, finished)
        return sampled_rollout(rows, out, scores, finished, g, **{CONFIDENCE: confidence, STATED: stated})

    return RolloutStrategy(collect)


class CalibrationState(NamedTuple):
    """PPO-C's state across steps: reward_avg, float32 scalar, the EMA r̄ of the batch-mean
    (clipped) reward."""

    reward_avg: jax.Array


def calibrated_rewards(
    alpha: float = 0.1,
    weight: float = 0.5,
    clip: float = 10.0,
    adjustment: str = "threshold",
    reward_avg_init: float = 0.0,
) -> RolloutTransform:
    """R <- clip(`ppo_c_rewards`(r̄, R, extras[CONFIDENCE], α, w, clip, adjustment), ±clip),
    r̄ <- the updated EMA (state `CalibrationState`, initialised to reward_avg_init). The second
    clip is the official `compute_reward`'s clamp of the calibrated reward. Needs the extras
    of `confidence_sampling`. Metrics: ppo_c/reward_avg (r̄ after the update),
    ppo_c/confidence_mean (mean c/10, 0.5 for samples stating none), ppo_c/stated_fraction,
    ppo_c/reward_mean (the calibrated rewards)."""
    if adjustment not in PPO_C_ADJUSTMENTS:
        raise ValueError(f"ppo_c: algo.adjustment={adjustment!r}; expected one of {PPO_C_ADJUSTMENTS}")

    def init():
        return CalibrationState(jnp.asarray(reward_avg_init, jnp.float32))

    def update(batch, state):
        if CONFIDENCE not in batch.extras:
            raise ValueError(
                f"calibrated_rewards needs extras[{CONFIDENCE!r}] from the confidence_sampling strategy "
                "(ppo_c's own); config.rollout.name replaced it: leave it ''"
            )
        confidence = batch.extras[CONFIDENCE]
        rewards, avg = ppo_c_rewards(
            state.reward_avg, batch.rewards, confidence, alpha, weight, clip, adjustment
        )
        rewards = jnp.clip(rewards, -clip, clip)
        metrics = {
            "ppo_c/reward_avg": avg,
            "ppo_c/confidence_mean": jnp.mean(confidence),
            "ppo_c/stated_fraction": jnp.mean(batch.extras[STATED]),
            "ppo_c/reward_mean": jnp.mean(rewards),
        }
        return add_metrics(batch._replace(rewards=rewards), **metrics), CalibrationState(avg)

    return RolloutTransform(init, update)


@register("ppo_c")
def ppo_c(
    alpha: float = 0.1,
    weight: float = 0.5,
    adjustment: str = "threshold",
    reward_clip: float = 10.0,
    reward_avg_init: float = 0.0,
    template: str = DEFAULT_TEMPLATE,
    clip_eps: float = 0.2,
    value_clip: float | None = 0.2,
    kl_coef: float = 0.01,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
) -> Algorithm:
    """PPO-C, PPO with calibrated reward calculation (arXiv 2410.09724; the official
    `calibrated_experience_maker.py`): each sample's verbalised confidence c ∈ [0, 10] is parsed
    (`template`; c = 5 when it states none, so a policy that never states one trains as plain
    PPO), the sample is scored without the phrase (`confidence_sampling`), and with c̃ = c/10

        R  ← clip(R, ±reward_clip);   r̄ ← α·mean_batch(R) + (1 − α)·r̄   (state, across steps)
        'threshold':  R̂ = R + w·|R|·(c̃ − 0.5) if R ≥ r̄ else R − w·|R|·(c̃ − 0.5)
        'difference': R̂ = R + w·(R − r̄)·(c̃ − 0.5)
        R̂ ← clip(R̂, ±reward_clip)

    (`calibrated_rewards`), then `ppo` on R̂ (critic, GAE, k1 KL in the reward, whitening).
    Defaults: α 0.1, w 0.5, 'threshold' (`cli/train_cppo.py`), clamp ±10 (the official code's);
    the PPO ones of OpenRLHF's PPO there (clip 0.2, value clip 0.2, KL 0.01, γ 1, λ 0.95).
    reward_avg_init: the official code starts r̄ at the reward model's stored mean (its mean
    score over its evaluation set); no such value is stored here, so give it (default 0). With
    a 0/1 verifier as the reward, 'threshold' leaves wrong answers (R = 0, |R| = 0) unchanged;
    'difference' penalises their stated confidence. Not reproduced: avg_type 'std' and the
    official stopping criterion that ends some samples at a stated confidence.
    """
    base = ppo(clip_eps=clip_eps, value_clip=value_clip, kl_coef=kl_coef, gamma=gamma, lam=lam, whiten=whiten)
    calibrate = calibrated_rewards(alpha, weight, reward_clip, adjustment, reward_avg_init)
    return base._replace(strategy=confidence_sampling(template), transform=chain(calibrate, base.transform))
