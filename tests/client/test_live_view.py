"""The client's live view (clients/python/configstore_client/live.py) against a real 3-node
cluster: it converges after every write, tells its subscribers each change once, and, with
the cluster stopped, a new view starts from its cache file and says how old it is."""

from __future__ import annotations

import json
import secrets
import time

import pytest
from configstore_client import Client, LiveView, Unavailable

pytestmark = pytest.mark.cluster


def test_the_view_converges_after_every_write_then_serves_from_its_cache(make_cluster, tmp_path):
    cluster = make_cluster(web=True)
    cluster.ensure_admin()
    urls = [cluster.web_url(n) for n in cluster.ids]
    prefix = f"svc-{secrets.token_hex(3)}/"
    cache = tmp_path / "view.json"
    client = Client(urls, cluster.api_token)
    client.put(prefix + "before", 0)
    client.put("elsewhere/key", 1)  # outside the prefix: never in the view
    seen: list[tuple] = []
    view = LiveView(client, prefix, cache_path=cache, poll_timeout=2.0, save_every=0.1)
    view.subscribe(prefix + "k", lambda key, old, new: seen.append((key, old, new)))
    assert view.items() == {prefix + "before": 0} and not view.stale

    expected: list[tuple] = []
    for n in range(30):
        key = prefix + f"k{n % 4}"
        if n % 5 == 4 and key in view:
            old = view[key]
            index = client.delete(key)
            expected.append((key, old, None))
        else:
            old = view.get(key)
            index = client.put(key, n).index
            expected.append((key, old, n))
        assert view.wait_for_index(index), f"the view did not reach index {index}"
        assert view.items() == {e.key: e.value for e in client.list(prefix).entries}
    assert seen == expected  # each change once, in log order

    view.close()
    saved = json.loads(cache.read_text())
    assert saved["index"] >= index and saved["prefix"] == prefix
    cluster.stop()
    time.sleep(1.0)
    down = Client(urls, cluster.api_token, retries=1, backoff=0.01)
    with pytest.raises(Unavailable):
        down.get(prefix + "before")
    restarted = LiveView(down, prefix, cache_path=cache, poll_timeout=1.0)
    try:
        assert restarted.from_cache and restarted.stale
        assert restarted.items() == view.items()
        assert 1.0 <= restarted.age < 60
    finally:
        restarted.close(timeout=5)
    elsewhere = LiveView(down, "other/", cache_path=cache, start=False)
    with pytest.raises(Unavailable):
        elsewhere.start()  # a cache of another prefix is not served
