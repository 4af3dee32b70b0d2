"""What every benchmark script shares: where the repository and the results live, and one way to
write a result file (JSON, next to the printed table)."""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'bench' / 'results'  # git-ignored


def write_json(path, result):
  """Write `result` (JSON-serialisable) to `path`, creating its folder, and say where."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2))
  print(f'wrote {path}')
  return path
