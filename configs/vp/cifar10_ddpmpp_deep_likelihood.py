"""Deep DDPM++ with the VP SDE trained for likelihood, the "VP, likelihood weighting + importance
sampling" row of Song, Durkan, Murray & Ermon (2021), Table 2 (checkpoint folder
`cifar10_deep_vp_likelihood_iw` of yang-song/score_flow, whose config of this model is
configs/vp/cifar10_ddpmpp_deep_continuous.py run with --config.training.likelihood_weighting
--config.training.importance_weighting; that name is score_sde's config here, so this one carries
the flags). Evaluate bits/dim (uniform dequantization) and the bound:
    python main.py --config configs/vp/cifar10_ddpmpp_deep_likelihood.py --workdir runs/c10_vp_lik --mode eval \
        --config.eval.enable_bpd=True --config.eval.enable_bound=True
With a variational dequantizer: configs/vp/cifar10_ddpmpp_deep_likelihood_deq.py.
"""
from configs.vp.cifar10_ddpmpp_deep_continuous import get_config as get_deep_config


def get_config():
  config = get_deep_config()
  config.training.likelihood_weighting = True
  config.training.importance_weighting = True
  config.sampling.method = 'ode'               # score_flow samples these models with the ODE
  config.eval.begin_ckpt = config.eval.end_ckpt = 19
  return config
