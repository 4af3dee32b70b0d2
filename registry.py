"""One name -> object registry, shared by models, predictors and correctors."""


class Registry:
  """Maps names to classes or functions; an unknown name lists the known ones.

  Usage::

    MODELS = Registry('model')

    @MODELS.register(name='ncsnpp')
    class NCSNpp(nn.Module): ...

    MODELS.get('ncsnpp')
  """

  def __init__(self, kind):
    self.kind = kind  # what is registered, for error messages ('model', 'predictor', ...)
    self._entries = {}

  def register(self, obj=None, *, name=None):
    """Decorator (with or without `name=`) that registers `obj` under `name` or its __name__."""

    def _register(obj):
      key = obj.__name__ if name is None else name
      if key in self._entries:
        raise ValueError(f'A {self.kind} named {key!r} is already registered '
                         f'({self._entries[key].__module__}.{self._entries[key].__name__}).')
      self._entries[key] = obj
      return obj

    return _register if obj is None else _register(obj)

  def get(self, name):
    try:
      return self._entries[name]
    except KeyError:
      raise ValueError(f'Unknown {self.kind} {name!r}. Known {self.kind}s: '
                       f'{", ".join(sorted(self._entries))}.') from None

  def names(self):
    return sorted(self._entries)

  def __contains__(self, name):
    return name in self._entries
