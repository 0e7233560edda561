"""Tunix side of bench_peers.py: the benchmark's GRPO workload with Tunix's GRPOLearner.

Runs in Tunix's own virtualenv (google-tunix pins older transformers/tokenizers than jaxrl_llm's
bench extra), so it imports nothing from jaxrl_llm; bench_peers.py starts it as

    <tunix venv>/bin/python experiments/bench_peers_tunix.py SPEC.json

and reads the one result line it prints (bench_common.emit_result). The model is Tunix's Llama3
loaded from the same Hugging Face checkpoint (same weights as the other frameworks), the
tokenizer the same tokenizer.json through transformers' PreTrainedTokenizerFast.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common  # noqa: E402


def main(spec_path: str) -> None:
    spec = bench_common.read_spec(spec_path)
    import json

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from transformers import PreTrainedTokenizerFast
    from tunix.models.llama3 import model as llama3
    from tunix.models.llama3 import params as llama3_params
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout, vanilla_rollout

    b, g, p, t, steps = bench_common.workload(spec)
    ckpt = spec["checkpoint"]
    with open(os.path.join(ckpt, "config.json")) as f:
        hf = json.load(f)
    rope = hf.get("rope_parameters") or {}
    model_config = llama3.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=hf["rms_norm_eps"],
        weight_tying=hf.get("tie_word_embeddings", False),
        remat_config=llama3.RematConfig.NONE,  # no gradient checkpointing
    )
    # Tunix's sharding annotations name 'fsdp' and 'tp'; one CPU device, axis types Auto.
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)

    def load():
        return llama3_params.create_model_from_safe_tensors(ckpt, model_config, mesh, dtype=jnp.float32)

    actor = load()
    reference = load() if spec["beta"] else None
    tokenizer = PreTrainedTokenizerFast.from_pretrained(ckpt)
    assert tokenizer.pad_token_id == bench_common.PAD_ID and tokenizer.eos_token_id == bench_common.EOS_ID

    gen_times: list[float] = []
    tokens_per_step: list[int] = []

    class ForcedLengthRollout(vanilla_rollout.VanillaRollout):
        """Tunix's vanilla rollout with EOS and pad blocked (`forbidden_tokens`), so every sample
        has exactly T tokens: VanillaRollout.generate does not pass forbidden tokens through, and
        GRPOLearner's completion mask is `ids != pad`, so pad must not be sampled either. Also
        times each generation and counts the tokens it returns."""

        def generate(self, prompts, rollout_config, **kwargs):
            start = time.perf_counter()
            output = self._sampler(
                input_strings=prompts,
                max_generation_steps=rollout_config.max_tokens_to_generate,
                max_prompt_length=rollout_config.max_prompt_length,
                echo=False,
                temperature=rollout_config.temperature,
                top_p=rollout_config.top_p,
                top_k=rollout_config.top_k,
                seed=rollout_config.seed,
                pad_output=False,
                eos_tokens=rollout_config.eos_tokens,
                forbidden_tokens=(bench_common.PAD_ID, bench_common.EOS_ID),
                return_logprobs=rollout_config.return_logprobs,
            )
            gen_times.append(time.perf_counter() - start)
            tokens_per_step.append(int(sum(len(x) for x in output.tokens)))
            return base_rollout.RolloutOutput(
                text=output.text,
                logits=output.logits,
                tokens=output.tokens,
                left_padded_prompt_tokens=output.padded_prompt_tokens,
                logprobs=output.logprobs,
            )

    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(spec["learning_rate"], b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
    )
    training_config = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optimizer,
        eval_every_n_steps=10**9,
        max_steps=steps,
    )
    rollout_config = base_rollout.RolloutConfig(
        max_tokens_to_generate=t,
        max_prompt_length=p,
        kv_cache_size=p + t,
        temperature=1.0,
        top_p=1.0,
        top_k=None,
        seed=spec["seed"],
    )
    roles = list(rl_cluster_lib.Role)
    cluster = rl_cluster_lib.RLCluster(
        actor=actor,
        reference=reference,
        tokenizer=tokenizer,
        cluster_config=rl_cluster_lib.ClusterConfig(
            role_to_mesh={role: mesh for role in roles},
            rollout_engine="vanilla",
            offload_to_cpu=False,
            training_config=training_config,
            rollout_config=rollout_config,
        ),
    )
    cluster.rollout.__class__ = ForcedLengthRollout  # see the class docstring

    def reward(prompts, completions, **kwargs):
        return [bench_common.even_word_fraction(c) for c in completions]

    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster,
        algo_config=grpo_learner.GRPOConfig(
            num_generations=g,
            num_iterations=1,
            beta=spec["beta"],
            epsilon=0.2,
            kl_loss_mode="low_var_kl",  # k3, as in the other frameworks
            loss_agg_mode="sequence-mean-token-mean",
        ),
        reward_fns=[reward],
    )

    # Step boundaries: each global step (rollout, reference pass, advantages, update) runs inside
    # `_run_global_step`; time from its entry to its return.
    step_times: list[float] = []
    run_global_step = learner._run_global_step

    def timed_global_step(*args, **kwargs):
        start = time.perf_counter()
        out = run_global_step(*args, **kwargs)
        jax.block_until_ready(nnx_params(cluster))
        step_times.append(time.perf_counter() - start)
        return out

    learner._run_global_step = timed_global_step
    prompts = bench_common.make_prompts(b * steps, p, hf["vocab_size"], seed=spec["seed"])
    batches = [{"prompts": np.array(prompts[i * b : (i + 1) * b])} for i in range(steps)]
    start = time.perf_counter()
    learner.train(batches)
    total = time.perf_counter() - start
    rss = bench_common.peak_rss_mb()
    result = dict(
        framework="tunix",
        step_times=step_times,
        gen_times=gen_times,
        tokens_per_step=tokens_per_step,
        train_wall_s=total,
        peak_rss_mb=rss,
        threads=len(os.sched_getaffinity(0)),
        versions={"tunix": _version("google-tunix"), "jax": jax.__version__},
    )
    bench_common.emit_result(result)


def nnx_params(cluster):
    from flax import nnx

    return nnx.state(cluster.actor_trainer.model, nnx.Param)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main(sys.argv[1])
