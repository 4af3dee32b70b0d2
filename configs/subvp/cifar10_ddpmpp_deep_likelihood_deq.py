"""The sub-VP twin of configs/vp/cifar10_ddpmpp_deep_likelihood_deq.py (see there):
configs/subvp/cifar10_ddpmpp_deep_likelihood.py with the variational dequantizer. Not trained here.
"""
from configs.subvp.cifar10_ddpmpp_deep_likelihood import get_config as get_likelihood_config
from configs.vp._dequantizer import set_dequantizer


def get_config():
  return set_dequantizer(get_likelihood_config())
