"""The default training config: every field the trainer reads, with its meaning.

Experiment files in `configs/` start from `base_config()` and change what they need; any field
can be overridden on the command line (`--config.algo.beta=0.02`).
"""

from __future__ import annotations

import inspect

import ml_collections
from ml_collections import config_dict

from jaxrl_llm.distributed import distributed_config
from jaxrl_llm.models.config import LORA_TARGETS
from jaxrl_llm.sharding import mesh_config

ARITHMETIC_ALPHABET = "0123456789+-*/=# \n"
# The model shape of every `:smoke` config (seconds-long runs in tests).
SMOKE_MODEL = dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)


def algo_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """`{name, every hyper-parameter of the registered factory with its default, **overrides}`.

    Listing every hyper-parameter makes each one overridable from the command line
    (`--config.algo.dual_clip=3`); defaults of None become typed placeholders.
    """
    from jaxrl_llm.algorithms import get_factory

    fields = {"name": name}
    for param in inspect.signature(get_factory(name)).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        default = overrides.get(param.name, param.default)
        if default is None:
            kind = int if "int" in str(param.annotation) else float
            default = config_dict.placeholder(kind)
        fields[param.name] = default
    unknown = set(overrides) - set(fields)
    if unknown:
        get_factory(name)(**overrides)  # raises the factory's own error for the bad names
    return ml_collections.ConfigDict(fields)


def preference_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`c` at the tests' smoke size, shared by the preference configs' ':smoke': the tiny model,
    4 steps of 8 (4 SFT steps of 16 before), evaluation every 2 steps on 16 prompts, pass@2."""
    c.model.update(SMOKE_MODEL)
    c.train.update(steps=4, batch_size=8, checkpoint_every=2)
    c.sft.update(steps=4, eval_every=2, batch_size=16)
    c.eval.update(every=2, num_prompts=16, batch_size=16, pass_k=2)
    c.progress = False
    return c


def reward_model_source(c: ml_collections.ConfigDict, name: str = "rm") -> ml_collections.ConfigDict:
    """`c` rewarded by the auxiliary reward model `name` alone (its checkpoint still to be set:
    `--config.aux_models.rm.checkpoint=<HF dir or a reward_model run's checkpoints/main/<step>>`),
    with the exact-match verifier logged at weight 0 (reward/exact_match: the gold reward)."""
    c.aux_models = ml_collections.ConfigDict({name: {"checkpoint": "", "head": "reward"}})
    c.rewards = ml_collections.ConfigDict({name: 1.0, "exact_match": 0.0})
    return c


def offline_pairs_config(
    algo: str,
    arg: str | None = None,
    steps: int = 200,
    eval_every: int = 50,
    eval_prompts: int | None = None,
    **overrides,
) -> ml_collections.ConfigDict:
    """The offline arithmetic-pairs job shared by the preference and reward-model configs
    (dpo, kto, srpo, reward_model, ppo_m, multi_label_rm): the GRPO job's SFT warm-start, then
    `steps` steps of 64 pairs (examples) at Adam 1e-4, evaluation every `eval_every` steps (on
    `eval_prompts` prompts when given); `overrides` are the algorithm's hyper-parameters.
    `arg`: 'smoke' (`preference_smoke`) or nothing."""
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    c = base_config()
    c.name = f"{algo}_arithmetic"
    c.algo = algo_config(algo, **overrides)
    c.train.update(steps=steps, batch_size=64)
    c.optimizer.learning_rate = 1e-4
    c.sft.update(steps=3000, target_accuracy=0.3)  # the GRPO job's warm-start
    c.eval.every = eval_every
    if eval_prompts:
        c.eval.num_prompts = eval_prompts
    if arg == "smoke":
        preference_smoke(c)
    return c


def online_config(
    algo: str, arg: str | None = None, num_samples: int = 8, **overrides
) -> ml_collections.ConfigDict:
    """The online arithmetic job shared by online_dpo / iterative_dpo / apo / superhf / cgpo's
    configs: the GRPO job's SFT warm-start, 100 steps of 32 prompts x `num_samples` samples
    (the algorithm's own `num_samples` set to the same) ranked or scored by the verifier ('rm'
    in `arg`: by an auxiliary reward model, `reward_model_source`), Adam 1e-4, evaluation every
    25 steps; 'smoke': the tests' size (at most 4 samples). `overrides`: hyper-parameters."""
    parts = set(filter(None, (arg or "").split(",")))
    if parts - {"rm", "smoke"}:
        raise ValueError(f"unknown config argument {arg!r}; use 'rm', 'smoke', 'rm,smoke' or nothing")
    c = base_config()
    c.name = f"{algo}_arithmetic"
    c.algo = algo_config(algo, **overrides)
    c.sampling.num_samples = num_samples
    c.train.update(steps=100, batch_size=32)
    c.optimizer.learning_rate = 1e-4
    c.sft.update(steps=3000, target_accuracy=0.3)  # the GRPO job's warm-start
    c.eval.every = 25
    if "rm" in parts:
        reward_model_source(c)
    if "smoke" in parts:
        preference_smoke(c)
        c.sampling.num_samples = min(num_samples, 4)
    if "num_samples" in c.algo:
        c.algo.num_samples = c.sampling.num_samples
    return c


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = "train"  # 'train' | 'sample' (jaxrl_llm/sample_job.py) | 'reward_ensemble' (train/ensemble.py)
    c.name = "run"  # default workdir: runs/<name>
    c.seed = 0
    c.progress = True  # tqdm progress bars

    # Model: a local HF checkpoint directory, or (checkpoint='') a random model of this shape
    # with a character tokenizer over `tokenizer.alphabet`.
    c.model = ml_collections.ConfigDict(
        dict(
            checkpoint="",
            dtype="float32",  # 'bfloat16' on accelerators; float32 is faster on XLA:CPU
            d_model=192,
            num_layers=2,
            num_heads=8,
            num_kv_heads=8,
            mlp_dim=768,
            max_position_embeddings=64,
            init_std=0.02,
            tie_embeddings=False,
            # Outputs of the reward head (a reward-model phase; HF num_labels): 1 a scalar reward
            # model, K > 1 one score per aspect (multi_label_rm; K = the records' labels).
            num_labels=1,
            # LM heads of the policy on one trunk (mah_dpo: one per objective; a checkpoint's head
            # is copied), mixed at inference by head_weights (None: equal).
            lm_heads=1,
            head_weights=config_dict.placeholder(tuple),
            # Memory savers (README "Memory: remat and LoRA"). remat: 'none' | 'full' | 'dots'
            # (recompute each block's activations in the backward pass; 'dots' keeps matmul outputs).
            remat="none",
            # LoRA adapters on a frozen base (rank 0: off, full fine-tuning). The reference of a KL
            # term is then the base itself, and the optimiser holds state for the adapters only.
            lora=ml_collections.ConfigDict(
                dict(rank=0, alpha=16.0, dropout=0.0, target_modules=LORA_TARGETS)
            ),
        )
    )
    c.tokenizer = ml_collections.ConfigDict(dict(alphabet=ARITHMETIC_ALPHABET))

    # Data: records {question, answer} in GSM8K format ("... #### 579").
    c.data = ml_collections.ConfigDict(
        dict(
            name="arithmetic",  # 'arithmetic' | 'countdown' (TFDS, generated offline) | 'gsm8k' | 'code' | 'jsonl' | 'preference_tfds'
            builder_config="add3_fixed",  # a+b, a and b in [100, 499]; see data/arithmetic.py
            data_dir="",  # TFDS data dir ('' = TFDS default)
            path="",  # jsonl: path with a {split} placeholder
            splits=("train", "validation", "test"),
            question_field="question",
            answer_field="answer",
            max_prompt_len=12,  # prompt budget in tokens; longer prompts are an error
            train_records=0,  # use only this many training records (0: all), from train_offset
            train_offset=0,
            desirable_fraction=0.5,  # unpaired (KTO) labels synthesised from answers: share desirable
            # Scale (low, high) of scored records' labels (multi_label_rm): each is checked to lie
            # in it and mapped to [0, 1] by (y - low) / (high - low); e.g. (0.0, 4.0) for 0-4 ratings.
            label_range=(0.0, 1.0),
            check_records=20_000,  # prompts length-checked at start-up (0: none; batches are always checked)
            chat=False,  # wrap questions with the tokenizer's chat template
            instruction="",  # text put before each question
            sft_target="final_answer",  # SFT target: 'final_answer' (after ####) | 'answer'
        )
    )

    # Sampling for rollouts (G = num_samples per prompt). ignore_eos: EOS does not end a sample, so
    # every response is max_new_tokens long (benchmarks; vLLM's option of the same name).
    c.sampling = ml_collections.ConfigDict(
        dict(max_new_tokens=6, num_samples=8, temperature=1.0, top_k=0, top_p=1.0, ignore_eos=False)
    )

    # Algorithm: `name` from the registry; other fields are its hyper-parameters.
    c.algo = algo_config("grpo")

    # Rewards: {source: weight}; the total is the weighted sum. A source is a registered reward
    # function, a reward model of `aux_models`, or an ensemble of `reward_ensembles`
    # (see jaxrl_llm/rewards/models.py); each is logged as reward/<source>.
    c.rewards = ml_collections.ConfigDict(dict(exact_match=1.0))
    # Frozen auxiliary models: {name: {checkpoint: HF dir or an earlier run's
    # checkpoints/<phase>/<step>, head: 'reward' | 'causal_lm' | 'value'}}; a multi-label reward
    # model's entry may add label_weights: (w_1, ..., w_K), its reward sum_k w_k r_k (absent:
    # equal weights). Never saved in the run's checkpoints (their digest is; a changed model is
    # refused on resume).
    c.aux_models = ml_collections.ConfigDict()
    # Reward-model ensembles: {name: {members: 'rm_a,rm_b', combine: 'mean' | 'min' |
    # 'mean_minus_var' | 'mean_minus_std', coef: lambda of mean - lambda * var (or std)}}.
    c.reward_ensembles = ml_collections.ConfigDict()
    # job='reward_ensemble' (jaxrl_llm/train/ensemble.py): `members` reward models of this config,
    # split 'seed' (seed + k) or 'subset' (disjoint slices of `records` training records), and
    # <workdir>/ensemble.json combining them by `combine` with `coef`.
    c.ensemble = ml_collections.ConfigDict(
        dict(members=3, split="seed", records=0, combine="mean_minus_var", coef=0.5)
    )
    # Rollout strategy: name '' uses the algorithm's own (default group sampling); otherwise a
    # registered strategy (group_sampling, dynamic_sampling, greedy_baseline, best_of_n,
    # multi_turn, ...) whose other fields here are its arguments (jaxrl_llm/rollout/strategies.py).
    c.rollout = ml_collections.ConfigDict(dict(name=""))
    # Rollout correction added to any algorithm, {name: {arguments}} in order (empty: none):
    # 'truncated_is' (level 'token'|'sequence', cap), 'rejection_mask' (level, low, high),
    # 'behaviour_as_old' (logp_old = the sampler's log-probs, for off-policy methods under
    # replay); the mismatch metrics come with any of them (jaxrl_llm/transforms/correction.py).
    c.correction = ml_collections.ConfigDict()

    c.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=3e-4,
            schedule="constant",  # 'constant' | 'linear' | 'cosine' (after warm-up)
            warmup_steps=0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            grad_clip=1.0,  # global-norm clipping; 0 disables
        )
    )
    # Critic (algorithms with a value objective): overrides of `optimizer`.
    c.critic = ml_collections.ConfigDict(dict(optimizer=ml_collections.ConfigDict(dict(learning_rate=1e-3))))

    c.train = ml_collections.ConfigDict(
        dict(
            steps=300,
            batch_size=64,  # prompts per step (pairs for preference algorithms)
            epochs=1,  # passes over each rollout
            minibatches=1,  # optimiser steps per epoch
            microbatches=1,  # gradient accumulation within a mini-batch
            nonfinite="stop",  # NaN/Inf loss or gradient: 'stop' (raise) or 'skip' the update
            checkpoint_every=50,
            keep_checkpoints=2,
        )
    )

    c.eval = ml_collections.ConfigDict(
        dict(
            split="test",
            every=50,  # steps between evaluations (0: only before/after)
            periodic_pass_k=True,  # the periodic evaluations of RL phases sample pass@k too (False: greedy only)
            before=True,  # evaluate before each phase (False: skip it, e.g. a sweep of runs from one checkpoint)
            num_prompts=512,
            batch_size=256,
            pass_k=8,
            temperature=1.0,
            reward="exact_match",  # the correctness check for accuracy / pass@k
        )
    )

    # Device mesh ('data', 'fsdp', 'tensor'; -1 fills the devices left) and the one logical-axis
    # rule table; a one-device mesh runs plain `jax.jit`. See jaxrl_llm/sharding.py.
    c.mesh = mesh_config(data=-1, fsdp=1, tensor=1)

    # Multi-process runs: coordinator_address (host:port of process 0), num_processes, process_id;
    # unset fields come from JAXRL_COORDINATOR / JAXRL_NUM_PROCESSES / JAXRL_PROCESS_ID, else one
    # process. The mesh spans every process's devices. See jaxrl_llm/distributed.py.
    c.distributed = distributed_config()

    # Optional supervised warm-start before the main algorithm (steps=0 disables).
    c.sft = ml_collections.ConfigDict(
        dict(
            steps=0,  # maximum SFT steps
            batch_size=128,
            target_accuracy=0.0,  # stop when greedy accuracy on eval_split reaches it (0: never)
            eval_every=10,
            eval_split="validation",
            optimizer=ml_collections.ConfigDict(dict(learning_rate=1e-3)),  # overrides of `optimizer`
        )
    )
    return c
