"""Win rate of a trained policy against the base policy, per prompt, by a score (e.g. a reward model)."""

import datasets
import evaluate
import numpy as np

from neat.stats import bootstrap_ci, win_values

_DESCRIPTION = """
Share of prompts on which method A's response (the trained policy) scores above method B's (the
base policy); a tie counts one half. The interval is a percentile bootstrap over prompts.
"""

_KWARGS_DESCRIPTION = """
Args:
    scores_a (`list` of `float`): score of method A's (trained) response to each prompt.
    scores_b (`list` of `float`): score of method B's (base) response to the same prompt.
    tie_tolerance (`float`, default 0.0): |a - b| <= tie_tolerance counts as a tie.
    n_resamples (`int`, default 1000), alpha (`float`, default 0.05), seed (`int`, default 0):
        bootstrap settings.
Returns:
    win_rate (`float`): (wins + 0.5 * ties) / n.
    ci_low, ci_high (`float`): the 1 - alpha bootstrap interval.
    wins, ties, losses, n (`int`): counts.
Example:
    >>> m = neat.metrics.load_metric("win_rate")
    >>> m.compute(scores_a=[1.0, 1.0, 0.0, 2.0], scores_b=[0.0, 1.0, 1.0, 1.0])["win_rate"]
    0.625
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
class WinRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"scores_a": datasets.Value("float64"), "scores_b": datasets.Value("float64")}),
        )

    def _compute(self, scores_a, scores_b, tie_tolerance=0.0, n_resamples=1000, alpha=0.05, seed=0):
        if len(scores_a) == 0:
            raise ValueError("win_rate: no prompts")
        values = win_values(scores_a, scores_b, tie_tolerance=tie_tolerance)
        point, low, high = bootstrap_ci(values, n_resamples=n_resamples, alpha=alpha, seed=seed)
        return {
            "win_rate": point,
            "ci_low": low,
            "ci_high": high,
            "wins": int(np.sum(values == 1.0)),
            "ties": int(np.sum(values == 0.5)),
            "losses": int(np.sum(values == 0.0)),
            "n": len(values),
        }
