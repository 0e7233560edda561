"""Reward-model ensembles in one command (`config.job = 'reward_ensemble'`): K reward models
from one config, each in its own run, and the config snippet that hands them to an RL run.

    python -m jaxrl_llm.main --config=configs/reward_model_arithmetic.py --workdir=runs/rm_ensemble \\
        --config.job=reward_ensemble --config.ensemble.members=3 --config.ensemble.split=subset \\
        --config.ensemble.records=4096

Member k trains in `<workdir>/member<k>` (each an ordinary run: it resumes, and a finished
member is skipped when the command is repeated):
- split 'seed': the whole training split, seed `config.seed + k` (Coste et al. 2023, arXiv
  2310.02743: ensembles over pre-training / fine-tuning seeds);
- split 'subset': disjoint slices of `records` training records each, `data.train_records =
  records`, `data.train_offset = k·records`, and seed `config.seed + k` (different data: the
  other source of diversity Eisenstein et al. 2023, arXiv 2312.09244, compare with seeds).

Then `<workdir>/ensemble.json` holds `aux_models` (rm0 .. rm{K−1}: each member's last
checkpoint, head 'reward') and `reward_ensembles` ({'rm': members, combine, coef}) to merge
into a GRPO / PPO config (`reward_ensemble_source`); combine 'mean_minus_var' (UWO), 'min'
(WCO), 'mean' or 'mean_minus_std' (jaxrl_llm/rewards/models.py). Each member runs every phase
of the config: point `model.checkpoint` at a warm-start (and `sft.steps=0`) to share one.
"""

from __future__ import annotations

import copy
import json
import os

import ml_collections

from jaxrl_llm.rewards.models import ENSEMBLE_COMBINE
from jaxrl_llm.train.validation import ConfigError
from jaxrl_llm.train.workdir import atomic_write_json

ENSEMBLE_FILE = "ensemble.json"


def check_ensemble(config) -> None:
    """ConfigErrors naming the `ensemble.*` field, before any member trains."""
    e = config.ensemble
    if config.algo.name != "reward_model":
        raise ConfigError(
            f"config field job='reward_ensemble' trains reward models, but algo.name={config.algo.name!r}; "
            "use a reward-model config (e.g. configs/reward_model_arithmetic.py)"
        )
    if not isinstance(e.members, int) or e.members < 2:
        raise ConfigError(f"config field ensemble.members={e.members!r} must be an integer >= 2")
    if e.split not in ("seed", "subset"):
        raise ConfigError(f"config field ensemble.split={e.split!r} must be 'seed' or 'subset'")
    if e.split == "subset" and not (isinstance(e.records, int) and e.records > 0):
        raise ConfigError(
            f"config field ensemble.records={e.records!r}: split 'subset' needs the number of training "
            "records per member (> 0), e.g. --config.ensemble.records=4096"
        )
    if e.combine not in ENSEMBLE_COMBINE:
        raise ConfigError(f"config field ensemble.combine={e.combine!r} must be one of {ENSEMBLE_COMBINE}")


def member_config(config, k: int) -> ml_collections.ConfigDict:
    """Member k's config: `config` as a plain training job, seed + k, and for split 'subset'
    the k-th disjoint slice of `ensemble.records` training records."""
    c = copy.deepcopy(config)
    c.job = "train"
    c.seed = config.seed + k
    if config.ensemble.split == "subset":
        c.data.train_records = config.ensemble.records
        c.data.train_offset = config.data.train_offset + k * config.ensemble.records
    return c


def train_reward_ensemble(config, workdir: str) -> dict:
    """Trains the `config.ensemble.members` reward models (module docstring) and writes
    `<workdir>/ensemble.json`; returns its contents."""
    from jaxrl_llm.train.trainer import train

    check_ensemble(config)
    members = {}
    for k in range(config.ensemble.members):
        member_dir = os.path.join(workdir, f"member{k}")
        print(f"[ensemble] member {k + 1}/{config.ensemble.members} in {member_dir}", flush=True)
        train(member_config(config, k), member_dir)
        last = max(int(s) for s in os.listdir(os.path.join(member_dir, "checkpoints", "main")) if s.isdigit())
        members[f"rm{k}"] = {
            "checkpoint": os.path.join(os.path.abspath(member_dir), "checkpoints", "main", str(last)),
            "head": "reward",
        }
    e = config.ensemble
    spec = {
        "aux_models": members,
        "reward_ensembles": {"rm": {"members": ",".join(members), "combine": e.combine, "coef": e.coef}},
    }
    atomic_write_json(os.path.join(workdir, ENSEMBLE_FILE), spec)
    flags = " ".join(f'--config.{field}="{spec[field]}"' for field in ("aux_models", "reward_ensembles"))
    print(
        f"[ensemble] wrote {os.path.join(workdir, ENSEMBLE_FILE)}; reward a GRPO/PPO run with it by "
        f"`jaxrl_llm.train.ensemble.reward_ensemble_source(config, path)` or the flags\n  {flags} "
        "--config.rewards=\"{'rm': 1.0}\"",
        flush=True,
    )
    return spec


def reward_ensemble_source(
    c: ml_collections.ConfigDict, path: str, name: str = "rm"
) -> ml_collections.ConfigDict:
    """`c` rewarded by the ensemble of `path` (an `ensemble.json`, or the directory holding it)
    alone, with the exact-match verifier logged at weight 0 (the gold reward)."""
    if os.path.isdir(path):
        path = os.path.join(path, ENSEMBLE_FILE)
    with open(path) as f:
        spec = json.load(f)
    c.aux_models = ml_collections.ConfigDict(spec["aux_models"])
    c.reward_ensembles = ml_collections.ConfigDict({name: spec["reward_ensembles"]["rm"]})
    c.rewards = ml_collections.ConfigDict({name: 1.0, "exact_match": 0.0})
    return c
