"""The admin login's lockout page (django-axes' AXES_LOCKOUT_CALLABLE): 429 with Retry-After.

A locked-out (username, client address) pair stays locked for the whole cool-off after its
last failed attempt (every refused attempt counts as one and starts it again), so the
cool-off is also the time to wait."""

from __future__ import annotations

import math

from axes.helpers import get_client_username, get_cool_off
from django.conf import settings
from django.contrib import admin
from django.http import HttpResponse
from django.shortcuts import render


def lockout_response(request, original_response=None, credentials=None) -> HttpResponse:
    cool_off = get_cool_off(request)
    seconds = max(1, math.ceil(cool_off.total_seconds())) if cool_off else None
    context = {
        **admin.site.each_context(request),
        "title": "Too many failed sign-ins",
        "username": get_client_username(request, credentials) or "",
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "minutes": math.ceil(seconds / 60) if seconds else None,
    }
    response = render(request, "admin/configstore/lockout.html", context, status=429)
    if seconds:
        response["Retry-After"] = str(seconds)
    return response
