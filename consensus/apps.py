from django.apps import AppConfig


class ConsensusConfig(AppConfig):
    name = "consensus"
    verbose_name = "Consensus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from consensus.dbroles import grant_after_migrate

        # Once per migrate (sender: this app), after every app's migrations have run: the
        # app role gets its privileges on every table, new ones included.
        post_migrate.connect(grant_after_migrate, sender=self, dispatch_uid="grant_app_role")
