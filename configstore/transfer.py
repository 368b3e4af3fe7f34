"""State transfer: a node's web server serves snapshots of its state to its peers, and a node
that fell behind its peers' compacted logs fetches one and installs it.

The runtime asks for it (consensus.applier: a peer answered this node's catch-up with
"install a snapshot of at least slot N"): `install_from_peer(peer, N)` runs on the node's
applier thread and
  1. asks the peer's web server for a snapshot of at least slot N
     (GET /cluster/snapshot?at_least=N): the peer answers with a snapshot file it keeps,
     taken at its applied index then (or earlier, if that one is recent enough), by name,
     size and sha256;
  2. downloads the file in chunks of at most CHUNK_BYTES (GET /cluster/snapshot/<name> with
     `Range: bytes=<offset>-`), appending to a partial file of its own: a chunk that fails
     is asked for again from where the file ends, and a later attempt at the same snapshot
     goes on from there (resumable);
  3. checks the whole file's sha256 against the offer, then installs it in one transaction
     (configstore.snapshot.install: every section's sha256 is checked again as it is read).

Every request carries the header `X-Configstore-Peer: <node> <unix time> <hex HMAC-SHA256>`,
the MAC over the node, the time, the method and the full path with its query, keyed by a key
derived from CONFIGSTORE_SECRET (not the envelopes' key). A request without a valid one, from
a node not in the cluster, or more than CLOCK_SKEW seconds away from this server's clock is
answered 401 with a JSON error: a snapshot holds password hashes and token hashes. Peers'
addresses come from CONFIGSTORE_PEER_URLS.

Each node keeps its files in its snapshot folder (CONFIGSTORE_SNAPSHOT_DIR): the two newest
snapshots it served (one may still be read while the next is taken) and the partial
download of one it is fetching. Taking a snapshot is serialized across the web server's
processes by a lock file there.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.http import HttpRequest, HttpResponse, JsonResponse

from configstore import snapshot
from configstore.conf import store
from consensus.api import node_id
from consensus.conf import node

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024 * 1024  # the most one response carries
CLOCK_SKEW = 300  # seconds a request's time may differ from the server's
KEPT = 2  # snapshot files a node keeps
ATTEMPTS = 5  # tries of one chunk before the transfer gives up (the peer asks again)
TIMEOUT = 60.0  # seconds per request (an offer may take a snapshot first)
HEADER = "X-Configstore-Peer"
_NAME = re.compile(r"snapshot-(\d{1,19})-([0-9a-f]{64})\.gz")
_RANGE = re.compile(r"bytes=(\d{1,19})-(\d{0,19})")


class TransferError(Exception):
    """A snapshot could not be fetched from a peer; nothing was installed."""


# ------------------------------------------------------------------- authentication


def _key(secret: str | None = None) -> bytes:
    secret = node().secret if secret is None else secret
    return hmac.new(secret.encode(), b"configstore state transfer", "sha256").digest()


def _mac(node_id: str, at: int, method: str, path: str, secret: str | None = None) -> str:
    message = f"{node_id}\n{at}\n{method}\n{path}".encode()
    return hmac.new(_key(secret), message, "sha256").hexdigest()


def peer_header(
    node_id: str, method: str, path: str, *, now: float | None = None, secret: str | None = None
) -> str:
    """The authentication header of a request by `node_id` for `path` (with its query), with
    the cluster secret `secret` (default: this node's CONFIGSTORE_SECRET)."""
    at = int(time.time() if now is None else now)
    return f"{node_id} {at} {_mac(node_id, at, method, path, secret)}"


def _authenticated(request: HttpRequest) -> str | None:
    """The peer a request comes from, or None when its header does not prove one."""
    parts = request.headers.get(HEADER, "").split(" ")
    if len(parts) != 3 or parts[0] not in node().peers or not parts[1].isdigit():
        return None
    peer, at, mac = parts[0], int(parts[1]), parts[2]
    if abs(time.time() - at) > CLOCK_SKEW:
        return None
    expected = _mac(peer, at, request.method or "", request.get_full_path())
    return peer if hmac.compare_digest(expected, mac) else None


def _refused() -> JsonResponse:
    return JsonResponse(
        {
            "error": "unauthenticated",
            "detail": f"state transfer is for the cluster's nodes: a valid {HEADER} header is "
            "required",
        },
        status=401,
    )


# ---------------------------------------------------------------------- the folder


def folder() -> Path:
    """This node's snapshot folder (CONFIGSTORE_SNAPSHOT_DIR; made if missing)."""
    path = Path(
        store().snapshot_dir
        or os.path.join(tempfile.gettempdir(), f"configstore-snapshots-{node_id()}")
    )
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Kept:
    name: str
    applied_index: int
    bytes: int
    sha256: str
    taken: float = 0.0  # its file's mtime (0: an offer from a peer)

    def offer(self) -> dict:
        return {
            "name": self.name,
            "applied_index": self.applied_index,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


def kept() -> list[Kept]:
    """The snapshots this node keeps, the newest (highest index) first."""
    found = []
    for path in folder().iterdir():
        match = _NAME.fullmatch(path.name)
        if match:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append(Kept(path.name, int(match[1]), stat.st_size, match[2], stat.st_mtime))
    return sorted(found, key=lambda k: k.applied_index, reverse=True)


def served() -> list[dict]:
    """The snapshots this node keeps for its peers, for the admin's cluster page: each
    offer's fields and when it was taken (UTC)."""
    return [{**k.offer(), "taken": datetime.fromtimestamp(k.taken, UTC)} for k in kept()]


def take(at_least: int) -> Kept:
    """A snapshot of this node at an applied index >= `at_least`: the newest kept one if it
    is, else one taken now (at the applied index: never below `at_least` on a node that
    compacted through `at_least`). TransferError if this node has not applied `at_least`."""
    where = folder()
    with open(where / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one snapshot at a time, across processes
        newest = kept()
        if newest and newest[0].applied_index >= at_least:
            return newest[0]
        partial = where / f".taking-{os.getpid()}"
        try:
            with open(partial, "wb") as out:
                info = snapshot.save(out)
                out.flush()
                os.fsync(out.fileno())
            if info.applied_index < at_least:
                raise TransferError(
                    f"this node has applied up to {info.applied_index}, not {at_least}"
                )
            name = f"snapshot-{info.applied_index}-{info.sha256}.gz"
            os.replace(partial, where / name)
        finally:
            partial.unlink(missing_ok=True)
        newest = kept()  # the new one first: its index is the highest
        for old in newest[KEPT:]:
            (where / old.name).unlink(missing_ok=True)
        log.info("took snapshot %s (%d bytes) for a peer", name, newest[0].bytes)
        return newest[0]


# ------------------------------------------------------------------------ the views


def offer_view(request: HttpRequest) -> HttpResponse:
    """GET /cluster/snapshot?at_least=N: a snapshot kept here at an index >= N, by name."""
    if _authenticated(request) is None:
        return _refused()
    raw = request.GET.get("at_least", "0")
    if not raw.isdigit() or len(raw) > 19:
        return JsonResponse(
            {"error": "bad_request", "detail": "at_least must be a whole number"}, status=400
        )
    try:
        made = take(int(raw))
    except TransferError as error:
        return JsonResponse({"error": "not_yet", "detail": str(error)}, status=409)
    except Exception:  # noqa: BLE001 - the database may be down: the peer asks again
        log.exception("cannot take a snapshot for a peer")
        return JsonResponse(
            {"error": "unavailable", "detail": "cannot take a snapshot now"},
            status=503,
            headers={"Retry-After": "2"},
        )
    return JsonResponse(made.offer())


def chunk_view(request: HttpRequest, name: str) -> HttpResponse:
    """GET /cluster/snapshot/<name>, `Range: bytes=START-[END]`: at most CHUNK_BYTES of a
    kept snapshot from START (206 with Content-Range; 200 and the first chunk without a
    Range), 416 past its end, 404 when it is not kept (any more)."""
    if _authenticated(request) is None:
        return _refused()
    if not _NAME.fullmatch(name):
        return JsonResponse({"error": "not_found", "detail": "no such snapshot"}, status=404)
    try:
        file = open(folder() / name, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return JsonResponse({"error": "not_found", "detail": "no such snapshot"}, status=404)
    with file:
        size = os.fstat(file.fileno()).st_size
        wanted = request.headers.get("Range")
        start, end = 0, size - 1
        if wanted is not None:
            match = _RANGE.fullmatch(wanted.strip())
            if match is None:
                return JsonResponse(
                    {"error": "bad_request", "detail": "Range must be bytes=START- or START-END"},
                    status=400,
                )
            start = int(match[1])
            if match[2]:
                end = min(end, int(match[2]))
            if start >= size or end < start:
                return HttpResponse(status=416, headers={"Content-Range": f"bytes */{size}"})
        end = min(end, start + CHUNK_BYTES - 1)
        file.seek(start)
        body = file.read(end - start + 1)
    response = HttpResponse(body, content_type="application/gzip", status=206 if wanted else 200)
    response["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{size}"
    response["Accept-Ranges"] = "bytes"
    return response


# ------------------------------------------------------------------------ the fetch


def _get(url: str, path: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(
        url + path,
        headers={**(headers or {}), HEADER: peer_header(node_id(), "GET", path)},
    )
    return urllib.request.urlopen(request, timeout=TIMEOUT)  # noqa: S310 - http(s) only


def _offer(url: str, at_least: int) -> Kept:
    try:
        with _get(url, f"/cluster/snapshot?at_least={at_least}") as answer:
            offer = json.loads(answer.read())
    except (OSError, ValueError) as error:
        raise TransferError(f"no snapshot offered by {url}: {error}") from None
    match = _NAME.fullmatch(str(offer.get("name", "")))
    if (
        match is None
        or offer.get("applied_index") != int(match[1])
        or offer.get("sha256") != match[2]
        or not isinstance(offer.get("bytes"), int)
    ):
        raise TransferError(f"{url} offered a malformed snapshot: {offer!r}")
    return Kept(offer["name"], offer["applied_index"], offer["bytes"], offer["sha256"])


def download(url: str, offer: Kept, into: Path) -> None:
    """Download the offered file into `into`, appending from its current size, a chunk at
    a time; each chunk tried ATTEMPTS times. Checks the whole file's sha256 at the end
    (TransferError, and the file is removed, if it differs)."""
    failures = 0
    while True:
        have = into.stat().st_size if into.exists() else 0
        if have >= offer.bytes:
            break
        try:
            with _get(url, f"/cluster/snapshot/{offer.name}", {"Range": f"bytes={have}-"}) as r:
                if r.status != 206 or not r.headers.get("Content-Range", "").startswith(
                    f"bytes {have}-"
                ):
                    raise TransferError(f"{url} answered a chunk request with {r.status}")
                body = r.read(CHUNK_BYTES + 1)
            if not body or len(body) > CHUNK_BYTES or have + len(body) > offer.bytes:
                raise TransferError(f"{url} sent a chunk of {len(body)} bytes")
            with open(into, "ab") as out:
                out.write(body)
            failures = 0
        except (OSError, TransferError) as error:  # an HTTPError is an OSError
            if getattr(error, "code", None) == 404:  # no longer kept there: a new offer
                into.unlink(missing_ok=True)
                raise TransferError(f"{url} no longer keeps {offer.name}") from None
            failures += 1
            if failures >= ATTEMPTS:
                raise TransferError(f"fetching {offer.name} from {url}: {error}") from None
            time.sleep(min(4.0, 0.25 * 2**failures))
    digest = hashlib.sha256()
    with open(into, "rb") as done:
        while block := done.read(1024 * 1024):
            digest.update(block)
    if digest.hexdigest() != offer.sha256:
        into.unlink(missing_ok=True)
        raise TransferError(f"{offer.name} from {url}: its sha256 differs from the offer's")


def install_from_peer(peer: str, at_least: int) -> int | None:
    """Fetch a snapshot of at least slot `at_least` and install it if it is above this
    node's applied index (consensus.api.Application.install_snapshot). `peer` (the node that
    asked, typically the leader, which streams catch-up) is asked last: another node that
    has applied `at_least` serves it first, so that taking the snapshot costs the leader
    nothing. The index installed, or None (not above it). Raises TransferError or
    snapshot.SnapshotError: nothing changed."""
    urls = node().peer_urls
    if peer not in urls:
        raise TransferError(f"no web URL of {peer} in CONFIGSTORE_PEER_URLS")
    others = sorted(p for p in urls if p not in (peer, node_id()))
    for candidate in [*others, peer]:
        try:
            url, offer = urls[candidate], _offer(urls[candidate], at_least)
            break
        except TransferError as error:
            if candidate == peer:
                raise
            log.info("no snapshot from %s (%s); asking the next peer", candidate, error)
    where = folder()
    into = where / f"incoming-{offer.name}"
    for stale in where.glob("incoming-*"):  # an earlier, other transfer's part
        if stale != into:
            stale.unlink(missing_ok=True)
    download(url, offer, into)
    try:
        with open(into, "rb") as source:
            info = snapshot.install(source)
    finally:
        into.unlink(missing_ok=True)
    return None if info is None else info.applied_index
