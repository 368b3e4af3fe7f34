"""A consuming service's settings: a Django project that is not configstore, with the
settings bridge installed (tests/client/test_django_bridge.py runs it as a process).
CONFIGSTORE_CLIENT comes from the environment as JSON."""

import json
import os

SECRET_KEY = "a consuming service's own key, for a test"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "configstore_client.django"]
DATABASES = {}
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "OPTIONS": {"context_processors": ["configstore_client.django.context_processors.config"]},
    }
]
CONFIGSTORE_CLIENT = json.loads(os.environ["SERVICE_CONFIGSTORE_CLIENT"])
LOGGING = {
    "version": 1,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"configstore_client": {"handlers": ["stderr"], "level": "WARNING"}},
}
