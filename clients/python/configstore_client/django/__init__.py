"""The Django settings bridge: configuration from a configstore cluster in a Django service.

    INSTALLED_APPS = [..., "configstore_client.django"]
    CONFIGSTORE_CLIENT = {
        "URLS": ["http://10.0.0.1:8001", "http://10.0.0.2:8001", "http://10.0.0.3:8001"],
        "TOKEN": os.environ["CONFIGSTORE_TOKEN"],   # a read-only token for the prefix
        "PREFIX": "payments/",
        "CACHE_PATH": "/var/cache/payments/configstore.json",
        "DEFAULTS": {"payments/timeout_ms": 250},
    }

    from configstore_client.django import config, config_changed

    config["payments/timeout_ms"]     # from memory, kept current by a live view
    config.timeout_ms                 # the same, relative to PREFIX

See configstore_client.django.bridge for the whole story, `checks` for the system checks
and `context_processors.config` for templates.
"""

from configstore_client.django.bridge import Config, config, config_changed

__all__ = ["Config", "config", "config_changed"]
