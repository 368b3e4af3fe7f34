import logging
import os

from celery import Celery, signals

from consensus.worker import PaxosNode

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "configstore.settings")
# Celery's Django fixup runs every system check before the worker starts; the URL checks
# import the web tier's every view (the REST API, its schema generator): a third of a
# second of CPU at each start, for nothing the worker serves. The worker runs the other
# checks itself (below).
os.environ.setdefault("CELERY_SKIP_CHECKS", "1")

log = logging.getLogger(__name__)

app = Celery("configstore")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The node lives in the worker that consumes consensus.<node id> (see consensus/worker.py).
app.steps["worker"].add(PaxosNode)


@signals.worker_init.connect
def run_system_checks(**kwargs) -> None:
    """Django's system checks but those tagged `urls`; a worker with errors does not start."""
    import django
    from django.core import checks
    from django.core.management.base import SystemCheckError

    django.setup()
    problems = []
    for check in checks.registry.registry.get_checks(include_deployment_checks=False):
        if checks.Tags.urls not in getattr(check, "tags", ()):
            problems.extend(check(app_configs=None, databases=None))
    errors = [p for p in problems if p.is_serious() and not p.is_silenced()]
    for problem in problems:
        if problem not in errors and not problem.is_silenced():
            log.warning("system check: %s", problem)
    if errors:
        raise SystemCheckError("\n".join(str(e) for e in errors))
