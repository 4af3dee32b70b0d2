"""The layout rules of the code base, read from the source with `ast` so that they stay true:

- no import cycle between the project's modules (the `models` package registering its networks
  aside), lazy imports inside functions included;
- no library module imports a driver (main, run_lib, eval_lib, sample_lib, classifier_lib, phema_lib);
- no module of the project over 450 lines;
- no `config.<section>.get('key', default)` for a key the defaults define (`configs.with_defaults`
  completes every config at entry; library code reads keys directly);
- one predictor-corrector loop.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DRIVERS = {'main', 'run_lib', 'eval_lib', 'sample_lib', 'classifier_lib', 'phema_lib'}
MAX_LINES = 450


def _modules():
  """{dotted name: path} of the project's modules: the top level, models/ and configs/."""
  found = {p.stem: p for p in ROOT.glob('*.py')}
  for package in ('models', 'configs'):
    for path in (ROOT / package).rglob('*.py'):
      parts = path.relative_to(ROOT).with_suffix('').parts
      name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
      found[name] = path
  return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _imports(name, tree):
  """Project modules that `name` imports anywhere in its source."""
  found = set()
  package = name if MODULES[name].name == '__init__.py' else name.rpartition('.')[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # relative: from the package
        base = '.'.join(filter(None, [package.rsplit('.', node.level - 1)[0] if node.level > 1
                                      else package, base]))
      targets = [base] + [f'{base}.{alias.name}' for alias in node.names]
    else:
      continue
    found.update(t for t in targets if t in MODULES and t != name)
  return found


GRAPH = {name: _imports(name, tree) for name, tree in TREES.items()}


def _cycles(graph):
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_rules_see_the_code_base():
  """The checks below read what they should: a known import, driver and module each."""
  assert {'sampling', 'checkpoints', 'models.utils', 'configs', 'run_lib'} <= set(MODULES)
  assert 'checkpoints' in GRAPH['sample_lib'] and 'models.utils' in GRAPH['sampling']
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_no_import_cycles():
  cycles = [c for c in _cycles(GRAPH)
            if not all(m == 'models' or m.startswith('models.') for m in c)]
  assert not cycles, f'Import cycles between project modules: {cycles}'


def test_libraries_do_not_import_drivers():
  wrong = {name: sorted(GRAPH[name] & DRIVERS) for name in GRAPH
           if name not in DRIVERS and GRAPH[name] & DRIVERS}
  assert not wrong, f'Library modules importing drivers: {wrong}'


def test_no_module_over_the_line_limit():
  long = {name: n for name, path in MODULES.items()
          if (n := len(path.read_text().splitlines())) > MAX_LINES}
  assert not long, f'Modules over {MAX_LINES} lines: {long}'


def _default_keys():
  from configs.default_cifar10_configs import get_default_configs
  defaults = get_default_configs()
  return {section: set(value.keys()) for section, value in defaults.items()
          if hasattr(value, 'keys')}, set(defaults.keys())


def _config_section(node, aliases):
  """The config section `node` stands for ('sampling' for config.sampling or for a local name
  bound to it), '' for the config itself, None for anything else."""
  if isinstance(node, ast.Name):
    if node.id in ('config', 'cfg'):
      return ''
    return aliases.get(node.id)
  if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
      and node.value.id in ('config', 'cfg')):
    return node.attr
  return None


def _defaulted_gets(tree, sections, top):
  """(line, 'section.key') of every .get('key', default) on a config section the defaults hold."""
  found = []
  for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda))] + [tree]:
    aliases = {}
    for node in ast.walk(function):
      if (isinstance(node, ast.Assign) and len(node.targets) == 1
          and isinstance(node.targets[0], ast.Name)):
        section = _config_section(node.value, {})
        if section:
          aliases[node.targets[0].id] = section
    for node in ast.walk(function):
      if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == 'get' and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        continue
      section, key = _config_section(node.func.value, aliases), node.args[0].value
      if section == '' and key in top:
        found.append((node.lineno, key))
      elif section and key in sections.get(section, ()):
        found.append((node.lineno, f'{section}.{key}'))
  return sorted(set(found))


def test_config_keys_are_read_directly():
  sections, top = _default_keys()
  assert 'ode_rtol' in sections['sampling']  # what the rule compares against
  probe = ast.parse("def f(config):\n  s = config.sampling\n  return s.get('ode_rtol', 1e-5)\n")
  assert _defaulted_gets(probe, sections, top) == [(3, 'sampling.ode_rtol')]
  wrong = {name: found for name, tree in TREES.items()
           if not name.startswith('configs') and (found := _defaulted_gets(tree, sections, top))}
  assert not wrong, ('.get(key, default) for keys the defaults define (read them directly; '
                     f'configs.with_defaults completes configs): {wrong}')


def test_one_predictor_corrector_loop():
  """Only one function steps predictors and correctors in a loop (the samplers of inverse
  problems and guidance are hooks on it)."""
  loops = set()
  for name, tree in TREES.items():
    for function in ast.walk(tree):
      if not isinstance(function, ast.FunctionDef):
        continue
      for loop in ast.walk(function):
        if isinstance(loop, (ast.For, ast.While)) and any(
            isinstance(n, ast.Attribute) and n.attr == 'update_fn' for n in ast.walk(loop)):
          loops.add(f'{name}.{function.name}')
  assert len(loops) == 1, f'Predictor-corrector loops in several functions: {sorted(loops)}'

