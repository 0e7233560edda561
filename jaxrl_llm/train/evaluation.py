"""Held-out evaluation: greedy accuracy, pass@k, (for preference phases) pair accuracy, and
(for reward models) pairwise accuracy, calibration and score distributions, or for a
multi-label reward model each aspect's MSE and correlation."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from jaxrl_llm import sharding
from jaxrl_llm.data import pipeline
from jaxrl_llm.data.sources import record_format
from jaxrl_llm.losses.preference import sequence_logps
from jaxrl_llm.rewards import score_completions
from jaxrl_llm.rollout.sampler import SamplingConfig, make_sampler
from jaxrl_llm.rollout.strategies import decode_responses
from jaxrl_llm.train.forward import policy_outputs, sequence_scores


class EvaluationInterrupted(Exception):
    """`Evaluator.should_stop()` became true between two batches (a SIGTERM/SIGINT to the run)."""


def pass_at_k(num_samples: int, num_correct: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, arXiv 2107.03374):
    1 - C(n - c, k) / C(n, k). With n == k it is 1 if any sample is correct."""
    n = num_samples
    return np.array([1.0 - math.comb(n - c, k) / math.comb(n, k) for c in np.asarray(num_correct)])


class Evaluator:
    """`evaluator(params, split, ref_params, algorithm) -> {metric: value}` on the first
    `eval.num_prompts` records of `split`, in fixed-size batches (one compile per sampler).
    `should_stop` (set by the trainer: a signal arrived) is checked before every batch and
    raises `EvaluationInterrupted`, so a signal waits for one batch at most."""

    def __init__(
        self,
        model_config,
        tokenizer,
        sources,
        reward_fns,
        config,
        sampling: SamplingConfig,
        partitioning=None,
    ):
        self.config = config
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.sources = sources
        self.reward_fns = reward_fns
        e = config.eval
        self.greedy = make_sampler(
            model_config, dataclasses.replace(sampling, num_samples=1, temperature=0.0), partitioning
        )
        self.k = e.pass_k
        self.sampled = (
            make_sampler(
                model_config,
                dataclasses.replace(sampling, num_samples=e.pass_k, temperature=e.temperature),
                partitioning,
            )
            if e.pass_k > 0
            else None
        )
        self.rng = jax.random.PRNGKey(config.seed + 12345)
        self.should_stop = lambda: False  # every process must give the same answer at each batch
        self._pair_logps = jax.jit(self._pair_logps_fn)
        self._pair_scores = jax.jit(self._pair_scores_fn)
        self._completion_scores = jax.jit(self._completion_scores_fn)

    def _batches(self, split: str, kind: str):
        d, e = self.config.data, self.config.eval
        if split not in self.sources:
            raise ValueError(f"eval split {split!r} is not in data.splits={tuple(self.sources)}")
        source = self.sources[split]
        n = min(e.num_prompts, len(source))
        size = min(e.batch_size, n)
        common = dict(
            batch_size=size,
            max_prompt_len=d.max_prompt_len,
            seed=0,
            chat=d.chat,
            instruction=d.instruction,
            question_field=d.question_field,
            answer_field=d.answer_field,
            shuffle=False,
        )
        if kind == "preference":
            ds = pipeline.preference_dataset(
                source, self.tokenizer, max_target_len=self.config.sampling.max_new_tokens, **common
            )
        elif kind == "scored":
            ds = pipeline.scored_dataset(
                source,
                self.tokenizer,
                max_target_len=self.config.sampling.max_new_tokens,
                num_labels=self.model_config.num_labels,
                label_range=d.label_range,
                **common,
            )
        elif kind == "unpaired":
            ds = pipeline.unpaired_dataset(
                source, self.tokenizer, max_target_len=self.config.sampling.max_new_tokens, **common
            )
        else:
            ds = pipeline.prompt_dataset(source, self.tokenizer, **common)
        return n, [ds[i] for i in range(math.ceil(n / size))]

    def _correct(self, sampler, params, batch, rng, g: int) -> np.ndarray:
        out = sampler(params, batch["prompt_ids"], batch["prompt_mask"], rng)
        ids, mask = sharding.to_host((out.response_ids, out.response_mask))  # all rows, every process
        completions, finished = decode_responses(self.tokenizer, ids, mask, self.tokenizer.eos_ids)
        prompts, answers = np.repeat(batch["prompts"], g), np.repeat(batch["answers"], g)
        rewards, _ = score_completions(self.reward_fns, prompts, completions, answers, finished)
        return (rewards > 0.5).reshape(-1, g)

    def __call__(self, params, split: str, ref_params=None, algorithm=None, sampled: bool = True) -> dict:
        """Greedy accuracy; with `sampled`, also pass@k and mean accuracy of k samples at
        eval.temperature; for preference algorithms, held-out pair accuracies. A reward model
        (`algorithm.head == 'reward'`) is evaluated on held-out pairs only (`_reward_model`), or
        with data 'scored' on held-out scored completions only (`_scored_model`)."""
        if algorithm is not None and algorithm.head == "reward":
            if algorithm.data == "scored":
                return self._scored_model(params, split)
            return self._reward_model(params, split)
        source = self.sources.get(split)
        if source is not None and record_format(source[0]) != "question":  # no answer to verify
            return self._pair_metrics(params, ref_params, split, algorithm)
        n, batches = self._batches(split, "prompts")
        greedy, num_correct = [], []
        for i, batch in enumerate(batches):
            self._check_stop()
            greedy.append(self._correct(self.greedy, params, batch, self.rng, 1)[:, 0])
            if sampled and self.sampled is not None:
                rng = jax.random.fold_in(self.rng, i + 1)
                num_correct.append(self._correct(self.sampled, params, batch, rng, self.k).sum(1))
        results = {"greedy_accuracy": float(np.concatenate(greedy)[:n].mean())}
        if num_correct:
            c = np.concatenate(num_correct)[:n]
            results[f"pass_at_{self.k}"] = float(pass_at_k(self.k, c, self.k).mean())
            results["sample_accuracy"] = float((c / self.k).mean())
        results.update(self._pair_metrics(params, ref_params, split, algorithm))
        return results

    def _pair_metrics(self, params, ref_params, split: str, algorithm) -> dict:
        """For preference and unpaired (KTO) algorithms: the held-out pair accuracies
        (`_preference_accuracy`; question/answer records give synthetic pairs), or on unpaired
        records (prompt/completion/label) the label accuracy (`_label_accuracy`); else {}."""
        if algorithm is None or algorithm.data not in ("preference", "unpaired"):
            return {}
        if record_format(self.sources[split][0]) == "unpaired":
            return self._label_accuracy(params, ref_params, split)
        return self._preference_accuracy(params, ref_params, split)

    def _check_stop(self) -> None:
        if self.should_stop():
            raise EvaluationInterrupted("evaluation interrupted by a signal")

    def _pair_logps_fn(self, params, batch):
        def logps(ids, mask):
            out = policy_outputs(
                self.model_config, params, batch["prompt_ids"], batch["prompt_mask"], ids, mask, 1.0
            )
            return sequence_logps(out.logp, mask)

        return logps(batch["chosen_ids"], batch["chosen_mask"]), logps(
            batch["rejected_ids"], batch["rejected_mask"]
        )

    def _preference_accuracy(self, params, ref_params, split: str) -> dict:
        n, batches = self._batches(split, "preference")
        margins, ref_margins = [], []
        for batch in batches:
            self._check_stop()
            arrays = {k: v for k, v in batch.items() if k.endswith(("_ids", "_mask"))}
            c, r = self._pair_logps(params, arrays)
            margins.append(sharding.to_host(c - r))
            if ref_params is not None:
                rc, rr = self._pair_logps(ref_params, arrays)
                ref_margins.append(sharding.to_host(rc - rr))
        margin = np.concatenate(margins)[:n]
        results = {"likelihood_accuracy": float((margin > 0).mean())}
        if ref_params is not None:
            implicit = margin - np.concatenate(ref_margins)[:n]
            results["preference_accuracy"] = float((implicit > 0).mean())
        return results

    def _label_accuracy(self, params, ref_params, split: str) -> dict:
        """Unpaired records: label_accuracy, the share of the first eval.num_prompts examples
        whose implicit reward S_θ(y) − S_ref(y) has their label's sign (> 0 desirable, < 0
        undesirable; a tie, e.g. the policy still equal to the reference, counts as wrong).
        {} without a reference."""
        if ref_params is None:
            return {}
        n, batches = self._batches(split, "unpaired")
        rewards, labels = [], []
        for batch in batches:
            self._check_stop()
            arrays = {k: v for k, v in batch.items() if k.endswith(("_ids", "_mask"))}
            policy, ref = self._pair_logps(params, arrays)[0], self._pair_logps(ref_params, arrays)[0]
            rewards.append(sharding.to_host(policy - ref))
            labels.append(batch["label"])
        r, good = np.concatenate(rewards)[:n], np.concatenate(labels)[:n] > 0
        return {"label_accuracy": float(np.where(good, r > 0, r < 0).mean())}

    def _pair_scores_fn(self, params, batch):
        def scores(ids, mask):
            return sequence_scores(
                self.model_config, params, batch["prompt_ids"], batch["prompt_mask"], ids, mask
            )

        return scores(batch["chosen_ids"], batch["chosen_mask"]), scores(
            batch["rejected_ids"], batch["rejected_mask"]
        )

    def _reward_model(self, params, split: str) -> dict:
        """A reward model on the first eval.num_prompts pairs of `split`: pair_accuracy
        (r(y_w) > r(y_l), ties wrong), the ECE of P(y_w ≻ y_l) = σ(r_w − r_l)
        (`calibration_error`), the mean margin and the chosen / rejected score distributions."""
        n, batches = self._batches(split, "preference")
        chosen, rejected = [], []
        for batch in batches:
            self._check_stop()
            arrays = {k: v for k, v in batch.items() if k.endswith(("_ids", "_mask"))}
            c, r = sharding.to_host(self._pair_scores(params, arrays))
            chosen.append(np.asarray(c, np.float64))
            rejected.append(np.asarray(r, np.float64))
        c, r = np.concatenate(chosen)[:n], np.concatenate(rejected)[:n]
        return {
            "pair_accuracy": float((c > r).mean()),
            "calibration_error": calibration_error(c - r),
            "reward_margin": float((c - r).mean()),
            "score_chosen_mean": float(c.mean()),
            "score_rejected_mean": float(r.mean()),
            "score_std": float(np.concatenate([c, r]).std()),
        }

    def _completion_scores_fn(self, params, batch):
        return sequence_scores(
            self.model_config,
            params,
            batch["prompt_ids"],
            batch["prompt_mask"],
            batch["completion_ids"],
            batch["completion_mask"],
        )

    def _scored_model(self, params, split: str) -> dict:
        """A multi-label reward model on the first eval.num_prompts scored completions of
        `split` (`pipeline.scored_dataset`): `label_metrics` of its scores against the labels."""
        n, batches = self._batches(split, "scored")
        scores, labels = [], []
        for batch in batches:
            self._check_stop()
            arrays = {k: v for k, v in batch.items() if k.endswith(("_ids", "_mask"))}
            s = np.asarray(sharding.to_host(self._completion_scores(params, arrays)), np.float64)
            scores.append(s.reshape(len(s), -1))
            labels.append(batch["labels"])
        return label_metrics(np.concatenate(scores)[:n], np.concatenate(labels)[:n])


def label_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """A multi-label reward model's held-out fit, scores and labels [N, K]: label_mse (the
    mean over rows and aspects of (r_k − s_k)², the training loss), and per aspect k (0-based)
    label_mse/<k> and label_corr/<k>, the Pearson correlation of r_k and s_k over the rows (0
    when either is constant, e.g. a zero-initialised head).
    Example: scores [[0.8], [0.2]], labels [[1], [0]] -> label_mse 0.04, label_corr/0 1."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    squared = np.square(scores - labels)
    results = {"label_mse": float(squared.mean())}
    for k in range(labels.shape[1]):
        r, s = scores[:, k] - scores[:, k].mean(), labels[:, k] - labels[:, k].mean()
        scale = np.sqrt((r * r).sum() * (s * s).sum())
        results[f"label_mse/{k}"] = float(squared[:, k].mean())
        results[f"label_corr/{k}"] = float((r * s).sum() / scale) if scale > 0 else 0.0
    return results


def calibration_error(margins: np.ndarray, num_bins: int = 10) -> float:
    """Expected calibration error of a reward model's pairwise probabilities (Guo et al. 2017,
    arXiv 1706.04599, applied to Bradley–Terry preferences as in Leng et al., arXiv 2410.09724).

    With p = σ(r(y_w) − r(y_l)) (`margins` [N]) the model predicts the side it scores higher
    with confidence c = max(p, 1 − p), and is right when p > 0.5. The confidences fall into
    `num_bins` equal bins over [0.5, 1]; ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|.
    Example: margins [2.0, −1.0] -> p = [0.881, 0.269], c = [0.881, 0.731], right = [1, 0]:
    bins 7 and 4 -> (|1 − 0.881| + |0 − 0.731|) / 2 = 0.425.
    """
    p = 1.0 / (1.0 + np.exp(-np.asarray(margins, np.float64)))
    confidence, right = np.maximum(p, 1.0 - p), (p > 0.5).astype(np.float64)
    bins = np.minimum(((confidence - 0.5) * 2 * num_bins).astype(int), num_bins - 1)
    error = 0.0
    for b in range(num_bins):
        inside = bins == b
        if inside.any():
            error += inside.mean() * abs(right[inside].mean() - confidence[inside].mean())
    return float(error)
