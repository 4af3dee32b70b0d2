"""The VP digits recipe (configs/vp/digits_ddpmpp_continuous.py) trained for likelihood: the loss
weighted by g(t)^2 with importance-sampled time (Song, Durkan, Murray & Ermon 2021), and nothing
else changed (same network, steps, seed), so that it is compared with the default on the CPU
(docs/likelihood_training.md).
    python main.py --config configs/vp/digits_ddpmpp_likelihood.py --workdir runs/digits_vp_lik --mode train
"""
from configs.vp.digits_ddpmpp_continuous import get_config as get_vp_config


def get_config():
  config = get_vp_config()
  config.training.likelihood_weighting = True
  config.training.importance_weighting = True
  return config
