"""DPO fed by frozen auxiliary models (`config.aux_models`): TGDPO, where a token-level reward
model weights every token's log-ratio, and MODPO, where the reward models of other objectives
enter as a margin. Both are the DPO core (`losses.preference.dpo_loss`) on other inputs:
TGDPO on token-weighted sequence scores (`tgdpo_loss`), MODPO with β/w_0 and a per-pair margin
(`modpo_loss`). The auxiliary models' outputs reach the `PreferenceBatch` through the generic
passes (`teacher_pass`, `reward_model_pass`), whose `Pass.check` refuses a model over another
vocabulary than the policy's when the trainer is built.

    config.aux_models = {"token_rm": {"checkpoint": "runs/dpo/checkpoints/main/200", "head": "causal_lm"}}
    config.algo = {"name": "tgdpo", "alpha": 0.5}

    config.aux_models = {"harmless": {"checkpoint": "/models/harmless-rm", "head": "reward"}}
    config.algo = {"name": "modpo", "margin_models": "harmless", "weights": (0.5, 0.5)}
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.losses.preference import MODPO_LINKS, modpo_loss, sequence_logps, tgdpo_loss
from jaxrl_llm.objectives import sequence_mean
from jaxrl_llm.train.passes import aux_model_check, reference_pass, reward_model_pass, teacher_pass
from jaxrl_llm.transforms.base import identity
from jaxrl_llm.types import Algorithm, Objective, Pass


def _extra(batch, key: str, algorithm: str, producer: str):
    extras = batch.extras or {}
    if key not in extras:
        raise ValueError(
            f"{algorithm}: batch.extras has no {key!r}; the algorithm's passes write it ({producer}), "
            f"the batch has {sorted(extras)}"
        )
    return extras[key]


def tgdpo_objective(
    token_rm: str = "token_rm", beta: float = 0.1, alpha: float = 0.5, clamp_weights: bool = False
) -> Objective:
    """Mean over pairs of `tgdpo_loss` on the per-token log-probs of the policy (outputs.logp:
    chosen rows, then rejected rows), the reference and the auxiliary causal LM `token_rm`
    (extras['teacher_logp/<token_rm>/chosen' | '/rejected'], `teacher_pass`). Metrics (means
    over pairs): reward_chosen / reward_rejected / reward_margin / reward_accuracy (β·ρ, as DPO),
    token_weight_chosen / token_weight_rejected."""
    key = f"teacher_logp/{token_rm}"

    def objective(outputs, batch, state):
        b = batch.chosen_ids.shape[0]
        producer = f"teacher_pass({token_rm!r})"
        losses, pair_metrics = tgdpo_loss(
            outputs.logp[:b],
            outputs.logp[b:],
            batch.ref_chosen_logps,
            batch.ref_rejected_logps,
            _extra(batch, f"{key}/chosen", "tgdpo", producer),
            _extra(batch, f"{key}/rejected", "tgdpo", producer),
            batch.chosen_mask,
            batch.rejected_mask,
            beta,
            alpha,
            clamp_weights,
        )
        metrics = {k: sequence_mean(v, batch) for k, v in pair_metrics.items()}
        return sequence_mean(losses, batch), metrics

    return objective


@register("tgdpo")
def tgdpo(
    beta: float = 0.1, alpha: float = 0.5, token_rm: str = "token_rm", clamp_weights: bool = False
) -> Algorithm:
    """TGDPO (Zhu et al., arXiv 2506.14574, ICML 2025; official dvlab-research/TGDPO
    `src/llamafactory/train/tgdpo/trainer.py::dpo_loss`): DPO whose per-token β is modulated by
    a frozen token-level reward model π_rm = config.aux_models.<token_rm> (head 'causal_lm': any
    DPO/SimPO-trained model over the policy's tokenizer, e.g. an earlier DPO run's
    `checkpoints/main/<step>`),

        z = Σ_t β(1 + α·r̂^w_t)·q^w_t − Σ_t β(1 − α·r̂^l_t)·q^l_t,    L = −log σ(z)
        q_t = lp_θ,t − lp_ref,t,   r̂_t = β·(lp_rm,t − lp_ref,t)    (summed over completion tokens)

    (`tgdpo_loss`). The reference is the frozen initial policy (`reference_pass`), π_rm's
    per-token log-probs come from `teacher_pass(token_rm)` at temperature 1 (the policy's and the
    reference's at sampling.temperature, 1 by default: keep it so r̂ compares like with like).
    Defaults (the official example config): β 0.1, α 0.5; α = 0 is DPO. clamp_weights: clamp
    the token weights 1 ± α·r̂ at 0 (off, as the official code, which lets them go negative
    where α·|r̂| > 1)."""
    check = aux_model_check(
        token_rm,
        ("causal_lm",),
        "TGDPO's token-level reward model",
        "TGDPO scores the pairs' token ids with it",
    )
    passes = (reference_pass(), teacher_pass(token_rm)._replace(check=check))
    objective = tgdpo_objective(token_rm, beta, alpha, clamp_weights)
    return Algorithm(data="preference", transform=identity(), objective=objective, passes=passes)


def margin_model_pass(name: str) -> Pass:
    """The margin model `name` of MODPO on both completions of every pair: `reward_model_pass`
    for an auxiliary model with head 'reward' (extras['rm/<name>/chosen' | '/rejected'] [B]),
    `teacher_pass` for one with head 'causal_lm' (extras['teacher_logp/<name>/chosen' |
    '/rejected'] [B, T]); its check refuses other heads and another vocabulary."""
    scorer, teacher = reward_model_pass(name), teacher_pass(name)

    def run(ctx, batch):
        return (scorer if ctx.aux[name].head == "reward" else teacher).run(ctx, batch)

    check = aux_model_check(
        name, ("reward", "causal_lm"), "a MODPO margin model", "MODPO scores the pairs' token ids with it"
    )
    writes = scorer.writes[1:] + teacher.writes[1:]
    return Pass(f"margin/{name}", writes, run, frozenset({f"aux:{name}"}), check)


def margin_rewards(batch, names, margin_beta: float = 0.1):
    """MODPO's margin rewards r_k(x, y) of the chosen and rejected completions, [B, K − 1] each:
    a reward head's score (extras['rm/<name>/…']), or the implicit DPO reward
    margin_beta·(S_k(y) − S_ref(y)) of a causal LM (summed log-probs of extras['teacher_logp/
    <name>/…'] and the reference's; the official `ImplicitRewardWrapper`, β 0.1)."""
    chosen, rejected = [], []
    for name in names:
        extras = batch.extras or {}
        if f"rm/{name}/chosen" in extras:
            chosen.append(extras[f"rm/{name}/chosen"])
            rejected.append(extras[f"rm/{name}/rejected"])
            continue
        key, producer = f"teacher_logp/{name}", f"margin_model_pass({name!r})"
        lm_chosen = _extra(batch, f"{key}/chosen", "modpo", producer)
        lm_rejected = _extra(batch, f"{key}/rejected", "modpo", producer)
        ref_chosen = sequence_logps(batch.ref_chosen_logps, batch.chosen_mask)
        ref_rejected = sequence_logps(batch.ref_rejected_logps, batch.rejected_mask)
        chosen.append(margin_beta * (sequence_logps(lm_chosen, batch.chosen_mask) - ref_chosen))
        rejected.append(margin_beta * (sequence_logps(lm_rejected, batch.rejected_mask) - ref_rejected))
    return jnp.stack(chosen, axis=-1), jnp.stack(rejected, axis=-1)


def modpo_objective(
    names, weights, beta: float = 0.1, margin_beta: float = 0.1, link: str = "sigmoid"
) -> Objective:
    """Mean over pairs of `modpo_loss` (summed log-probs, the `margin_rewards` of the models
    `names`). Metrics (means over pairs): reward_chosen / reward_rejected = R(y_w) / R(y_l),
    reward_margin, reward_accuracy; margin_reward_<name> = r_k(y_w) − r_k(y_l)."""

    def objective(outputs, batch, state):
        b = batch.chosen_ids.shape[0]
        margin_chosen, margin_rejected = margin_rewards(batch, names, margin_beta)
        losses, pair_metrics = modpo_loss(
            sequence_logps(outputs.logp[:b], batch.chosen_mask),
            sequence_logps(outputs.logp[b:], batch.rejected_mask),
            sequence_logps(batch.ref_chosen_logps, batch.chosen_mask),
            sequence_logps(batch.ref_rejected_logps, batch.rejected_mask),
            margin_chosen,
            margin_rejected,
            weights,
            beta,
            link,
        )
        metrics = {k: sequence_mean(v, batch) for k, v in pair_metrics.items()}
        for k, name in enumerate(names):
            metrics[f"margin_reward_{name}"] = sequence_mean(
                margin_chosen[:, k] - margin_rejected[:, k], batch
            )
        return sequence_mean(losses, batch), metrics

    return objective


def _names(value) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(n).strip() for n in items if str(n).strip())


@register("modpo")
def modpo(
    beta: float = 0.1,
    weights=(0.5, 0.5),
    margin_models="margin_rm",
    margin_beta: float = 0.1,
    loss_type: str = "sigmoid",
) -> Algorithm:
    """MODPO (Zhou et al., "Beyond one-preference-fits-all alignment", arXiv 2310.03708; official
    ZHZisZZ/modpo `src/trainer/modpo_trainer.py::modpo_loss`): DPO on one objective's
    preferences with the other objectives' frozen reward models as a margin,

        R(y) = (1/w_0)·[β·ρ(y) − Σ_{k≥1} w_k·r_k(x, y)],    L = −log σ(R(y_w) − R(y_l))

    (`modpo_loss`; loss_type 'hinge': max(0, 1 − [R(y_w) − R(y_l)])). margin_models: the names
    of the margin models in config.aux_models (comma-separated, or a sequence), each a reward
    head's score (head 'reward') or the implicit DPO reward margin_beta·(S_k − S_ref) of a
    causal LM (head 'causal_lm': a DPO run on objective k from the same initial policy, whose
    reference is this run's). weights: (w_0, w_1, ..., w_{K−1}), w_0 > 0 for the preferences in
    the batch, one more for each margin model (a sequence, or comma-separated). Defaults: β 0.1,
    margin β 0.1 (the official `ImplicitRewardWrapper`), w (0.5, 0.5); the paper sweeps
    w = (w, 1 − w) to trace a Pareto front."""
    names = _names(margin_models)
    weights = tuple(float(w) for w in (weights.split(",") if isinstance(weights, str) else weights))
    if not names:
        raise ValueError(
            "modpo: config field algo.margin_models names no model; give config.aux_models names"
        )
    if len(weights) != len(names) + 1:
        raise ValueError(
            f"modpo: config field algo.weights={weights} has {len(weights)} weights; with "
            f"algo.margin_models={names} it needs {len(names) + 1} (w_0 for the preference data, "
            "then one per margin model)"
        )
    if not weights[0] > 0:
        raise ValueError(f"modpo: config field algo.weights={weights}: w_0 must be > 0 (R divides by it)")
    if loss_type not in MODPO_LINKS:
        raise ValueError(f"modpo: config field algo.loss_type={loss_type!r}; expected one of {MODPO_LINKS}")
    passes = (reference_pass(), *(margin_model_pass(name) for name in names))
    objective = modpo_objective(names, weights, beta, margin_beta, loss_type)
    return Algorithm(data="preference", transform=identity(), objective=objective, passes=passes)
