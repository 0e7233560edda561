"""Pass objects: the extra jitted forward passes an algorithm lists in `Algorithm.passes`.

The trainer's `prepare` runs them in order, then the algorithm's transform. Each declares what
it writes and what it needs ('reference', 'critic', 'aux:<name>'); a user's pass is a `Pass`
whose `run(ctx, batch)` reads `ctx` (`PassContext`: params, reference, critic, auxiliary
models and the trainer's forward functions) and returns the batch with its fields filled.
"""

from __future__ import annotations

from jaxrl_llm.models.auxiliary import reward_scores
from jaxrl_llm.train.forward import batch_policy_outputs
from jaxrl_llm.transforms.base import is_static_zero
from jaxrl_llm.types import Pass, PreferenceBatch


def reference_pass() -> Pass:
    """logp_ref [B, T] (PreferenceBatch: ref_chosen_logps / ref_rejected_logps) of the frozen
    reference policy (the policy at the start of the phase; under LoRA the base model)."""

    def run(ctx, batch):
        ref = ctx.policy_outputs(ctx.ref_params, batch).logp
        if isinstance(batch, PreferenceBatch):
            b = batch.chosen_ids.shape[0]
            return batch._replace(ref_chosen_logps=ref[:b], ref_rejected_logps=ref[b:])
        return batch._replace(logp_ref=ref)

    return Pass("reference", ("logp_ref",), run, frozenset({"reference"}))


def reference_passes(beta) -> tuple:
    """(reference_pass(),) unless beta is a static 0 (no KL term: no reference forward)."""
    return () if is_static_zero(beta) else (reference_pass(),)


def old_policy_pass() -> Pass:
    """logp_old and entropy_old [B, T] of the policy before this batch's updates."""

    def run(ctx, batch):
        out = ctx.policy_outputs(ctx.params, batch)
        return batch._replace(logp_old=out.logp, entropy_old=out.entropy)

    return Pass("old_logp", ("logp_old", "entropy_old"), run)


def critic_pass() -> Pass:
    """values [B, T]: the critic at sampling time (PPO family)."""

    def run(ctx, batch):
        return batch._replace(values=ctx.critic_values(ctx.critic_params, batch))

    return Pass("critic", ("values",), run, frozenset({"critic"}))


def teacher_pass(name: str, temperature: float = 1.0) -> Pass:
    """Per-token log-probs of the auxiliary causal LM `name` on the batch's completions:
    extras['teacher_logp/<name>'] [B, T] on a Rollout's responses (distillation, RTO-style
    token rewards); on a PreferenceBatch extras['teacher_logp/<name>/chosen'] and
    ['teacher_logp/<name>/rejected'] [B, T] (TGDPO's token-level reward model, MODPO's
    implicit margin reward). 0 where the completion's mask is 0."""

    def run(ctx, batch):
        model = ctx.aux[name]
        logp = batch_policy_outputs(model.config, model.params, batch, temperature).logp
        key = f"teacher_logp/{name}"
        if isinstance(batch, PreferenceBatch):
            b = batch.chosen_ids.shape[0]
            new = {f"{key}/chosen": logp[:b], f"{key}/rejected": logp[b:]}
        else:
            new = {key: logp}
        return batch._replace(extras={**batch.extras, **new})

    key = f"extras.teacher_logp/{name}"
    writes = (key, f"{key}/chosen", f"{key}/rejected")
    return Pass(f"teacher/{name}", writes, run, frozenset({f"aux:{name}"}))


def reward_model_pass(name: str) -> Pass:
    """Scores of the auxiliary reward model `name` (a multi-label model's Σ_k w_k r_k,
    `auxiliary.reward_scores`): extras['rm/<name>'] [B] on every row of a Rollout; on a
    PreferenceBatch extras['rm/<name>/chosen'] and ['rm/<name>/rejected'] [B]
    (for algorithms that read scores beside `rewards`, e.g. MODPO's margins; as a reward
    source use `config.rewards`)."""

    def run(ctx, batch):
        model = ctx.aux[name]
        b, key = batch, f"rm/{name}"
        if isinstance(batch, PreferenceBatch):
            new = {
                f"{key}/chosen": reward_scores(
                    model, model.params, b.prompt_ids, b.prompt_mask, b.chosen_ids, b.chosen_mask
                ),
                f"{key}/rejected": reward_scores(
                    model, model.params, b.prompt_ids, b.prompt_mask, b.rejected_ids, b.rejected_mask
                ),
            }
        else:
            new = {
                key: reward_scores(
                    model, model.params, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask
                )
            }
        return batch._replace(extras={**batch.extras, **new})

    key = f"extras.rm/{name}"
    return Pass(f"rm/{name}", (key, f"{key}/chosen", f"{key}/rejected"), run, frozenset({f"aux:{name}"}))


def aux_model_check(name: str, heads: tuple[str, ...], role: str, reason: str):
    """A `Pass.check`: the auxiliary model `name` has one of `heads` and the policy's vocabulary
    (it reads the policy's token ids), checked when the trainer is built. Errors name the config
    field (aux_models.<name>.head / .checkpoint); `role` names the model ("a distillation
    teacher"), `reason` says why the tokenizers must agree."""

    def check(model_config, aux):
        model, field = aux[name], f"aux_models.{name}"
        if model.head not in heads:
            raise ValueError(
                f"config field {field}.head={model.head!r}: {role} needs {' or '.join(map(repr, heads))}"
            )
        if model.config.vocab_size != model_config.vocab_size:
            raise ValueError(
                f"config field {field}.checkpoint={model.source!r} is {role} with a vocabulary of "
                f"{model.config.vocab_size} tokens, the policy's (config field model) has "
                f"{model_config.vocab_size}: {reason}, so both need the same tokenizer"
            )

    return check
