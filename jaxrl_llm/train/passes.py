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
    """extras['teacher_logp/<name>'] [B, T]: per-token log-probs of the auxiliary causal LM
    `name` on the batch's responses (distillation, RTO-style token rewards)."""

    def run(ctx, batch):
        model = ctx.aux[name]
        out = batch_policy_outputs(model.config, model.params, batch, temperature)
        return batch._replace(extras={**batch.extras, f"teacher_logp/{name}": out.logp})

    return Pass(f"teacher/{name}", (f"extras.teacher_logp/{name}",), run, frozenset({f"aux:{name}"}))


def reward_model_pass(name: str) -> Pass:
    """extras['rm/<name>'] [B]: the auxiliary reward model `name` scored on every row (for
    algorithms that read scores beside `rewards`; as a reward source use `config.rewards`)."""

    def run(ctx, batch):
        model = ctx.aux[name]
        b = batch
        score = reward_scores(
            model, model.params, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask
        )
        return batch._replace(extras={**batch.extras, f"rm/{name}": score})

    return Pass(f"rm/{name}", (f"extras.rm/{name}",), run, frozenset({f"aux:{name}"}))
