import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "configstore.settings")
application = get_wsgi_application()

# With DEBUG off, a web server does not start with a development secret.
from configstore.checks import refuse_insecure_start  # noqa: E402 - needs Django set up

refuse_insecure_start()
