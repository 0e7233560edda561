"""GRPO on two-turn tool episodes: the model's first turn is answered by a tool whose reply
('=' + the question's answer) is attended but not trained on; the second turn is scored."""

import jaxrl_llm as jrl


@jrl.register_environment("answer_tool")
def answer_tool() -> jrl.Environment:
    """After turn 1 the tool replies '=' + the answer; the episode ends after turn 2."""

    def step(state, turn_text, turn_ids):
        answer, turn = state
        return (answer, turn + 1), jrl.Observation(text="=" + answer, done=turn >= 1)

    return jrl.Environment(reset=lambda prompt, answer: (jrl.final_answer(answer), 0), step=step)


@jrl.register_algorithm("ext_two_turn_grpo")
def two_turn_grpo(max_obs_tokens: int = 4, beta: float = 0.0, **grpo_args) -> jrl.Algorithm:
    tool = jrl.multi_turn("answer_tool", max_turns=2, max_obs_tokens=max_obs_tokens, score_turns="last")
    return jrl.grpo(beta=beta, **grpo_args)._replace(strategy=tool)


def configure(config):
    config.algo = {"name": "ext_two_turn_grpo", "max_obs_tokens": 4}  # '=' + a 3-digit sum
    config.sft.steps = 0  # rows: 12 prompt + 2 turns x 6 + 4 observation tokens <= 64 positions
    config.rewards = {"ext_finished": 1.0}  # the answer turn ends with EOS: varies for a random policy
    return config
