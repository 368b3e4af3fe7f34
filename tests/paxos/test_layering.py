"""consensus/paxos is pure: no framework, no I/O, no clock, no global randomness."""

import ast
from pathlib import Path

import consensus.paxos

CORE = Path(consensus.paxos.__file__).parent
FORBIDDEN_MODULES = {
    "asyncio",
    "celery",
    "datetime",
    "django",
    "kombu",
    "multiprocessing",
    "os",
    "psycopg",
    "redis",
    "select",
    "socket",
    "subprocess",
    "threading",
    "time",
    "concurrent",
    "uuid",
    "secrets",
}


def _modules():
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 5
    return [(f.name, ast.parse(f.read_text())) for f in files]


def _imported_roots(tree: ast.Module) -> set[str]:
    """The top-level packages a module imports (absolute imports only)."""
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add((node.module or "").split(".")[0])
    return roots


def test_the_core_imports_no_framework_io_clock_or_thread_module():
    for name, tree in _modules():
        bad = _imported_roots(tree) & FORBIDDEN_MODULES
        assert not bad, f"{name} imports {bad}"


def test_the_core_draws_randomness_only_from_a_random_passed_in():
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "random":
                raise AssertionError(f"{name}: from random import ...")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "random"
            ):
                assert node.attr == "Random", f"{name} uses random.{node.attr}"


#: The host and the simulator that runs it: the core's rule, but for the host's wall-clock
#: adapter and trace timings (`time`, read only by MonotonicClock and `trace`), and for
#: `os` and process pools in the simulator's seed runner.
HOST_FILES = [CORE.parent / "host.py", *sorted((CORE.parent / "sim").glob("*.py"))]
HOST_ALLOWED = {"host.py": {"time"}, "runner.py": {"os", "time", "concurrent"}}


def test_the_host_and_the_simulator_import_no_framework_or_io_module():
    assert len(HOST_FILES) >= 5
    for path in HOST_FILES:
        allowed = HOST_ALLOWED.get(path.name, set())
        bad = _imported_roots(ast.parse(path.read_text())) & FORBIDDEN_MODULES - allowed
        assert not bad, f"{path.name} imports {bad}"
