"""/api/v1/: keys may hold '/', so they are matched with the path converter (and validated
by the views: an invalid key is a 400, not a 404)."""

from django.urls import path, register_converter

from configstore.api import access_views as access
from configstore.api import views


class AnythingConverter:
    """Django's `path` converter, newlines included: every key in a URL reaches its view
    (an invalid one is a 400 there), never the catch-all 404."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(AnythingConverter, "anything")

urlpatterns = [
    path("keys/", views.KeyListView.as_view(), name="keys"),
    path("keys/<anything:key>", views.KeyDetailView.as_view(), name="key"),
    path("txn", views.TxnView.as_view(), name="txn"),
    path("history/", views.HistoryView.as_view(), name="history"),
    path("watch/", views.WatchView.as_view(), name="watch"),
    path("schemas/", views.SchemaListView.as_view(), name="schemas"),
    path("schemas/<anything:key>", views.SchemaDetailView.as_view(), name="schema"),
    path("requests/<anything:request_id>", views.RequestOutcomeView.as_view(), name="request"),
    path("cluster/", views.ClusterView.as_view(), name="cluster"),
    path("access/users/", access.UserListView.as_view(), name="access-users"),
    path("access/users/<str:username>", access.UserDetailView.as_view(), name="access-user"),
    path("access/groups/", access.GroupListView.as_view(), name="access-groups"),
    path("access/groups/<str:name>", access.GroupDetailView.as_view(), name="access-group"),
    path("access/tokens/", access.TokenListView.as_view(), name="access-tokens"),
    path("access/tokens/<str:token_id>", access.TokenDetailView.as_view(), name="access-token"),
    path("access/history/", access.AccessHistoryView.as_view(), name="access-history"),
]
