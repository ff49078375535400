"""The repository's structure: dependencies point one way, and every document a file cites is in docs/."""
import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('bilayer_jax', 'data_pipelines', 'experiments', 'tools', 'benchmarks')
# A package may import only the packages after it in its row (and itself).
ALLOWED = {
    'data_pipelines': set(),
    'bilayer_jax': {'data_pipelines'},
    'experiments': {'bilayer_jax'},
    'tools': {'bilayer_jax', 'data_pipelines', 'experiments'},
    'benchmarks': {'bilayer_jax', 'data_pipelines', 'experiments', 'tools'},
}


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph() -> dict[str, set[str]]:
  """module -> the project modules it imports (statements anywhere in the file, also inside functions)."""
  modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob('*.py')}
  graph = {}
  for name, path in modules.items():
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] + ([base] if base else []))
        # `from pkg import sub` depends on pkg.sub; `from pkg import name` on pkg (its __init__)
        found = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base for a in node.names]
      else:
        continue
      for f in found:
        while f and f not in modules:
          f = f.rpartition('.')[0]
        if f and f != name:
          targets.add(f)
    graph[name] = targets
  return graph


def test_packages_depend_one_way():
  bad = [(m, t) for m, ts in import_graph().items() for t in ts
         if t.split('.')[0] != m.split('.')[0] and t.split('.')[0] not in ALLOWED[m.split('.')[0]]]
  assert not bad, bad


def test_no_import_cycles():
  graph = import_graph()
  state = {}

  def visit(m, stack):
    state[m] = 'open'
    for t in graph[m]:
      if state.get(t) == 'open':
        cycle = stack[stack.index(t):] + [t]
        raise AssertionError(' -> '.join(cycle))
      if t not in state:
        visit(t, stack + [t])
    state[m] = 'done'

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])


def test_every_cited_document_exists():
  files = [p for pkg in PACKAGES + ('tests',) for p in (ROOT / pkg).rglob('*.py')]
  files += [ROOT / 'README.md', *(ROOT / 'docs').glob('*.md')]
  model = (ROOT / 'docs' / 'model.md').read_text()
  sections = set(re.findall(r'^#+ §(\d+)', model, re.M)) | set(re.findall(r'- §(\d+\.\d+)', model))
  labels = set(re.findall(r'\*\*([BQ]\d+)\*\*', model)) | set(re.findall(r'\b(Q\d+) \(', model))
  missing = []
  for path in files:
    text = path.read_text()
    for doc in re.findall(r'docs/([\w-]+\.md)', text):
      if not (ROOT / 'docs' / doc).exists():
        missing.append(f'{path.name}: docs/{doc}')
    for ref in re.findall(r'docs/model\.md ((?:(?:bug )?[§BQ][\d.]*\d(?:, |-| and )?)+)', text):
      for item in re.findall(r'§(\d+(?:\.\d+)?)|\b([BQ]\d+)', ref):
        section, label = item
        if section and section not in sections and section.split('.')[0] not in sections:
          missing.append(f'{path.name}: §{section}')
        if label and label not in labels:
          missing.append(f'{path.name}: {label}')
  assert sections >= {str(i) for i in range(12)}
  assert labels >= {f'B{i}' for i in range(1, 9)} | {f'Q{i}' for i in range(1, 12)}
  assert not missing, missing
