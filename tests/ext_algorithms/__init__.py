"""Well-known algorithms written as a user would, through `import jaxrl_llm as jrl` only.

Each module registers one algorithm and defines `configure(config)` (or `configure(config,
tmp_path)`), which adapts a smoke config to train it for a few seconds: `configs/<name>.py:smoke`
with <name> the module's `SMOKE_CONFIG`, else the first such path its docstring names, else
grpo_arithmetic. tests/test_extension_api.py trains every module found here. Importing any of
them registers the `ext_finished` reward below.
"""

import jaxrl_llm as jrl


@jrl.register_reward("ext_finished")
def ext_finished(*, prompt, completion, answer, finished):
    """1 for a response that ends with EOS: a reward a random smoke-size policy earns sometimes."""
    return float(finished)
