"""What the `_deq` configs (vp/digits_ddpmpp_likelihood_deq, {vp,subvp}/cifar10_ddpmpp_deep_likelihood_deq)
change in the likelihood config they vary. Not a config (`list_configs` skips files whose names
start with '_').
"""


def set_dequantizer(config):
  """Sets on `config` a variational dequantizer q(u | x) trained jointly with the score model on
  the likelihood bound (dequantizer.py), and bits/dim and the bound evaluated with it. Returns
  `config`."""
  config.training.dequantizer = True
  config.eval.dequantization = 'variational'
  return config
