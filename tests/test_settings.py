"""One place for each setting (consensus/conf.py, configstore/conf.py): typed, validated
at start, the README generated from the declarations, the core's defaults the production
ones, and no module-level state outside consensus.conf's Process."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configstore.conf import StoreSettings
from consensus.conf import NodeSettings, SettingError, from_environ, variables
from consensus.paxos import Config
from devcluster import settingsdoc

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_settings_table_is_the_declarations():
    readme = settingsdoc.README.read_text()
    assert settingsdoc.with_table(readme) == readme, (
        "README.md's settings table differs from the declarations: "
        "run ./dev python -m devcluster.settingsdoc --readme"
    )


def test_every_variable_is_declared_once():
    names = [v.name for c in settingsdoc.SETTINGS_CLASSES for _, v in variables(c)]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


#: Modules that ask whether a variable is set at all (which a typed setting, holding its
#: default, cannot say), and why.
ASKS_WHETHER_SET = {
    Path("consensus/management/commands/clusterstatus.py"): "refuses to guess a cluster "
    "when CONFIGSTORE_PEERS is not set (exit 2) rather than read the one-node default",
}


def test_no_module_reads_a_configstore_variable_but_the_declarations():
    """Code reads the typed settings, not os.environ nor a Django setting by its name."""
    declared = {v.name for c in settingsdoc.SETTINGS_CLASSES for _, v in variables(c)}
    offenders = []
    for package in ("consensus", "configstore"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "conf.py" or "migrations" in path.parts:
                continue
            if path.relative_to(ROOT) in ASKS_WHETHER_SET:
                continue
            source = path.read_text()
            for name in declared:
                for pattern in (
                    f'environ.get("{name}"',
                    f'environ["{name}"]',
                    f"settings.{name}",
                    f'getattr(settings, "{name}"',
                ):
                    if pattern in source:
                        offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert offenders == []


def test_the_core_defaults_are_the_production_defaults():
    node = from_environ(NodeSettings, {})
    core = {f.name: f.default for f in dataclasses.fields(Config)}
    options = node.core_options()
    assert options, "the node settings give the core no options"
    for name, value in options.items():
        assert value == pytest.approx(core[name]), name


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CONFIGSTORE_WINDOW": "0"}, "CONFIGSTORE_WINDOW='0': must be from 1 to 4096"),
        ({"CONFIGSTORE_TICK_MS": "fast"}, "CONFIGSTORE_TICK_MS='fast': must be a number"),
        ({"CONFIGSTORE_ELECTION_TIMEOUT_MS": "nan"}, "must be a finite number"),
        ({"CONFIGSTORE_PEERS": "n1"}, "is not id=broker-url"),
        ({"CONFIGSTORE_NODE_ID": "n9"}, "'n9' is not in CONFIGSTORE_PEERS"),
        ({"CONFIGSTORE_TRACE_STEPS": "yes"}, "CONFIGSTORE_TRACE_STEPS='yes': must be 0 or 1"),
    ],
)
def test_a_bad_node_setting_is_refused_naming_the_variable(environ, named):
    with pytest.raises(SettingError, match=named.replace("(", r"\(").replace(")", r"\)")):
        from_environ(NodeSettings, environ)


def test_every_bad_value_is_named_at_once():
    with pytest.raises(SettingError) as refused:
        from_environ(StoreSettings, {"CONFIGSTORE_MAX_VALUE_BYTES": "-1", "DJANGO_DEBUG": "true"})
    assert "CONFIGSTORE_MAX_VALUE_BYTES" in str(refused.value)
    assert "DJANGO_DEBUG" in str(refused.value)


def test_a_process_with_a_bad_setting_does_not_start(tmp_path):
    """manage.py (the web server and the worker load the same settings) exits at once."""
    env = {
        **os.environ,
        "CONFIGSTORE_WRITE_TIMEOUT_MS": "soon",
        "DJANGO_SETTINGS_MODULE": "configstore.settings",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "CONFIGSTORE_WRITE_TIMEOUT_MS='soon': must be a number" in done.stderr


# ---------------------------------------------------------------- no module-level state

#: Calls that make mutable process state when run at a module's top level.
_STATEFUL_CALLS = {
    "dict",
    "list",
    "set",
    "OrderedDict",
    "defaultdict",
    "deque",
    "Counter",
    "Lock",
    "RLock",
    "Event",
    "Condition",
}


def _frozen(node: ast.ClassDef) -> bool:
    """A frozen dataclass: its instances are constants, not state."""
    return any(
        isinstance(d, ast.Call)
        and getattr(d.func, "id", "") == "dataclass"
        and any(k.arg == "frozen" and getattr(k.value, "value", False) for k in d.keywords)
        for d in node.decorator_list
    )


def _module_state(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef) and not _frozen(n)}
    found = [
        f"line {n.lineno}: global {', '.join(n.names)}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Global)
    ]
    for node in tree.body:
        if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
            continue
        value = node.value
        mutable = isinstance(value, ast.Dict | ast.List | ast.Set) and not (
            getattr(value, "keys", None) or getattr(value, "elts", None)
        )
        if isinstance(value, ast.Call):
            called = (
                value.func.attr
                if isinstance(value.func, ast.Attribute)
                else getattr(value.func, "id", "")
            )
            mutable = (called in _STATEFUL_CALLS and not value.args) or called in classes
        if mutable:
            found.append(f"line {node.lineno}: {ast.unparse(node)[:60]}")
    return found


#: Module-level objects that are not process state, and why.
NOT_STATE = {
    Path("consensus/conf.py"): "the one place: the Process",
    Path("configstore/settings.py"): "Django's settings module",
    Path("configstore/asgi.py"): "the ASGI application object, imported by name by the server",
    Path("configstore/schemas.py"): "a memo of validator classes derived from code, beside "
    "their lru_cache: nothing about the node",
}


def test_no_module_level_state_outside_the_process_object():
    offenders = {}
    for package in ("consensus", "configstore"):
        for path in (ROOT / package).rglob("*.py"):
            if path.relative_to(ROOT) in NOT_STATE or "migrations" in path.parts:
                continue
            found = _module_state(path)
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


def test_the_state_check_finds_a_singleton(tmp_path):
    source = (
        "import threading\n_cache = {}\n_lock = threading.Lock()\nclass A: pass\n_a = A()\n"
        "def f():\n    global _x\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert len(_module_state(path)) == 4
