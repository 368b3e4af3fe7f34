import os

from celery import Celery

from consensus.worker import PaxosNode

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "configstore.settings")

app = Celery("configstore")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The node lives in the worker that consumes consensus.<node id> (see consensus/worker.py).
app.steps["worker"].add(PaxosNode)
