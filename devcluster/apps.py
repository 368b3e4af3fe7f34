from django.apps import AppConfig


class DevclusterConfig(AppConfig):
    """Installed only for its management commands (runcluster, bench), and only where the
    package is present (configstore/settings.py)."""

    name = "devcluster"
    verbose_name = "Local clusters (development)"
