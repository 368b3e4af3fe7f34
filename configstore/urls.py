from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from configstore import admin_access, admin_views, metrics, transfer
from configstore.api import errors, views

urlpatterns = [
    path("admin/cluster/", admin.site.admin_view(admin_views.cluster_view), name="admin-cluster"),
    path("admin/password_change/", admin.site.admin_view(admin_access.password_change)),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics.metrics_view, name="metrics"),  # Prometheus; not under /api/
    # State transfer between the nodes (peer-authenticated: configstore.transfer).
    path("cluster/snapshot", transfer.offer_view, name="snapshot-offer"),
    path("cluster/snapshot/<str:name>", transfer.chunk_view, name="snapshot-chunk"),
    path("api/schema/", SpectacularAPIView.as_view(), name="openapi"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="openapi"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="openapi"), name="api-redoc"),
    path("api/v1/", include(("configstore.api.urls", "api"))),
    # Everything else under /api/ is a JSON 404, like every other API error.
    re_path(r"^api/", errors.api_not_found),
    # The admin's and the API docs' own CSS and JS, from the installed apps (no CDN, no
    # collectstatic): a node serves the few files its pages use itself.
    re_path(rf"^{settings.STATIC_URL.strip('/')}/(?P<path>.*)$", serve_static, {"insecure": True}),
]

handler400 = "configstore.api.errors.bad_request"
handler403 = "configstore.api.errors.forbidden"
handler404 = "configstore.api.errors.not_found"
handler500 = "configstore.api.errors.server_error"
