from django.apps import AppConfig


class ConfigstoreClientConfig(AppConfig):
    name = "configstore_client.django"
    label = "configstore_client"
    verbose_name = "configstore (client)"

    def ready(self) -> None:
        from configstore_client.django import checks  # noqa: F401  (registers them)
