"""The house rules of the layout (docs/design.md §7), read from the source with ast: no
project module is imported or run.

- Imports flow one way. Layers, highest first: entry scripts (the top-level *.py files) and
  scripts/ > core/ > models/ > operator_py/ > utils/. A module imports its own layer or lower
  ones; imports inside functions count too. Nothing but tests imports an entry script (they are
  programs, not libraries). config/ holds data that utils.config loads by path: it may import
  config/, models/ and utils/ (the variant tables), and only config/ imports it.
- No import cycle between any two project files, within a layer too.
- No module over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES lines (outside tests/
  and config/).
"""
import ast
import os

from conftest import REPO

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
RANK = {"utils": 0, "operator_py": 1, "models": 2, "core": 3, "scripts": 4, "entry": 4}
CONFIG_MAY_IMPORT = {"config", "models", "utils"}


def project_files():
    """{module name: path relative to REPO} of every project source file outside tests/."""
    files = {}
    for name in sorted(os.listdir(REPO)):
        path = os.path.join(REPO, name)
        if name.endswith(".py") and os.path.isfile(path):
            files[name[:-3]] = name
        elif os.path.isfile(os.path.join(path, "__init__.py")) or name == "scripts":
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
                for n in sorted(names):
                    if n.endswith(".py"):
                        rel = os.path.relpath(os.path.join(folder, n), REPO)
                        files[rel[:-3].replace(os.sep, ".")] = rel
    return files


def layer(module):
    top = module.split(".")[0]
    return "entry" if "." not in module else top


def imports(path, module, known):
    """The project modules that the file at `path` (module name `module`) imports, anywhere in it."""
    tree = ast.parse(open(os.path.join(REPO, path)).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                               # relative: from the file's package
                package = module.split(".")[:-node.level]
                base = ".".join(package + ([base] if base else []))
            names = [base + "." + a.name for a in node.names] + [base]
        else:
            continue
        for name in names:
            # `from a.b import c` names module a.b.c if there is one, else a name inside a.b
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not name.endswith("__init__"):
                found.add(name)
    return found


def import_graph():
    files = project_files()
    return files, {m: imports(p, m, files) for m, p in files.items()}


def test_every_package_has_a_layer():
    files = project_files()
    unknown = sorted({layer(m) for m in files} - set(RANK) - {"config"})
    assert not unknown, "top-level packages without a layer in tests/test_layout.py RANK: %s" % unknown


def test_imports_flow_one_way():
    _, graph = import_graph()
    wrong = []
    for module, deps in sorted(graph.items()):
        here = layer(module)
        for dep in sorted(deps):
            there = layer(dep)
            if there == "entry":
                wrong.append("%s imports the entry script %s" % (module, dep))
            elif here == "config":
                if there not in CONFIG_MAY_IMPORT:
                    wrong.append("%s (config/) imports %s (%s/)" % (module, dep, there))
            elif there == "config":
                wrong.append("%s imports %s: configs are loaded by path (utils.config)" % (module, dep))
            elif RANK[there] > RANK[here]:
                wrong.append("%s (%s) imports %s (%s, a higher layer)" % (module, here, dep, there))
    assert not wrong, "\n".join(wrong)


def find_cycle(graph):
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state = {}                                  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycle():
    _, graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_lazy_and_long_cycles(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # the import inside a function that core/transforms.py <-> core/mixing.py once hid behind
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "one.py").write_text("from pkg.two import f\n")
    (pkg / "two.py").write_text("def f():\n    from pkg.one import g\n")
    known = {"pkg.one": "", "pkg.two": ""}
    graph = {m: imports(str(pkg / (m.split(".")[1] + ".py")), m, known) for m in known}
    assert find_cycle(graph) == ["pkg.one", "pkg.two", "pkg.one"]


def test_module_and_function_sizes():
    too_long = []
    for module, path in sorted(project_files().items()):
        if layer(module) == "config":
            continue
        source = open(os.path.join(REPO, path)).read()
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append("%s: %d lines (max %d)" % (path, lines, MAX_MODULE_LINES))
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append("%s:%s: %d lines (max %d)" % (path, node.name, length, MAX_FUNCTION_LINES))
    assert not too_long, "\n".join(too_long)
