"""`"configstore_client.django.context_processors.config"` in a template engine's
`context_processors`: templates see `config` (`{{ config.timeout_ms }}` for PREFIX +
"timeout_ms"; `config.stale`, `config.age`)."""

from configstore_client.django.bridge import config as _config


def config(request) -> dict:
    return {"config": _config}
