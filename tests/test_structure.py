"""The package's structure: imports point down (no cycle, nothing under a backend
imports the front), the host modules leave kernel details (``lanes``, max's special
case) to the backends, the functions compiled for both targets call only one another,
and the CPU's and the GPU's kernel namespaces take the same arguments."""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from pathlib import Path

import numba
import pytest
from numba.core.registry import CPUDispatcher

import nbbag
import nbbag.kernels
from nbbag.base import shared

PACKAGE = Path(nbbag.__file__).parent
FRONT = ("nbbag.functional", "nbbag.layer", "nbbag.optim", "nbbag.collection")
BACKENDS = ("nbbag.cpu", "nbbag.cuda")
HOST_MODULES = (
    "nbbag.collection",
    "nbbag.functional",
    "nbbag.layer",
    "nbbag.optim",
    "nbbag._device",
    "nbbag._validate",
    "nbbag.cpu.api",
    "nbbag.cuda.api",
)


def cuda_importable() -> bool:
    """Whether the GPU backend imports (numba-cuda is installed)."""
    try:
        importlib.import_module("nbbag.cuda")
    except ImportError:
        return False
    return True


HAS_CUDA = cuda_importable()


# -- the import graph --------------------------------------------------------------------
def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = module_files()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imported_modules(name: str) -> set[str]:
    """The package's modules that module ``name`` imports, at module level or in a
    function: ``import nbbag.x.y`` and ``from nbbag.x import y`` name nbbag.x.y when
    it is a module (else nbbag.x), and each imports the packages above it too (their
    __init__ runs first) but nbbag's own (see ``import_graph``); relative imports are
    resolved."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    package = name if is_package(name) else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in MODULES else source)
    found = set()
    for target in targets:
        if target != "nbbag" and not target.startswith("nbbag."):
            continue
        parts = target.split(".")
        found.add(target)  # the package nbbag only when it is what is imported
        found.update(".".join(parts[:i]) for i in range(2, len(parts)))
    return {module for module in found if module in MODULES} - {name}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports; nbbag/__init__.py imports nothing
    here (it re-exports everything: the graph is about the modules below it)."""
    return {name: set() if name == "nbbag" else imported_modules(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the list of its modules, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return stack[stack.index(child) :] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for child in graph[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def under(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_walk_sees_every_kind_of_import():
    """The control for the graph: module- and function-level, from-imports of modules
    and of names, relative imports, packages above."""
    graph = import_graph()
    assert {"nbbag._validate", "nbbag.cpu.backward", "nbbag.cpu"} <= graph["nbbag.cpu.api"]
    assert "nbbag._device" in graph["nbbag.cuda"]  # inside an except clause
    assert "nbbag.rules" in graph["nbbag.cuda.optim"]  # from nbbag import rules
    assert "nbbag.modes" in graph["nbbag.functional"]
    assert graph["nbbag"] == set()


def test_the_walk_resolves_relative_and_function_level_imports(tmp_path, monkeypatch):
    """The control, on a module written for it (as if it were nbbag/cpu/fake.py)."""
    source = """
from . import rows
from .. import functional
from ..base.records import BagBatch
import nbbag.cuda.launch
from nbbag import Mode

def f():
    from nbbag.optim import SGD
"""
    path = tmp_path / "fake.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "nbbag.cpu.fake", path)
    assert imported_modules("nbbag.cpu.fake") == {
        "nbbag.cpu.rows", "nbbag.cpu", "nbbag.functional", "nbbag.base.records",
        "nbbag.base", "nbbag.cuda.launch", "nbbag.cuda", "nbbag", "nbbag.optim",
    }  # fmt: skip


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_backends_do_not_import_the_front():
    """Nothing under nbbag/cpu/ or nbbag/cuda/ imports nbbag.functional, nbbag.layer,
    nbbag.optim or the package nbbag itself, directly or through other modules."""
    graph = import_graph()
    upward = {}
    for name in MODULES:
        if not under(name, BACKENDS):
            continue
        direct = {m for m in graph[name] if m == "nbbag" or under(m, FRONT)}
        indirect = {m for m in reachable(graph, name) if m == "nbbag" or under(m, FRONT)}
        if direct or indirect:
            upward[name] = (sorted(direct), sorted(indirect))
    assert not upward, f"backend modules reaching the front (direct, any): {upward}"


# -- the host modules --------------------------------------------------------------------
def is_mode_max(node) -> bool:
    """``Mode.MAX`` (or ``<anything>.Mode.MAX``)."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "MAX"
        and (
            (isinstance(node.value, ast.Name) and node.value.id == "Mode")
            or (isinstance(node.value, ast.Attribute) and node.value.attr == "Mode")
        )
    )


def mentions_mode_max(node) -> bool:
    return any(is_mode_max(child) for child in ast.walk(node))


def host_module_findings(name: str) -> dict[str, list[str]]:
    """What module ``name`` holds of ``lanes`` (any identifier) and of ``Mode.MAX``:
    comparisons and branches (if, while, a conditional expression, a match case) on
    it; and, apart, dictionary keys (a lookup table, not a branch)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    findings = {"lanes": [], "max branches": [], "max keys": []}

    def where(node):
        return f"{name}:{node.lineno}"

    for node in ast.walk(tree):
        identifiers = []
        if isinstance(node, ast.Name):
            identifiers = [node.id]
        elif isinstance(node, ast.Attribute):
            identifiers = [node.attr]
        elif isinstance(node, ast.arg):
            identifiers = [node.arg]
        elif isinstance(node, ast.keyword) and node.arg:
            identifiers = [node.arg]
        elif isinstance(node, ast.alias):
            identifiers = [node.asname or node.name.rpartition(".")[2]]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            identifiers = [node.name]
        if "lanes" in identifiers:
            findings["lanes"].append(where(node))
        if isinstance(node, ast.Compare) and mentions_mode_max(node):
            findings["max branches"].append(f"{where(node)}: {ast.unparse(node)}")
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)) and mentions_mode_max(
            node.test
        ):
            compares = [n for n in ast.walk(node.test) if isinstance(n, ast.Compare)]
            if not any(mentions_mode_max(n) for n in compares):  # else counted there
                findings["max branches"].append(f"{where(node)}: {ast.unparse(node.test)}")
        elif isinstance(node, ast.match_case) and mentions_mode_max(node.pattern):
            findings["max branches"].append(f"{where(node.pattern)}: case")
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                if key is not None and mentions_mode_max(key):
                    findings["max keys"].append(where(key))
    return findings


def test_the_host_module_checker_finds_what_it_looks_for(tmp_path, monkeypatch):
    """The control: a module with each thing the test below forbids."""
    source = """
from nbbag.modes import Mode

def f(mode, weight, lanes=None):
    table = {Mode.MAX: 1}
    if mode == Mode.MAX:
        return weight.lanes
    return 0 if mode is not nbbag.Mode.MAX else kernel(lanes=lanes)
"""
    path = tmp_path / "bad.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "nbbag.bad", path)
    findings = host_module_findings("nbbag.bad")
    assert len(findings["lanes"]) == 4  # the argument, the attribute, keyword, name
    assert len(findings["max branches"]) == 2
    assert findings["max keys"] == ["nbbag.bad:5"]


@pytest.mark.parametrize("name", HOST_MODULES)
def test_host_modules_leave_lanes_and_max_to_the_backends(name):
    """No ``lanes`` (the CPU kernels' compile-time width) and no comparison or branch
    on ``Mode.MAX`` in the host modules: which kernel runs is the backends'
    ``variants.py``'s business.  A dictionary keyed by Mode.MAX is a lookup, allowed."""
    findings = host_module_findings(name)
    assert not findings["lanes"], f"lanes in {findings['lanes']}"
    assert not findings["max branches"], f"branches on Mode.MAX: {findings['max branches']}"


# -- the functions compiled for both targets ---------------------------------------------
def dispatcher_types() -> tuple[type, ...]:
    """The classes of compiled functions: Numba's CPU dispatchers and, when numba-cuda
    is installed, its GPU dispatchers (the simulator's kernels included)."""
    found: list[type] = [numba.core.dispatcher.Dispatcher, CPUDispatcher]
    if HAS_CUDA:
        from numba import cuda

        if hasattr(cuda, "dispatcher") and hasattr(cuda.dispatcher, "CUDADispatcher"):
            found.append(cuda.dispatcher.CUDADispatcher)
        try:
            from numba.cuda.simulator.kernel import FakeCUDAKernel

            found.append(FakeCUDAKernel)
        except ImportError:
            pass
    return tuple(found)


def code_objects(code: types.CodeType):
    """``code`` and the code objects nested in it (inner functions, lambdas,
    comprehensions)."""
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from code_objects(constant)


def is_module(value) -> bool:
    return isinstance(value, types.ModuleType)


def is_shared(value) -> bool:
    """A function both targets compile: a shared one, or a scalar one."""
    if any(value is function for function in shared.SCALAR):
        return True
    return isinstance(value, shared.SharedDispatcher) and any(
        value.py_func is function for function in shared.SHARED
    )


def single_target_calls(function) -> list[str]:
    """The names through which ``function`` (a Python function) reaches a compiled
    function that is not a shared one: a plain ``@njit`` kernel (CPU-only) or a
    ``cuda.jit`` one (GPU-only).  Names are resolved in its globals and closure, and
    through modules (``module.name``, ``package.module.name``)."""
    compiled = dispatcher_types()
    names = set()
    for code in code_objects(function.__code__):
        names.update(code.co_names)
        names.update(code.co_freevars)
    scope = dict(function.__globals__)
    if function.__closure__:
        scope.update(
            zip(
                function.__code__.co_freevars,
                (c.cell_contents for c in function.__closure__),
                strict=True,
            )
        )
    values = {name: scope[name] for name in names if name in scope}
    modules = [(name, value) for name, value in values.items() if is_module(value)]
    while modules:  # module.attribute, for the attribute names the code uses
        name, module = modules.pop()
        for attribute in names:
            if hasattr(module, attribute) and name.count(".") < 3:
                value = getattr(module, attribute)
                values[f"{name}.{attribute}"] = value
                if is_module(value):
                    modules.append((f"{name}.{attribute}", value))
    return sorted(
        name
        for name, value in values.items()
        if isinstance(value, compiled) and not is_shared(value)
    )


def load_every_shared_function() -> list:
    """SHARED, after importing every module that defines shared functions (the GPU's
    too, when numba-cuda is installed)."""
    importlib.import_module("nbbag.kernels")
    if HAS_CUDA:
        importlib.import_module("nbbag.kernels.cuda")
    assert shared.SHARED, "no shared function registered"
    return list(shared.SHARED)


def test_shared_functions_call_only_shared_functions():
    """Each function compiled for both targets calls, of compiled functions, only
    other shared ones: never a CPU-only @njit kernel nor a cuda.jit function."""
    offenders = {}
    for function in load_every_shared_function():
        calls = single_target_calls(function)
        if calls:
            offenders[f"{function.__module__}.{function.__qualname__}"] = calls
    assert not offenders, f"shared functions calling single-target code: {offenders}"


@numba.njit
def _cpu_only(x):
    return x + 1


def _calls_a_cpu_kernel(x):
    return _cpu_only(x)


def _calls_one_in_a_lambda(x):
    return (lambda y: _cpu_only(y))(x)


def _calls_one_through_a_module(x):
    return nbbag.kernels.bag_sum(x)


def test_the_checker_flags_single_target_calls():
    """The control: a plain @njit kernel called directly, from a nested function or
    through a module; a cuda.jit device function; and a shared function passes."""
    assert single_target_calls(_calls_a_cpu_kernel) == ["_cpu_only"]
    assert single_target_calls(_calls_one_in_a_lambda) == ["_cpu_only"]
    assert single_target_calls(_calls_one_through_a_module) == ["nbbag.kernels.bag_sum"]
    from nbbag.base.bags import bag_coefficients

    assert single_target_calls(bag_coefficients.py_func) == []
    if HAS_CUDA:
        from numba import cuda

        @cuda.jit(device=True)
        def gpu_only(x):
            return x + 1

        def calls_a_device_function(x):
            return gpu_only(x)

        assert single_target_calls(calls_a_device_function) == ["gpu_only"]


# -- the kernel namespaces ---------------------------------------------------------------
def python_function(value):
    """The Python function behind a dispatcher (CPU), a GPU kernel (``py_func``; the
    simulator's: ``fn``) or a plain function."""
    for attribute in ("py_func", "fn"):
        function = getattr(value, attribute, None)
        if callable(function):
            return function
    return value


def parameters(value) -> list[inspect.Parameter]:
    return list(inspect.signature(python_function(value)).parameters.values())


def shared_kernel_names(cuda_kernels) -> list[str]:
    return sorted(
        name
        for name in set(nbbag.kernels.__all__) & set(cuda_kernels.__all__)
        if callable(getattr(nbbag.kernels, name)) and callable(getattr(cuda_kernels, name))
    )


@pytest.mark.skipif(not HAS_CUDA, reason="numba-cuda is not installed")
def test_the_cpu_and_gpu_kernels_take_the_same_arguments():
    """Every kernel both namespaces have: the same parameter names in the same order;
    the one difference allowed is the CPU's trailing optional ``lanes`` (default
    None).  Default values may differ."""
    cuda_kernels = importlib.import_module("nbbag.kernels.cuda")
    names = shared_kernel_names(cuda_kernels)
    assert len(names) >= 20, names  # the namespaces do overlap
    mismatched = {}
    for name in names:
        cpu = parameters(getattr(nbbag.kernels, name))
        gpu = parameters(getattr(cuda_kernels, name))
        if [p.name for p in cpu] == [p.name for p in gpu]:
            continue
        if [p.name for p in cpu[:-1]] == [p.name for p in gpu] and cpu[-1].name == "lanes":
            assert cpu[-1].default is None, f"{name}: lanes must default to None"
            continue
        mismatched[name] = ([p.name for p in cpu], [p.name for p in gpu])
    assert not mismatched, f"(cpu, gpu) parameters: {mismatched}"
