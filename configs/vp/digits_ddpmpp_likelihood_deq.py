"""The likelihood twin of the VP digits recipe (configs/vp/digits_ddpmpp_likelihood.py) with a
variational dequantizer q(u | x) trained jointly on the likelihood bound (dequantizer.py), and
nothing else changed (same network, steps, seed). Evaluate its bits/dim with the dequantizer:
    python main.py --config configs/vp/digits_ddpmpp_likelihood_deq.py --workdir runs/digits_vp_deq --mode train
    python main.py --config configs/vp/digits_ddpmpp_likelihood_deq.py --workdir runs/digits_vp_deq --mode eval
"""
from configs.vp._dequantizer import set_dequantizer
from configs.vp.digits_ddpmpp_likelihood import get_config as get_likelihood_config


def get_config():
  return set_dequantizer(get_likelihood_config())
