"""Who may import what between the runtime, the product and the tooling (docs/architecture.md,
"Who may import what"): an AST walk of every module, so an import inside a function counts too.

- The product (configstore/) imports from the runtime only its public modules, PUBLIC.
- The runtime (consensus/) imports nothing of the product. Loading the state machine named by
  a setting (consensus.runtime.load_state_machine) is not an import of a module named in the
  code.
- Neither imports the tooling that runs clusters on one machine (TOOLING, devcluster/), which
  may import both: a node runs without it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The runtime's public modules: its API for the web tier and the state machine's types,
#: the worker's bootstep, which the product's Celery app installs (configstore/celery.py),
#: and the settings machinery and process objects (consensus.conf), which the product's
#: own settings use.
PUBLIC = {"consensus.api", "consensus.worker", "consensus.conf"}
#: The tooling that runs clusters on one machine (development, tests, benchmarks).
TOOLING = "devcluster"


def _is_module(name: str, root: Path) -> bool:
    path = root / Path(*name.split("."))
    return (path / "__init__.py").exists() or path.with_suffix(".py").exists()


def imported_modules(
    source: str, module: str, *, package: bool = False, root: Path = ROOT
) -> list[tuple[int, str]]:
    """(line, module) for every module that `source`, the text of `module`, imports: `from a
    import b` counts as `a.b` when `b` is a module of package `a`; relative imports are
    resolved; calls of import_module with a literal name count too."""
    anchor = module.split(".") if package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.append((node.lineno, name if _is_module(name, root) else base))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    parts = path.relative_to(root).with_suffix("").parts
    package = parts[-1] == "__init__"
    module = ".".join(parts[:-1] if package else parts)
    return imported_modules(path.read_text(), module, package=package, root=root)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def product_violations(root: Path = ROOT) -> list[str]:
    """Imports of a runtime module other than PUBLIC by a module of configstore/."""
    return [
        f"{path.relative_to(root)}:{line} imports {module}"
        for path in sorted((root / "configstore").rglob("*.py"))
        for line, module in _imports(path, root)
        if _within(module, "consensus") and module not in PUBLIC
    ]


def runtime_violations(root: Path = ROOT) -> list[str]:
    """Imports of a product module by a runtime module."""
    return [
        f"{path.relative_to(root)}:{line} imports {module}"
        for path in sorted((root / "consensus").rglob("*.py"))
        for line, module in _imports(path, root)
        if _within(module, "configstore")
    ]


def tooling_violations(root: Path = ROOT) -> list[str]:
    """Imports of the tooling by a module of the runtime or the product."""
    return [
        f"{path.relative_to(root)}:{line} imports {module}"
        for package in ("consensus", "configstore")
        for path in sorted((root / package).rglob("*.py"))
        for line, module in _imports(path, root)
        if _within(module, TOOLING)
    ]


def test_the_product_imports_only_the_runtimes_public_modules():
    assert product_violations() == []


def test_the_runtime_imports_no_product_module():
    assert runtime_violations() == []


def test_neither_the_runtime_nor_the_product_imports_the_tooling():
    assert tooling_violations() == []


def test_a_node_loads_its_apps_and_urls_without_the_tooling():
    """With devcluster unimportable (as in the Docker image, which leaves it out), the settings
    load, the apps and URLs load, and the node's own commands are there but not runcluster."""
    script = f"""
import sys
sys.modules[{TOOLING!r}] = None  # absent: importing it fails, find_spec finds nothing
import django
django.setup()
import configstore.urls, consensus.runtime, consensus.worker
from django.core.management import get_commands
commands = get_commands()
assert "clusterstatus" in commands and "grant_app_role" in commands, sorted(commands)
assert "runcluster" not in commands and "bench" not in commands, commands.get("runcluster")
assert not [m for m in sys.modules if m.startswith({TOOLING!r} + ".")]
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "configstore.settings"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_the_public_modules_exist():
    for module in PUBLIC:
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").exists(), module


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import consensus.storage\n", "consensus.storage"),
        ("from consensus import client\n", "consensus.client"),
        ("from consensus.client import Committed\n", "consensus.client"),
        ("from consensus import api as consensus\n", "consensus.api"),
        ("def f():\n    from consensus.paxos import Command\n", "consensus.paxos"),
        ("import importlib\nimportlib.import_module('consensus.cluster')\n", "consensus.cluster"),
        ("from .. import statemachine\n", "configstore.statemachine"),
    ],
)
def test_every_form_of_import_is_seen(source, module):
    """The walk sees absolute, from-, aliased, nested, literal import_module and relative
    imports (as if written in configstore/api/views.py)."""
    assert module in [name for _, name in imported_modules(source, "configstore.api.views")]


def test_a_product_module_importing_a_runtime_internal_is_named(tmp_path):
    """product_violations on a copy of the tree whose configstore imports consensus.client."""
    for package in ("configstore", "consensus"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "consensus" / "api.py").write_text("")
    (tmp_path / "configstore" / "ok.py").write_text("from consensus import api as consensus\n")
    (tmp_path / "configstore" / "bad.py").write_text("import os\n\nimport consensus.client\n")
    assert product_violations(tmp_path) == ["configstore/bad.py:3 imports consensus.client"]


def test_a_runtime_module_importing_the_product_is_named(tmp_path):
    """runtime_violations on a copy of the tree: every module of consensus/ counts (its
    management commands too); the tooling may import the product."""
    for package in ("configstore", "consensus", "consensus/management", "devcluster"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "configstore" / "models.py").write_text("")
    (tmp_path / "consensus" / "storage.py").write_text("from configstore import models\n")
    (tmp_path / "consensus" / "management" / "x.py").write_text("import configstore\n")
    (tmp_path / "devcluster" / "localcluster.py").write_text("import configstore.models\n")
    assert runtime_violations(tmp_path) == [
        "consensus/management/x.py:1 imports configstore",
        "consensus/storage.py:1 imports configstore.models",
    ]


def test_a_runtime_or_product_module_importing_the_tooling_is_named(tmp_path):
    """tooling_violations on a copy of the tree: the tooling may import both."""
    for package in ("configstore", "consensus", "devcluster"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "devcluster" / "localcluster.py").write_text(
        "import configstore\nfrom consensus import client\n"
    )
    (tmp_path / "consensus" / "client.py").write_text("")
    (tmp_path / "consensus" / "runtime.py").write_text(
        "def f():\n    from devcluster.localcluster import free_ports\n"
    )
    (tmp_path / "configstore" / "settings.py").write_text("import devcluster\n")
    assert tooling_violations(tmp_path) == [
        "consensus/runtime.py:2 imports devcluster.localcluster",
        "configstore/settings.py:1 imports devcluster",
    ]
