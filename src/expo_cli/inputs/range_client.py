"""Range requests at the speed of the socket: each body received straight into the buffer that becomes the tensor.

huggingface_hub's HTTP client hands a body over in 64 KB pieces, each parsed and copied in Python: on a fast link
that, not the network, caps a streamed merge (measured here: ~240 MB/s on one connection, holding the interpreter
lock most of the time, against ~430 MB/s for `readinto`). For tensor data `RangeClient` keeps one persistent
HTTP/1.1 connection per thread and host (`http.client`, through HTTP(S)_PROXY/NO_PROXY, verifying TLS against the
system's certificates or SSL_CERT_FILE/SSL_CERT_DIR) and reads each body with `readinto`, which leaves the lock
while the kernel copies.

Where a file's bytes live is asked of the Hub once per file, at the validated commit (`get_hf_file_metadata`: the
Hub answers for LFS files with a redirect to a signed CDN URL), and asked again when that URL is refused (it
expires). The token goes to the Hub's own address only, never to the host it redirects to.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

from ..errors import ExpoError, HubError
from . import retry
from .hub import hub_errors, network_cause
from .retry import retried_status

T = TypeVar("T")

PIECE_BYTES = 4 * 1024 * 1024  # read per `readinto` call: what a connection dropped mid-body loses at most
MIN_BYTES_PER_SECOND = 64_000  # a body arriving slower than this (after the timeout) is cut and asked for again
REFUSED_SIGNED = frozenset({401, 403, 404, 410})  # how a CDN says its signed URL expired


class Transient(Exception):
    """A failure worth retrying: `received` of the `asked` bytes arrived before it, and the server may have asked
    for a wait."""

    def __init__(self, reason: str, received: int = 0, retry_after: str | None = None, asked: int = 0) -> None:
        super().__init__(reason)
        self.received, self.asked = received, asked
        self.retry_after = retry_after

    @property
    def progressed(self) -> bool:
        """Whether at least half of what was asked arrived: a link that drops now and then, not a server that
        sends a byte and hangs up (which may halve what is left at most log2(size) times)."""
        return self.asked > 0 and 2 * self.received >= self.asked


@dataclass(frozen=True)
class Location:
    """Where a file's bytes are read from, and the headers that go with it."""

    url: str
    headers: dict[str, str]
    signed: bool  # a redirect away from the Hub (a CDN URL that expires)


def same_origin(a: str, b: str) -> bool:
    one, two = urlsplit(a), urlsplit(b)
    return (one.scheme, one.hostname, one.port) == (two.scheme, two.hostname, two.port)


def proxy_for(url: str) -> str | None:
    """The proxy a request to this URL goes through: HTTP_PROXY/HTTPS_PROXY unless NO_PROXY names its host."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class Watchdog:
    """Cuts the connections whose request ran past its deadline.

    A socket timeout bounds each wait for a byte, not a request: a server that drips a byte every few seconds keeps
    a read going for ever. Each body is read under a deadline (the timeout plus its size at MIN_BYTES_PER_SECOND);
    one thread, started on first use, shuts down the sockets past theirs, which ends the read as a dropped
    connection would (retried, as `Transient`).
    """

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self._watched: dict[int, tuple[float, socket.socket]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, deadline: float) -> int:
        with self._lock:
            key = id(sock)
            self._watched[key] = (deadline, sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="expo-range-watchdog", daemon=True)
                self._thread.start()
            return key

    def release(self, key: int) -> None:
        with self._lock:
            self._watched.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.period)
            now = time.monotonic()
            with self._lock:
                late = [key for key, (deadline, _) in self._watched.items() if deadline < now]
                for key in late:
                    _, sock = self._watched.pop(key)
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


WATCHDOG = Watchdog()


class RangeClient:
    """Ranged GETs of one Hub repo's files at one commit, each into a caller's buffer."""

    def __init__(self, repo_id: str, sha: str, token: str | None, timeout: float | None = None) -> None:
        from huggingface_hub import constants  # the Hub client loads when the Hub is used

        self.repo_id, self.sha, self.token = repo_id, sha, token
        self.timeout = timeout if timeout is not None else constants.HF_HUB_DOWNLOAD_TIMEOUT
        self._locations: dict[str, Location] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # each thread's connections, by (scheme, host, port)
        self._tls: ssl.SSLContext | None = None

    def locate(self, name: str, again: bool = False) -> Location:
        """Where `name` is read from: asked of the Hub the first time (or `again`, when a signed URL was refused)."""
        with self._lock:
            known = self._locations.get(name)
        if known is not None and not again:
            return known
        from huggingface_hub import get_hf_file_metadata, hf_hub_url  # the Hub client loads when the Hub is used
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(self.repo_id, name, revision=self.sha)
        try:
            metadata = get_hf_file_metadata(url, token=self.token)
        except Exception as err:
            if (transient := _transient(err)) is not None:
                raise transient from err
            with hub_errors(self.repo_id, self.sha):
                raise
        if metadata.commit_hash != self.sha:  # every answer names the commit it is from: the validated one
            raise HubError(
                f"{self.repo_id}/{name}: the Hub answered for commit {metadata.commit_hash or '(none named)'}, not "
                f"{self.sha}; run again (if the branch moved) or check HF_ENDPOINT and proxies"
            )
        target = urlsplit(metadata.location)
        if urlsplit(url).scheme == "https" and target.scheme != "https":
            raise HubError(
                f"{self.repo_id}/{name}: the Hub redirected an https request to {target.scheme}://{target.hostname}; "
                "refusing to read weights over an unencrypted link"
            )
        headers = build_hf_headers(token=self.token)
        signed = not same_origin(metadata.location, url)
        if signed:  # the token is for the Hub: a signed URL carries its own authorization
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        location = Location(metadata.location, {**headers, "Accept-Encoding": "identity"}, signed)
        with self._lock:
            self._locations[name] = location
        return location

    def read(self, name: str, begin: int, into: memoryview) -> None:
        """Bytes [begin, begin + len(into)) of `name` into `into`, through network faults (see `retried`): what
        arrived before a failure is kept and only the rest asked for again."""
        received = 0

        def attempt() -> None:
            nonlocal received
            try:
                self.read_into(name, begin + received, into[received:])
                received = len(into)
            except Transient as err:
                err.asked = len(into) - received
                received += err.received
                raise

        retried(attempt, f"{self.repo_id}/{name}, bytes {begin}-{begin + len(into) - 1}")

    def read_into(self, name: str, begin: int, into: memoryview) -> None:
        """Receive bytes [begin, begin + len(into)) of `name` into `into`.

        Raises `Transient` (with the bytes that did arrive) for what a retry may cure: a connection dropped or
        timed out, 408/425/429/5xx, a body shorter than asked, a signed URL refused (it is asked for again);
        `HubError` for an answer no retry changes.
        """
        location = self.locate(name)
        last = begin + len(into) - 1
        response = self._send(location, {**location.headers, "Range": f"bytes={begin}-{last}"})
        status = response.status
        if status != 206:
            self._discard(location.url, response)
            if retried_status(status):
                raise Transient(f"HTTP {status}", retry_after=response.getheader("Retry-After"))
            if location.signed and status in REFUSED_SIGNED:
                self.locate(name, again=True)
                raise Transient(f"HTTP {status} from the signed URL (asked the Hub for a new one)", retry_after="0")
            if status == 200:
                raise HubError(
                    f"{self.repo_id}/{name}: the server sent the whole file for a byte range (a proxy in the way?); "
                    "set NO_PROXY for the Hub, or merge without --stream"
                )
            self.locate(name, again=True)  # the Hub's own answer, as a clear line (no access, not found, ...)
            raise HubError(f"{self.repo_id}/{name}, bytes {begin}-{last}: HTTP {status}")
        first = _range_start(response.getheader("Content-Range"))
        if first != begin:
            self._discard(location.url, response)
            raise HubError(
                f"{self.repo_id}/{name}: asked for bytes from {begin}, the server sent from {first} (a proxy in the "
                "way?); set NO_PROXY for the Hub, or merge without --stream"
            )
        received = self._receive(location.url, response, into)
        if received < len(into):
            raise Transient(f"a body {len(into) - received} bytes short", received=received)

    def _send(self, location: Location, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send the request on this thread's connection and read the answer's head. A kept-alive connection the
        server has closed in the meantime is replaced once, at no cost; a certificate not trusted is a `HubError`;
        any other failure is `Transient`."""
        for reused in (True, False):
            connection, target, extra = self._connection(location.url)
            reused = reused and connection.sock is not None
            try:
                connection.request("GET", target, headers={**headers, **extra})
                return connection.getresponse()
            except ssl.SSLCertVerificationError as err:  # no retry changes a certificate
                self._drop(location.url)
                raise HubError(
                    f"{urlsplit(location.url).netloc}: its certificate is not trusted ({err.verify_message}; "
                    "CERTIFICATE_VERIFY_FAILED); name the authority that signed it with SSL_CERT_FILE"
                ) from err
            except (OSError, http.client.HTTPException) as err:
                self._drop(location.url)
                stale = isinstance(err, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError))
                if not (reused and stale):
                    raise Transient(f"{type(err).__name__}: {err}") from err
        raise AssertionError("unreachable")

    def _receive(self, url: str, response: http.client.HTTPResponse, into: memoryview) -> int:
        """Read the body into `into`, a piece at a time; the bytes received, also when the connection drops."""
        received = 0
        size = len(into) if response.length is None else min(len(into), response.length)
        started = time.monotonic()
        deadline = started + (self.timeout or 10.0) + size / MIN_BYTES_PER_SECOND
        sock = self._local.__dict__.get("connections", {}).get(_key(url))
        watched = WATCHDOG.watch(sock.sock, deadline) if sock is not None and sock.sock is not None else None
        try:
            while received < size:
                count = response.readinto(into[received : min(size, received + PIECE_BYTES)])
                if not count:
                    break
                received += count
        except (OSError, http.client.HTTPException) as err:
            self._drop(url)
            raise Transient(f"{type(err).__name__}: {err}", received=received) from err
        finally:
            if watched is not None:
                WATCHDOG.release(watched)
        if received < size and time.monotonic() >= deadline:
            self._drop(url)
            raise Transient(
                f"{received} of {size} bytes in {time.monotonic() - started:.0f} s, slower than "
                f"{MIN_BYTES_PER_SECOND // 1000} kB/s",
                received=received,
            )
        if response.length:  # more than asked: never used, and the connection cannot be reused
            self._drop(url)
        return received

    def _discard(self, url: str, response: http.client.HTTPResponse) -> None:
        """Read a small error body so the connection can be reused; drop it otherwise."""
        try:
            if response.length is not None and response.length <= 65536:
                response.read()
                return
        except (OSError, http.client.HTTPException):
            pass
        self._drop(url)

    def _connection(self, url: str) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        """This thread's connection for the URL's host (made when missing), the request target to send, and the
        headers a proxy asks for."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname, parts.port)
        proxy = proxy_for(url)
        through = urlsplit(proxy) if proxy else None
        auth = {}
        if through is not None and through.username:
            secret = f"{unquote(through.username)}:{unquote(through.password or '')}".encode()
            auth = {"Proxy-Authorization": "Basic " + base64.b64encode(secret).decode()}
        connections = self._local.__dict__.setdefault("connections", {})
        if key not in connections:
            connections[key] = self._connect(parts.scheme, parts.hostname or "", parts.port, through, auth)
        if through is not None and parts.scheme == "http":  # a plain request to the proxy names the whole URL
            return connections[key], url, auth
        return connections[key], url[len(f"{parts.scheme}://{parts.netloc}") :] or "/", {}

    def _connect(
        self, scheme: str, host: str, port: int | None, proxy: SplitResult | None, auth: dict[str, str]
    ) -> http.client.HTTPConnection:
        if scheme != "https":
            if proxy is None:
                return http.client.HTTPConnection(host, port, timeout=self.timeout)
            return http.client.HTTPConnection(proxy.hostname or "", proxy.port or 80, timeout=self.timeout)
        if self._tls is None:
            self._tls = ssl.create_default_context()  # honours SSL_CERT_FILE / SSL_CERT_DIR
        if proxy is None:
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls)
        connection = http.client.HTTPSConnection(
            proxy.hostname or "", proxy.port or 80, timeout=self.timeout, context=self._tls
        )
        connection.set_tunnel(host, port, headers=auth)  # CONNECT, then TLS with the host itself
        return connection

    def _drop(self, url: str) -> None:
        parts = urlsplit(url)
        connection = self._local.__dict__.get("connections", {}).pop((parts.scheme, parts.hostname, parts.port), None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        """Close the calling thread's connections (each pool thread's end with it)."""
        for connection in self._local.__dict__.pop("connections", {}).values():
            connection.close()


def retried(call: Callable[[], T], what: str) -> T:
    """`call()`, tried again through what a retry may cure (`Transient`, or a Hub request's network error or
    408/425/429/5xx) under the one policy of `retry`: ATTEMPTS failures in a row (a failure that brought half of
    what was asked starts the count again; one byte does not), BLOCK_SECONDS after the first failure, or the run's
    retry budget end it with a HubError naming `what`."""
    failures = 0
    deadline: float | None = None
    while True:
        try:
            return call()
        except ExpoError:  # already a verdict (no access, not found, a refused answer): no retry changes it
            raise
        except Exception as err:
            failure = err if isinstance(err, Transient) else _transient(err)
            if failure is None:
                raise
        failures = 1 if isinstance(failure, Transient) and failure.progressed else failures + 1
        deadline = deadline if deadline is not None else time.monotonic() + retry.BLOCK_SECONDS
        if failures >= retry.ATTEMPTS:
            raise HubError(f"{what}: {failure} ({retry.ATTEMPTS} attempts); run again to resume")
        retry.wait(failures, failure.retry_after, f"{what}: {failure}", deadline)


def _key(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _transient(err: Exception) -> Transient | None:
    """A failure of a Hub request worth retrying (a network error, 408/425/429/5xx), as `Transient`."""
    from huggingface_hub import errors  # the Hub client loads when the Hub is used

    if isinstance(err, errors.HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if retried_status(status):
            return Transient(f"HTTP {status}", retry_after=err.response.headers.get("Retry-After"))
        return None
    cause = network_cause(err)
    return None if cause is None else Transient(f"{type(cause).__name__}: {cause}")


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a `Content-Range: bytes A-B/N` answer."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    first = content_range[len("bytes ") :].split("-", 1)[0]
    return int(first) if first.isdigit() else None
