from django.apps import AppConfig


class ConfigstoreConfig(AppConfig):
    name = "configstore"
    verbose_name = "Configuration"
    default_auto_field = "django.db.models.BigAutoField"
