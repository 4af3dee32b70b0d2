"""configs/vp/cifar10_ddpmpp_deep_likelihood.py with a variational dequantizer q(u | x) trained
jointly on the likelihood bound (dequantizer.py; training.dequantizer), and its bits/dim and bound
evaluated with it: the variational-dequantization rows of Song, Durkan, Murray & Ermon (2021),
Table 2 (score_flow trains its Flow++ dequantizer after the score model, with that model fixed;
here the small affine flow trains with it). Not trained here.
    python main.py --config configs/vp/cifar10_ddpmpp_deep_likelihood_deq.py --workdir runs/c10_vp_deq --mode eval \
        --config.eval.enable_bpd=True --config.eval.enable_bound=True
"""
from configs.vp._dequantizer import set_dequantizer
from configs.vp.cifar10_ddpmpp_deep_likelihood import get_config as get_likelihood_config


def get_config():
  return set_dequantizer(get_likelihood_config())
