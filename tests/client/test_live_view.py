"""The client's live view (clients/python/configstore_client/live.py) against a real 3-node
cluster: it converges after every write, tells its subscribers each change once, and, with
the cluster stopped, a new view starts from its cache file and says how old it is."""

from __future__ import annotations

import json
import random
import secrets
import threading
import time

import pytest
from configstore_client import Client, LiveView, NotFound, Unavailable

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


#: The kill test's figures: changes written, kills of the node the view's watch is on.
CHANGES, KILLS, WRITERS, KEYS = 1000, 4, 8, 20


def test_a_view_whose_node_is_killed_resumes_on_another_and_misses_nothing(make_cluster):
    """Issue 14's acceptance: writers make 1,000 changes (puts and deletes over 20 keys)
    while, again and again, the node the view's watch is on is killed (web server and
    worker, SIGKILL) and restarted; the changes the view tells its subscriber are exactly
    the history's, in log order, none missing, none twice."""
    cluster = make_cluster(web=True)
    cluster.ensure_admin()
    urls = [cluster.web_url(n) for n in cluster.ids]
    node_at = {cluster.web_url(n): n for n in cluster.ids}
    prefix = f"killed-{secrets.token_hex(3)}/"
    began = time.monotonic()
    watching = Client(urls, cluster.api_token, retries=6, backoff=0.05, max_backoff=0.5)
    view = LiveView(watching, prefix, poll_timeout=2.0)
    seen: list[tuple] = []
    view.subscribe(prefix, lambda key, old, new: seen.append((key, old, new)))

    lock = threading.Lock()
    figures = {"claimed": 0, "answered": 0, "kills": 0, "uncertain": 0, "absent": 0}
    watched: list[str] = []  # the node the watch was on, at each kill
    failures: list[BaseException] = []
    stop = threading.Event()

    def wait_for(condition, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if stop.is_set():
                raise RuntimeError("stopped: another thread failed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} within {timeout} s: {figures}")
            time.sleep(0.02)

    def write(number: int) -> None:
        keys = [prefix + f"k{k}" for k in range(number, KEYS, WRITERS)]  # this writer's
        present: set[str] = set()
        rng = random.Random(number)
        start = number % len(urls)
        with Client(
            urls[start:] + urls[:start], cluster.api_token, retries=8, backoff=0.05
        ) as client:
            while not stop.is_set():
                with lock:
                    if figures["claimed"] >= CHANGES:
                        return
                    n = figures["claimed"]
                    figures["claimed"] += 1
                # The changes go on in KILLS + 1 stretches, each after one more kill.
                wait_for(lambda n=n: figures["kills"] >= n * (KILLS + 1) // CHANGES, "a kill")
                key = rng.choice(keys)
                try:
                    if key in present and rng.random() < 0.3:
                        client.delete(key)
                        present.discard(key)
                    else:
                        client.put(key, number * 1_000_000 + n)
                        present.add(key)
                except NotFound:  # an uncertain write of ours did not commit after all
                    present.discard(key)
                    outcome = "absent"
                except Unavailable:  # e.g. NotConfirmed: it may or may not have committed
                    outcome = "uncertain"
                else:
                    outcome = "answered"
                with lock:
                    figures[outcome] += 1
                    if outcome != "answered":
                        figures["claimed"] -= 1  # write another change instead

    def kill() -> None:
        stretch = CHANGES // (KILLS + 1)
        for i in range(KILLS):
            wait_for(lambda i=i: figures["answered"] >= i * stretch + stretch // 2, "writes")
            node = node_at[watching.current_url]
            watched.append(node)
            cluster.kill_web(node)
            cluster.kill_worker(node)
            with lock:
                figures["kills"] += 1
            time.sleep(1.0)
            cluster.start_worker(node)
            cluster.start_web(node)
            cluster.wait_until_serving([node], timeout=120)
            wait_for(lambda node=node: node_at[watching.current_url] != node, "the watch moving")

    def run(target, *args) -> None:
        try:
            target(*args)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)
            stop.set()

    threads = [threading.Thread(target=run, args=(write, w), daemon=True) for w in range(WRITERS)]
    threads.append(threading.Thread(target=run, args=(kill,), daemon=True))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)
        assert not any(t.is_alive() for t in threads), f"still running after 240 s: {figures}"
        assert not failures, failures

        reader = Client(urls, cluster.api_token, retries=8)
        listing = reader.list(prefix)
        assert view.wait_for_index(listing.index, timeout=60), (view.index, listing.index)
        history = [
            (row["key"], row["old_value"], row["new_value"])
            for row in reader.history(prefix=prefix, outcome="committed", page_size=1000)
        ]
        assert view.items() == {e.key: e.value for e in listing.entries}
    finally:
        stop.set()
        view.close(timeout=10)
    print(
        f"\n{figures['answered']} changes answered ({len(history)} committed, "
        f"{figures['uncertain']} uncertain, {figures['absent']} deletes found nothing), "
        f"{figures['kills']} kills of the watch's node (on {watched}), "
        f"{time.monotonic() - began:.1f} s"
    )
    assert figures["answered"] == CHANGES and len(history) >= CHANGES
    first_difference = next(
        (i for i, (a, b) in enumerate(zip(seen, history, strict=False)) if a != b), None
    )
    assert seen == history, (
        f"the view told {len(seen)} changes, the history has {len(history)}; first "
        f"difference at {first_difference}: "
        f"{None if first_difference is None else (seen[first_difference], history[first_difference])}"
    )
    assert figures["kills"] >= 3 and len(set(watched)) >= 2, watched
