"""Converting a cluster whose users were per node: `manage.py access convert` on a real
3-node cluster refuses while the nodes' identities differ, naming each difference, and
records the agreed identities as the access history's baseline through consensus."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cluster

HASH = "pbkdf2_sha256$1000000$salt$hash-of-bobs-password"


def _per_node_user(cluster, node: str, username: str, password: str) -> None:
    """A user written straight into one node's database, as before identities were
    replicated (each node's admin made its own)."""
    cluster.query(
        node,
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, "
        "email, is_staff, is_active, date_joined) VALUES (%s, false, %s, '', '', '', true, "
        "true, now()) RETURNING id",
        [password, username],
    )


def test_convert_refuses_disagreeing_nodes_then_records_the_agreed_identities(make_cluster):
    cluster = make_cluster()
    nodes = [f"--node={n}={cluster.database_url(n)}" for n in cluster.ids]
    _per_node_user(cluster, "n1", "bob", HASH)
    _per_node_user(cluster, "n2", "bob", HASH)
    _per_node_user(cluster, "n3", "bob", HASH.replace("bobs", "other"))
    _per_node_user(cluster, "n1", "carol", HASH)
    with pytest.raises(RuntimeError) as refused:
        cluster.manage("n1", "access", "convert", *nodes)
    text = str(refused.value)
    assert "user bob: password differs" in text and "user carol: missing on n2, n3" in text
    assert cluster.query("n1", "SELECT count(*) FROM configstore_access_history") == [(0,)]

    cluster.query(
        "n3", "UPDATE auth_user SET password = %s WHERE username = 'bob' RETURNING 1", [HASH]
    )
    cluster.query("n1", "DELETE FROM auth_user WHERE username = 'carol' RETURNING 1")
    out = cluster.manage("n2", "access", "convert", *nodes)
    assert "the 3 nodes agree: 1 users" in out
    cluster.wait_everywhere(
        "SELECT 1 FROM configstore_access_history WHERE subject = 'user:bob'", []
    )
    rows = [
        cluster.query(n, "SELECT command, subject, outcome, actor FROM configstore_access_history")
        for n in cluster.ids
    ]
    assert rows[0] == rows[1] == rows[2] == [("put_user", "user:bob", "committed", "manage.py")]
    assert all(
        cluster.query(n, "SELECT password FROM auth_user WHERE username = 'bob'") == [(HASH,)]
        for n in cluster.ids
    )
