from django.apps import AppConfig


class ConfigstoreConfig(AppConfig):
    name = "configstore"
    verbose_name = "Configuration"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery import signals

        from configstore import checks  # noqa: F401 - registers the system checks

        # A worker with DEBUG off does not start with a development secret.
        signals.worker_init.connect(_refuse_insecure_worker, weak=False)

        # Users are replicated state, written only by the applier: a login must not write
        # this node's copy of the user (Django records last_login by default).
        from django.contrib.auth import user_logged_in
        from django.contrib.auth.models import update_last_login

        user_logged_in.disconnect(update_last_login, dispatch_uid="update_last_login")

        from configstore import identity_guard

        identity_guard.connect()


def _refuse_insecure_worker(**kwargs) -> None:
    """Celery logs and ignores exceptions of signal handlers: exit instead."""
    from django.core.exceptions import ImproperlyConfigured

    from configstore.checks import refuse_insecure_start

    try:
        refuse_insecure_start()
    except ImproperlyConfigured as error:
        raise SystemExit(f"configstore: {error}") from None
