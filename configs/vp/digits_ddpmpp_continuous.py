"""DDPM++ with the VP SDE on the embedded 16x16 digits: trains on 2 CPU cores in ~10 minutes.

The same small network as configs/ve/digits_ncsnpp_continuous.py with DDPM++'s choices
(positional time embedding, data in [-1, 1], noise prediction, mean-reduced loss).
    python main.py --config configs/vp/digits_ddpmpp_continuous.py --workdir runs/digits_vp --mode train
"""
from configs.ve.digits_ncsnpp_continuous import get_config as get_ve_config


def get_config():
  config = get_ve_config()
  config.training.sde = 'vpsde'
  config.training.reduce_mean = True

  config.sampling.predictor = 'euler_maruyama'
  config.sampling.corrector = 'none'
  config.model.num_scales = 500                # Euler-Maruyama steps

  config.data.centered = True

  model = config.model
  model.scale_by_sigma = False
  model.embedding_type = 'positional'
  model.beta_min = 0.1
  model.beta_max = 20.
  return config
