"""The default main job: SFT warm-start of a tiny model on 3-digit addition, then GRPO.

    python -m jaxrl_llm.main --config=configs/grpo_arithmetic.py --workdir=runs/grpo_arithmetic
    python -m jaxrl_llm.main --config=configs/grpo_arithmetic.py:smoke --workdir=runs/smoke

Task: `jaxrl_arithmetic/add3_fixed`, a+b with a, b in [100, 499], so every answer has 3 digits
(`--config.data.builder_config=add3` gives operands in [100, 999], where models often learned the
digit alignment for one answer width only; see experiments/README.md). A 1.19M-parameter
Llama-style model (d=192, 2 layers, 8 heads) is trained from scratch with SFT (Adam 1e-3, batch
128) until greedy accuracy on the validation split reaches 30% (checked every 10 steps: learning
comes in a sharp transition, so it stops on validation accuracy, never a fixed step count or the
test split), then GRPO runs 64 prompts x 8 samples per step at temperature 1 with an exact-match
reward that requires EOS, eps=0.2 and no KL term (beta=0: no reference pass), Adam 3e-4.
Held-out greedy accuracy and pass@8 on the test split are printed before and after GRPO;
`curves.png` plots training reward next to held-out accuracy (the problem space is small enough
to memorise, so watch both).
"""

from jaxrl_llm.train.config import SMOKE_MODEL, algo_config, base_config


def get_config(arg=None):
    c = base_config()
    c.name = "grpo_arithmetic"
    c.algo = algo_config("grpo", beta=0.0, clip_eps=0.2)
    c.train.steps = 350
    c.train.batch_size = 64
    c.sampling.num_samples = 8
    c.optimizer.learning_rate = 3e-4
    c.sft.update(steps=3000, target_accuracy=0.3)  # batch 128, Adam 1e-3, checked every 10 steps
    c.eval.every = 50
    if arg == "smoke":
        c.model.update(SMOKE_MODEL)
        c.train.update(steps=6, batch_size=8, checkpoint_every=2)
        c.sampling.num_samples = 4
        c.sft.update(steps=4, eval_every=2, batch_size=16)
        c.eval.update(every=3, num_prompts=16, batch_size=16, pass_k=4)
        c.progress = False
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use 'smoke' or nothing")
    return c
