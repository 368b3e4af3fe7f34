"""/api/v1/: keys may hold '/', so they are matched with the path converter (and validated
by the views: an invalid key is a 400, not a 404)."""

from django.urls import path

from configstore.api import views

urlpatterns = [
    path("keys/", views.KeyListView.as_view(), name="keys"),
    path("keys/<path:key>", views.KeyDetailView.as_view(), name="key"),
    path("txn", views.TxnView.as_view(), name="txn"),
    path("history/", views.HistoryView.as_view(), name="history"),
    path("watch/", views.WatchView.as_view(), name="watch"),
    path("schemas/", views.SchemaListView.as_view(), name="schemas"),
    path("schemas/<path:key>", views.SchemaDetailView.as_view(), name="schema"),
    path("requests/<path:request_id>", views.RequestOutcomeView.as_view(), name="request"),
    path("cluster/", views.ClusterView.as_view(), name="cluster"),
]
