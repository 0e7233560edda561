"""Off-policy replay: train on the rollouts the policy sampled k steps earlier.

`replay(k, inner)` collects with `inner` every step (so the sampler and the rewards run as
usual) and returns the rollout `inner` collected at step t − k, behaviour log-probs
(`logp_behav`) and all. It makes off-policy training deterministic and exactly reproducible:
the staleness is a fixed k, not whatever an asynchronous system happens to produce, and the
buffer of the last k rollouts is the strategy's host state (`RolloutStrategy.init_state`),
saved in every checkpoint, so a resumed run continues bit-identically.

    config.rollout = {"name": "replay", "k": 2}                       # inner: group_sampling()
    config.rollout = {"name": "replay", "k": 2, "inner": "dynamic_sampling"}

Running an off-policy method with replay. What "old" means is the algorithm's choice:

* the ratio against the behaviour policy (BAPO's, OPMD's and AsymRE's off-policy setting:
  π_old is the policy that sampled): chain `jaxrl_llm.transforms.correction.behaviour_as_old()`
  in front of the algorithm's transform (logp_old <- logp_behav), e.g.

      @jrl.register_algorithm("opmd_replay")
      def opmd_replay(**kw):
          return with_correction(jrl.make_algorithm("opmd", **kw), behaviour_as_old())

  then `config.algo.name = "opmd_replay"`, `config.rollout = {"name": "replay", "k": 2}`
  (BAPO and AsymRE alike). `with_correction` also logs the mismatch between the current
  policy and the k-step-old behaviour (`mismatch/*`, one extra forward for logp_old);
  `with_correction(algo, behaviour_as_old(), metrics=False, old_pass=False)` skips both.
  BAPO's π_rollout weights read `logp_behav` directly.
* decoupled PPO (the proximal policy = the trainer's current logp_old, the behaviour gap
  corrected by truncated importance weights): `with_correction(algorithm, truncated_is())`.

The first k steps of a phase (the buffer is still filling) train on the fresh rollout
(staleness 0): the phase starts on-policy and every step has a batch. Skipping those steps is
not offered: a step with no loss still moves the optimiser (weight decay, the schedule) and
would not be a clean skip. So rollouts 0 .. k − 1 are trained on twice (fresh, then k steps
later). Metrics: replay/staleness (t minus the step the trained batch was collected at),
replay/fresh_reward_mean (the mean reward of this step's own collection; the trainer's
reward_mean is the trained batch's). The trained batch carries the fresh collection's
strategy metrics.
"""

from __future__ import annotations

import numpy as np

from jaxrl_llm.rollout.strategies import PromptBatch, StrategyContext, make_strategy, register_strategy
from jaxrl_llm.types import Rollout, RolloutStrategy

_DICTS = ("extras", "metrics")


def pack_rollout(rollout: Rollout, prefix: str = "") -> dict:
    """A host Rollout as a flat dict of numpy arrays (`prefix` + field, `prefix` + 'extras/' +
    key, ...): the form strategy state is saved in. None fields are left out."""
    out = {}
    for field in rollout._fields:
        value = getattr(rollout, field)
        if field in _DICTS:
            out.update({f"{prefix}{field}/{k}": np.asarray(v) for k, v in value.items()})
        elif value is not None:
            out[f"{prefix}{field}"] = np.asarray(value)
    return out


def unpack_rollout(arrays: dict, prefix: str = "") -> Rollout:
    """The inverse of `pack_rollout` (metrics come back as Python floats)."""
    fields, dicts = {}, {name: {} for name in _DICTS}
    for key, value in arrays.items():
        if not key.startswith(prefix):
            continue
        name, _, rest = key[len(prefix) :].partition("/")
        if name in _DICTS:
            dicts[name][rest] = float(value) if name == "metrics" else value
        else:
            fields[name] = value
    return Rollout(**fields, **dicts)


def _with_prefix(state: dict | None, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in (state or {}).items()}


def _under(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def replay(k: int = 1, inner: RolloutStrategy | str | None = None) -> RolloutStrategy:
    """Train on `inner`'s rollout of step t − k (see the module docstring). k = 0: `inner`
    itself (staleness 0 every step). State: 'size' (rollouts buffered, at most k), the buffered
    rollouts oldest first under 'buffer/<i>/' (`pack_rollout`, plus the step each was
    collected at), and a stateful inner's state under 'inner/'."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"replay: k={k!r} must be an integer >= 0 (config field rollout.k)")
    if inner is None or isinstance(inner, str):
        inner = make_strategy(inner or "group_sampling")

    def init_state() -> dict:
        return {
            "size": np.asarray(0, np.int32),
            **_with_prefix(inner.init_state and inner.init_state(), "inner/"),
        }

    def collect(ctx: StrategyContext, prompts: PromptBatch, rng, state: dict):
        inner_state = _under(state, "inner/") if inner.init_state is not None else None
        fresh, inner_state = inner.run(ctx, prompts, rng, inner_state)
        buffer = [_under(state, f"buffer/{i}/") for i in range(int(state["size"]))]
        buffer.append({**pack_rollout(fresh._replace(metrics={})), "step": np.asarray(ctx.step, np.int64)})
        trained = buffer.pop(0) if len(buffer) > k else buffer[-1]
        rollout = unpack_rollout({key: v for key, v in trained.items() if key != "step"})
        metrics = {
            **fresh.metrics,
            "replay/staleness": float(ctx.step - int(trained["step"])),
            "replay/fresh_reward_mean": float(np.mean(fresh.rewards)),
        }
        new_state = {"size": np.asarray(len(buffer), np.int32), **_with_prefix(inner_state, "inner/")}
        for i, item in enumerate(buffer):
            new_state.update(_with_prefix(item, f"buffer/{i}/"))
        return rollout._replace(metrics=metrics), new_state

    return RolloutStrategy(collect, init_state)


register_strategy("replay")(replay)
