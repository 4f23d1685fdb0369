"""Pairwise accuracy of a reward model: how often it scores the chosen response above the rejected one."""

import datasets
import evaluate

from neat.stats import bootstrap_ci, win_values

_DESCRIPTION = """
Share of preference pairs whose chosen response gets a higher score than the rejected one; a tie
counts one half. The interval is a percentile bootstrap over pairs (neat.stats.bootstrap_ci).
"""

_KWARGS_DESCRIPTION = """
Args:
    chosen_scores (`list` of `float`): score of the chosen response of each pair.
    rejected_scores (`list` of `float`): score of the rejected response of the same pair.
    n_resamples (`int`, default 1000), alpha (`float`, default 0.05), seed (`int`, default 0):
        bootstrap settings.
Returns:
    pairwise_accuracy (`float`): mean of 1[c > r] + 0.5 * 1[c == r].
    ci_low, ci_high (`float`): the 1 - alpha bootstrap interval.
    n (`int`): number of pairs.
Example:
    >>> m = neat.metrics.load_metric("pairwise_accuracy")
    >>> m.compute(chosen_scores=[1.0, 0.0, 2.0], rejected_scores=[0.0, 0.0, 3.0])["pairwise_accuracy"]
    0.5
"""

_CITATION = """
@article{qiao2024neat,
  title={Negative-Prompt-driven Alignment for Generative Language Model},
  author={Qiao, Shiqi and Xv, Ning and Liu, Biao and Geng, Xin},
  journal={arXiv preprint arXiv:2410.12194},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PairwiseAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"chosen_scores": datasets.Value("float64"), "rejected_scores": datasets.Value("float64")}
            ),
        )

    def _compute(self, chosen_scores, rejected_scores, n_resamples=1000, alpha=0.05, seed=0):
        if len(chosen_scores) == 0:
            raise ValueError("pairwise_accuracy: no pairs")
        values = win_values(chosen_scores, rejected_scores)
        point, low, high = bootstrap_ci(values, n_resamples=n_resamples, alpha=alpha, seed=seed)
        return {"pairwise_accuracy": point, "ci_low": low, "ci_high": high, "n": len(values)}
