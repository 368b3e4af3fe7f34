"""The consuming service, driven by its test: reads one JSON command per line on stdin and
answers one JSON line on stdout. Runs with DJANGO_SETTINGS_MODULE=tests.client.service.settings
(a project of its own: nothing of configstore's server is imported)."""

import json
import sys
import threading

import django

django.setup()

from configstore_client.django import config, config_changed  # noqa: E402
from django.core import checks  # noqa: E402
from django.template import engines  # noqa: E402
from django.test import RequestFactory  # noqa: E402

signals: list[list] = []
lock = threading.Lock()


def record(sender, key, old, new, **kwargs):
    with lock:
        signals.append([key, old, new])


config_changed.connect(record)


def answer(command: dict):
    op = command["op"]
    if op == "get":
        try:
            return {"value": config[command["key"]]}
        except KeyError:
            return {"missing": True}
    if op == "attr":
        try:
            return {"value": getattr(config, command["name"])}
        except AttributeError as error:
            return {"missing": str(error)}
    if op == "render":
        template = engines["django"].from_string(command["template"])
        return {"text": template.render({}, RequestFactory().get("/"))}
    if op == "state":
        return {
            "items": config.items(),
            "index": config.index,
            "stale": config.stale,
            "age": config.age if config.age != float("inf") else None,
            "from_cache": config.from_cache,
            "loaded": config.loaded,
            "invalid": config.invalid,
        }
    if op == "schemas":
        return {"schemas": config.schemas_for(command["key"])}
    if op == "wait":
        return {"reached": config.wait_for_index(command["index"], command.get("timeout", 15))}
    if op == "signals":
        with lock:
            return {"signals": list(signals)}
    if op == "check":
        return {
            "messages": [
                {"id": m.id, "level": m.level, "msg": m.msg}
                for m in checks.run_checks(tags=["configstore"])
            ]
        }
    raise ValueError(f"unknown op {op}")


for line in sys.stdin:
    try:
        result = answer(json.loads(line))
    except Exception as error:  # the test sees it
        result = {"exception": f"{error.__class__.__name__}: {error}"}
    print(json.dumps(result), flush=True)
