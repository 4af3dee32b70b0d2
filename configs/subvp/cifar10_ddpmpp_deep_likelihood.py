"""Deep DDPM++ with the sub-VP SDE trained for likelihood, the "sub-VP, likelihood weighting +
importance sampling" row of Song, Durkan, Murray & Ermon (2021), Table 2 (checkpoint folder
`cifar10_deep_subvp_likelihood_iw` of yang-song/score_flow): score_flow's
configs/subvp/cifar10_ddpmpp_deep_continuous.py with its flags --config.training.likelihood_weighting
--config.training.importance_weighting, and its smallest training time 1e-2 (score_flow's
`training.smallest_time`; its sampler also starts at 1e-2, ours at sub-VP's 1e-3). Bits/dim and
the bound are integrated from 1e-5, as in score_flow's evaluation.
"""
from configs.subvp.cifar10_ddpmpp_deep_continuous import get_config as get_deep_config


def get_config():
  config = get_deep_config()
  config.training.likelihood_weighting = True
  config.training.importance_weighting = True
  config.training.smallest_time = 1e-2
  config.sampling.method = 'ode'
  config.eval.begin_ckpt = config.eval.end_ckpt = 19
  return config
