"""Constrained RLHF: CGPO's calibrated-regularised policy gradient (CRPG) with a mixture of
judges, and PPO with the χ² occupancy-measure regulariser of Laidlaw et al. (`chi2_ppo`; their
"ORPO", not the preference method `orpo`). The pure quantities are in
`jaxrl_llm.losses.constrained`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.algorithms.ppo import ppo
from jaxrl_llm.algorithms.registry import register
from jaxrl_llm.algorithms.reinforce import reinforce_objective
from jaxrl_llm.losses import constrained as cl
from jaxrl_llm.losses.preference import sequence_logps
from jaxrl_llm.objectives import loss_mask, sequence_mean, sum_objectives
from jaxrl_llm.rollout.strategies import judge_names, judge_samples, reference_baseline
from jaxrl_llm.train.passes import old_policy_pass, reference_pass
from jaxrl_llm.types import Algorithm, Objective, RolloutTransform, add_metrics

sg = jax.lax.stop_gradient
CHI2_DIVERGENCES = ("sqrt_chi2", "kl")
_CHI2_STAT = "chi2/chi2"


def crpg_transform(judges: tuple[str, ...], kl_threshold, max_length: int | None = None) -> RolloutTransform:
    """CRPG's advantages on every loss token, from the whole batch (before the updates):

        KL_i = Σ_t (logp_old − logp_ref),  judge_i = Π_j 1[extras['judge/<j>'] > 0.5] · 1[L_i ≤ max_length]
        ĉ_i = `crpg_rewards`(R_i, extras['baseline_rewards'], judge_i, KL_i, kl_threshold)
        A_i = ĉ_i − mean_batch ĉ                                  (`crpg_advantages`)

    (L_i the loss tokens, EOS included; no length judge with max_length None). The batch-mean
    baseline is the rollout batch's, the same for every mini-batch and micro-batch. Metrics:
    cgpo/judge/<name> (pass rate of each judge, 'length' included), cgpo/judge_pass (all
    judges), cgpo/kl_gated_fraction (rows with KL_i ≥ KL_thr: gate closed), cgpo/seq_kl,
    cgpo/calibrated_reward (mean σ(R − R_base)), cgpo/c_hat_mean.
    """

    def update(r, state):
        missing = [f for f in ("rewards", "logp_old", "logp_ref") if getattr(r, f) is None]
        missing += [
            f"extras[{k!r}]"
            for k in ("baseline_rewards", *(f"judge/{j}" for j in judges))
            if k not in r.extras
        ]
        if missing:
            raise ValueError(
                f"cgpo's transform needs {', '.join(missing)}: its strategy (judge_samples(reference_baseline())) "
                "writes the extras, its reference and old-policy passes the log-probs; a config.rollout "
                "strategy replaces that strategy"
            )
        mask = loss_mask(r)
        seq_kl = sequence_logps(r.logp_old - r.logp_ref, mask)
        passed = {j: r.extras[f"judge/{j}"] > 0.5 for j in judges}
        if max_length is not None:
            passed["length"] = jnp.sum(mask, axis=-1) <= max_length
        judge = jnp.ones_like(seq_kl)
        for verdict in passed.values():
            judge = judge * verdict
        baseline = r.extras["baseline_rewards"]
        c_hat = cl.crpg_rewards(r.rewards, baseline, judge, seq_kl, kl_threshold)
        r = r._replace(advantages=cl.crpg_advantages(c_hat)[:, None] * mask)
        metrics = {f"cgpo/judge/{j}": jnp.mean(v) for j, v in passed.items()}
        metrics["cgpo/judge_pass"] = jnp.mean(judge)
        metrics["cgpo/kl_gated_fraction"] = jnp.mean(seq_kl >= kl_threshold)
        metrics["cgpo/seq_kl"] = jnp.mean(seq_kl)
        metrics["cgpo/calibrated_reward"] = jnp.mean(cl.calibrated_reward(r.rewards, baseline))
        metrics["cgpo/c_hat_mean"] = jnp.mean(c_hat)
        return add_metrics(r, **metrics), state

    return RolloutTransform(init=lambda: (), update=update)


@register("cgpo")
def cgpo(
    judges: str = "finished,is_number",
    kl_threshold: float = 10.0,
    max_length: int | None = None,
    loss_agg: str = "token_mean",
) -> Algorithm:
    """CGPO with its CRPG optimiser (Xu et al., "The Perfect Blend: Redefining RLHF with Mixture
    of Judges", arXiv 2409.20370; TRL `trl/trainer/cgpo_trainer.py::crpg_optimization`, read
    for the formula): k = `sampling.num_samples` samples per prompt from the current policy,

        c_i = σ(R(x, y_i) − R(x, y_base))       y_base the dataset's reference response
        ĉ_i = judge_i · c_i · max(1 − KL_i/KL_thr, 0),   KL_i = Σ_t log π_old/π_ref (y_i)
        L = −Σ_{i,t} (ĉ_i − mean_batch ĉ)·log π_θ(y_i,t) / #tokens

    (`crpg_transform`, then the REINFORCE loss `reinforce_objective(loss_agg)`, no ratio;
    π_old's log-probs from the trainer's old-policy pass, where TRL reads the sampler's).
    R is `config.rewards` (a verifier or an auxiliary reward model); R(x, y_base) comes from
    the `reference_baseline` strategy, which scores final_answer(answer) + EOS with the same
    sources (1 for a correct answer under exact_match; a reward model scores its tokens).
    Judges (`judge_samples`): `judges` names registered reward functions, each a boolean check
    of a sample (pass: value > 0.5): 'finished' (stopped with EOS), 'is_number' (the completion
    is one number: arithmetic's format judge), 'format', 'exact_match', or any registered one;
    max_length adds a length judge (at most that many loss tokens, EOS included; None: off).

    Defaults: the TRL docs' example KL_thr = 10 (task-specific in the paper, Table values not
    retrieved) and k = 4 (TRL's `k`; set sampling.num_samples). loss_agg 'token_mean' divides
    by the mini-batch's tokens as the spec's loss; TRL's trainer divides the summed sequence
    log-probs by the number of samples ('seq_mean_token_sum'). The paper's other optimisers
    (CRRAFT, CODPO) and its LLM judges are not included.
    """
    try:
        strategy = judge_samples(judges, reference_baseline())
    except ValueError as error:  # an unknown judge: name the config field
        raise ValueError(f"cgpo: config field algo.judges={judges!r}: {error}") from None
    if isinstance(kl_threshold, int | float) and kl_threshold <= 0:
        raise ValueError(
            f"cgpo: config field algo.kl_threshold={kl_threshold} must be > 0 (nats per sequence)"
        )
    if max_length is not None and max_length < 1:
        raise ValueError(
            f"cgpo: config field algo.max_length={max_length} must be >= 1 tokens, or None (no length judge)"
        )
    return Algorithm(
        data="rollout",
        strategy=strategy,
        transform=crpg_transform(judge_names(judges), kl_threshold, max_length),
        objective=reinforce_objective(loss_agg),
        passes=(reference_pass(), old_policy_pass()),
    )


def _chi2_statistics(clip: float):
    """`Algorithm.statistics`: the micro-batch's share of the mini-batch χ̂² of the current policy."""

    def statistics(outputs, batch, state):
        log_ratio = sequence_logps(outputs.logp - batch.logp_ref, loss_mask(batch))
        return {_CHI2_STAT: sequence_mean(cl.occupancy_divergences(log_ratio, clip)[0], batch)}

    return statistics


def occupancy_regulariser(coef: float, divergence: str = "sqrt_chi2", clip: float = 10.0) -> Objective:
    """Laidlaw et al.'s occupancy-measure regulariser in the loss (arXiv 2403.03185), over the
    sequences of the mini-batch, L_i = Σ_t (logp − logp_ref) (`occupancy_divergences`, clip):

        'sqrt_chi2':  coef · sqrt(max(χ̂², 1e-4)),   χ̂² = mean_i χ²_i
        'kl':         coef · K̂L,                    K̂L = mean_i KL_i

    The square root of a mean is not a sum over micro-batches: χ̂² is the mini-batch total of
    `Algorithm.statistics` at the update's parameters (`outputs.stats`; this batch's own outside
    the trainer), and each micro-batch contributes the value's share and the gradient
    coef·∇χ̂²_micro / (2·sqrt(χ̂²)) (none while χ̂² < 1e-4), which sum to the mini-batch's exactly.
    Metrics: chi2/chi2, chi2/kl, chi2/sqrt_chi2, chi2/ratio_clip_fraction and
    chi2/inv_ratio_clip_fraction (sequences with L > clip, L < −clip).
    """
    if divergence not in CHI2_DIVERGENCES:
        raise ValueError(
            f"chi2_ppo: config field algo.divergence={divergence!r}; expected one of {CHI2_DIVERGENCES}"
        )
    statistics = _chi2_statistics(clip)

    def objective(outputs, batch, state):
        log_ratio = sequence_logps(outputs.logp - batch.logp_ref, loss_mask(batch))
        chi2, kl = (sequence_mean(d, batch) for d in cl.occupancy_divergences(log_ratio, clip))
        metrics = {
            "chi2/chi2": sg(chi2),
            "chi2/kl": sg(kl),
            "chi2/ratio_clip_fraction": sequence_mean(log_ratio > clip, batch),
            "chi2/inv_ratio_clip_fraction": sequence_mean(log_ratio < -clip, batch),
        }
        if divergence == "kl":
            return coef * kl, metrics
        stats = (
            outputs.stats
            if outputs.stats is not None
            else statistics(jax.tree.map(sg, outputs), batch, state)
        )
        total = sg(stats[_CHI2_STAT])
        root = cl.sqrt_chi2(total)
        share = sequence_mean(jnp.full(log_ratio.shape, root), batch)  # sums to root over the micro-batches
        slope = jnp.where(total > 1e-4, 0.5 / root, 0.0)
        return coef * (share + slope * (chi2 - sg(chi2))), {**metrics, "chi2/sqrt_chi2": share}

    return objective


@register("chi2_ppo")
def chi2_ppo(
    coef: float = 0.0008,
    divergence: str = "sqrt_chi2",
    log_ratio_clip: float = 10.0,
    clip_eps: float = 0.4,
    value_clip: float | None = 0.4,
    kl_coef: float = 0.0,
    reward_clip: float | None = 10.0,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
    loss_agg: str = "token_mean",
) -> Algorithm:
    """PPO regularised towards the reference by the χ² divergence of occupancy measures
    (Laidlaw et al., "Correlated Proxies: A New Definition and Improved Mitigation for Reward
    Hacking", arXiv 2403.03185, whose "ORPO" this is; official cassidylaidlaw/llm_optimization
    `src/ppo/custom_trlx_trainers/modeling.py::PPOWithRefPolicyConfig.loss`):

        loss = PPO (critic, GAE, clipped surrogate and value loss) + coef·sqrt(max(χ̂², 1e-4))
        χ̂² = mean_i [(e^{L_i} − 1) + (e^{−L_i} − 1)],   L_i = Σ_t (log π_θ − log π_ref)(y_i,t)

    the exps continued linearly beyond |L| = log_ratio_clip (`occupancy_regulariser`, exact
    over micro-batches through `Algorithm.statistics`). divergence 'kl' puts coef·mean_i
    [L_i + e^{−L_i} − 1] there instead (the code's KL option, no square root).

    Defaults from the official run (README: `--use_sqrt_chi2=True --regularize_in_loss=True
    --coeff=0.0008`; `configs/ppo_config.yaml`): coef 0.0008, PPO clip 0.4, value clip 0.4,
    reward clip ±10, γ 1, λ 0.95, whitened advantages, token-mean loss (trlx). kl_coef: a
    per-token k1 KL penalty in the reward, 0 here (the χ² term is the regulariser, in the loss,
    not the reward); the released script also sets trlx's init_kl_coef to coeff, so its rewards
    keep a 0.0008·k1 penalty beside it (kl_coef=0.0008 reproduces that). The code takes χ̂² over each trlx mini-batch; here over the
    trainer's mini-batch (`train.minibatches`). ppo_epochs 4 there: set train.epochs.
    """
    base = ppo(
        clip_eps=clip_eps,
        value_clip=value_clip,
        kl_coef=kl_coef,
        gamma=gamma,
        lam=lam,
        whiten=whiten,
        reward_clip=reward_clip,
        loss_agg=loss_agg,
    )
    passes = (
        base.passes if any(p.name == "reference" for p in base.passes) else (*base.passes, reference_pass())
    )
    return base._replace(
        objective=sum_objectives(base.objective, occupancy_regulariser(coef, divergence, log_ratio_clip)),
        passes=passes,
        statistics=_chi2_statistics(log_ratio_clip) if divergence == "sqrt_chi2" else None,
    )
