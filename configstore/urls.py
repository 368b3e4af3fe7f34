from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from configstore.api import errors, views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="openapi"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="openapi"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="openapi"), name="api-redoc"),
    path("api/v1/", include(("configstore.api.urls", "api"))),
    # Everything else under /api/ is a JSON 404, like every other API error.
    re_path(r"^api/", errors.api_not_found),
]

handler500 = "configstore.api.errors.server_error"
