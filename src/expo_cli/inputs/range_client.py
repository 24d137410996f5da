"""Range requests of tensor data: each body received into the buffer that becomes the tensor, through urllib3.

urllib3 (what requests stands on) does what the ecosystem expects of an HTTP client: connection pools, HTTP and
HTTPS proxies from HTTP(S)_PROXY/ALL_PROXY/NO_PROXY (TLS to an https:// proxy, the CONNECT tunnel, default ports
by scheme, credentials from the proxy URL sent only to it), and TLS verified against the system's certificates or
SSL_CERT_FILE/SSL_CERT_DIR. Each body is received with `readinto` in 4 MB pieces into a reused buffer: measured on
loopback, as fast as `http.client`'s own `readinto` and no more CPU per GB (benchmarks/bench_range_client.py).
Redirects are not followed here: where a file lives is asked of the Hub.

Where a file's bytes live is asked of the Hub once per file, at the validated commit (`get_hf_file_metadata`: the
Hub answers for LFS files with a redirect to a signed CDN URL, which must stay on https), and asked again when that
URL is refused (it expires). The token goes to the Hub's own address only, never to the host it redirects to.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

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
    """The proxy a request to this URL goes through, as huggingface_hub's client picks it: HTTP_PROXY/HTTPS_PROXY
    for the URL's scheme, else ALL_PROXY, unless NO_PROXY names the host. A proxy without a scheme is http://."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
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
        self._managers: dict[str | None, Any] = {}  # urllib3 pool managers, by proxy (None: direct)

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
            self._discard(response)
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
            self._discard(response)
            raise HubError(
                f"{self.repo_id}/{name}: asked for bytes from {begin}, the server sent from {first} (a proxy in the "
                "way?); set NO_PROXY for the Hub, or merge without --stream"
            )
        received = self._receive(response, into)
        if received < len(into):
            raise Transient(f"a body {len(into) - received} bytes short", received=received)

    def _send(self, location: Location, headers: dict[str, str]) -> Any:
        """Send the request and read the answer's head (the body is left to `_receive`). A certificate not trusted
        or a proxy that refuses is a `HubError`; any other failure is `Transient`."""
        import urllib3  # with the Hub client

        try:
            return self._manager(location.url).request(
                "GET",
                location.url,
                headers=headers,
                preload_content=False,
                decode_content=False,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
            )
        except urllib3.exceptions.HTTPError as err:
            cause = _reason(err)
            if isinstance(cause, ssl.SSLCertVerificationError):  # no retry changes a certificate
                raise HubError(
                    f"{urlsplit(location.url).netloc}: its certificate is not trusted ({cause.verify_message}; "
                    "CERTIFICATE_VERIFY_FAILED); name the authority that signed it with SSL_CERT_FILE"
                ) from err
            if isinstance(err, urllib3.exceptions.ProxyError) and " 407" in str(cause):
                raise HubError(
                    f"{urlsplit(proxy_for(location.url) or '').hostname}: the proxy refused the credentials in its "
                    "URL (407); check HTTPS_PROXY/HTTP_PROXY/ALL_PROXY"
                ) from err
            raise Transient(f"{type(cause).__name__}: {cause}") from err

    def _receive(self, response: Any, into: memoryview) -> int:
        """Read the body into `into`, a piece at a time, under the request's deadline; the bytes received, also
        when the connection drops."""
        import urllib3  # with the Hub client

        received = 0
        length = response.length_remaining
        size = len(into) if length is None else min(len(into), length)
        started = time.monotonic()
        deadline = started + (self.timeout or 10.0) + size / MIN_BYTES_PER_SECOND
        connection = response.connection
        sock = getattr(connection, "sock", None)
        watched = WATCHDOG.watch(sock, deadline) if sock is not None else None
        try:
            while received < size:
                count = response.readinto(into[received : min(size, received + PIECE_BYTES)])
                if not count:
                    break
                received += count
        except (OSError, urllib3.exceptions.HTTPError) as err:
            response.close()
            raise Transient(f"{type(err).__name__}: {err}", received=received) from err
        finally:
            if watched is not None:
                WATCHDOG.release(watched)
        if received < size and time.monotonic() >= deadline:
            response.close()
            raise Transient(
                f"{received} of {size} bytes in {time.monotonic() - started:.0f} s, slower than "
                f"{MIN_BYTES_PER_SECOND // 1000} kB/s",
                received=received,
            )
        if received < size or response.length_remaining:  # short, or more than asked: the connection is not reused
            response.close()
        else:
            response.release_conn()
        return received

    @staticmethod
    def _discard(response: Any) -> None:
        """Read a small error body so the connection can be reused; close it otherwise."""
        length = response.length_remaining
        try:
            if length is not None and length <= 65536:
                response.read()
                response.release_conn()
                return
        except Exception:  # a broken error body: the connection is closed below
            pass
        response.close()

    def _manager(self, url: str) -> Any:
        """The urllib3 pool manager for this URL's proxy (made when first needed)."""
        import urllib3  # with the Hub client

        proxy = proxy_for(url)
        with self._lock:
            if proxy not in self._managers:
                pools = {"num_pools": 8, "maxsize": 32, "block": False}
                if proxy is None:
                    self._managers[proxy] = urllib3.PoolManager(**pools)
                elif not proxy.startswith(("http://", "https://")):
                    raise HubError(
                        f"{urlsplit(proxy).scheme}:// proxies are not supported for range reads; name an http:// or "
                        "https:// proxy, or merge without --stream"
                    )
                else:
                    parts = urlsplit(proxy)
                    headers = {}
                    if parts.username:
                        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                        headers = urllib3.util.make_headers(proxy_basic_auth=credentials)
                    bare = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
                    self._managers[proxy] = urllib3.ProxyManager(bare, proxy_headers=headers, **pools)
            return self._managers[proxy]

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            managers, self._managers = list(self._managers.values()), {}
        for manager in managers:
            manager.clear()


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


def _reason(err: BaseException) -> BaseException:
    """The error under urllib3's wrappers (an SSL or socket error, a proxy's refusal): its `reason`, first argument
    or cause, as deep as they go."""
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "reason", None)
        if not isinstance(inner, BaseException):
            inner = err.args[0] if err.args and isinstance(err.args[0], BaseException) else err.__cause__
        if inner is None:
            break
        err = inner
    return err


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
