"""A small, real Hugging Face Hub for the tests: the HTTP API that huggingface_hub uses, on 127.0.0.1.

Repos live in memory as commits of {path: bytes}; LFS objects are stored by sha256 and skipped when already uploaded
(so an interrupted upload resumes). Faults are switched on per repo: `gated`, `private`, `drop_downloads` (weight
downloads cut halfway), `uploads_before_drop` (LFS uploads cut after that many), `commit_failures` (that many
commits answered 503), `commits_then_504` (made, then answered 504), `raced_commits` (another writer commits to the
branch first), and for ranged reads of tensor data (what `--stream` makes) `range_faults` (that share of them, drawn
with a seeded generator, fails by each of `fault_kinds` in turn: a connection reset mid-body, 503 with Retry-After:
0, 429 with Retry-After: 1, a body half as long as asked, or with "stall" half a body and then silence, "shifted"
the range from one byte later, "onebyte" one byte and a hang-up, "drip" a byte every 0.1 s, "retry-nan"/"retry-huge"
503 with Retry-After nan/99999, "flip" one bit of the body changed; `most_faults` of them at most) and
`failing_file` (every such read of that file answers 503); `unpinned` (file answers name no commit). Server-wide:
`signed_urls` (LFS files redirect to a CDN URL on another origin that expires), `latency` and `bandwidth` (a network
link); a request in absolute form (sent to a proxy: this server plays one too) is recorded in `proxied`. Tokens:
"write-token" may write, "read-token" may only read. Stdlib only; the protocol is described in hub-api-notes.md of
the project's shared notes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

WRITE_TOKEN, READ_TOKEN, USER = "write-token", "read-token", "test-user"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    gated: bool = False
    drop_downloads: bool = False
    uploads_before_drop: int | None = None  # after this many LFS uploads, cut every further one
    commit_failures: int = 0  # the next commits answered 503 (Retry-After: 0), one fewer each time
    commit_drops: int = 0  # the next commits: the connection dropped once the request arrived, nothing committed
    commits_then_504: int = 0  # the next commits are made, then answered 504 (a gateway that gave up waiting)
    raced_commits: int = 0  # the next commits find that another writer committed to the branch just before
    range_faults: float = 0.0  # the share of ranged tensor-data reads that fail
    most_faults: int | None = None  # then no more than this many of them
    fault_kinds: tuple[str, ...] = ("reset", "503", "429", "short")
    failing_file: str | None = None  # every ranged tensor-data read of this file answers 503
    unpinned: bool = False  # file answers carry no X-Repo-Commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit
    prs: int = 0
    etags: dict[int, tuple[bytes, str]] = field(default_factory=dict)  # id(file bytes) -> (the bytes, ETag)

    def commit(self, files: dict[str, bytes], parent: str | None, message: str) -> str:
        sha = hashlib.sha1(json.dumps([parent, message, sorted(files)]).encode() + str(len(self.commits)).encode())
        self.commits[sha.hexdigest()] = files
        for path, data in files.items():  # hashed once, here: not by the first read of a file
            if id(data) not in self.etags:
                lfs = path.endswith((".safetensors", ".bin"))
                self.etags[id(data)] = (data, hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data))
        return sha.hexdigest()

    def etag(self, data: bytes) -> str:
        return self.etags[id(data)][1]

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class Hub:
    """The server's state, shared by all request threads."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.random = random.Random(0)
        self.latency = 0.0  # seconds before each response, as a round trip over a real network would take
        self.bandwidth: float | None = None  # bytes per second per connection, for response bodies
        # False: an LFS upload is received and its sha256 checked, then dropped instead of held in this process's
        # memory (a benchmark's Hub: a real one stores uploads elsewhere, not on the machine that merges)
        self.keep_uploads = True
        self.signed_urls: float | None = None  # LFS files redirect to a CDN URL valid this many seconds
        self.cdn_scheme = "http"  # of that URL (https: the endpoint's certificate, named for 127.0.0.1 only)
        self.stall = 3.0  # seconds a "stall" fault holds the connection silent before dropping it
        self.proxied: list[tuple[str, str | None, str | None]] = []  # (path, Range, Proxy-Authorization)
        self.cdn_reads: list[tuple[str | None, str | None, bool]] = []  # (Range, Authorization, expired)
        self.injected: list[tuple[str, str, int, int]] = []  # (fault kind, repo/file, bytes [start, stop) asked for)

    def fault(self, repo_id: str, filename: str, data: bytes, start: int, stop: int) -> str | None:
        """The fault to inject into a ranged read from `start`, if any: tensor data only (headers read cleanly).
        Called with the hub's lock held, like every request."""
        if not filename.endswith(".safetensors") or start < 8 + int.from_bytes(data[:8], "little"):
            return None
        repo = self.repos[repo_id]
        if repo.failing_file == filename:
            kind = "503"
        elif repo.range_faults and repo.most_faults != 0 and self.random.random() < repo.range_faults:
            kind = repo.fault_kinds[len(self.injected) % len(repo.fault_kinds)]  # each kind in turn
            repo.most_faults = None if repo.most_faults is None else repo.most_faults - 1
        else:
            return None
        self.injected.append((kind, f"{repo_id}/{filename}", start, stop))
        return kind

    def create(self, repo_id: str, files: dict[str, bytes] | None = None, **flags: object) -> str:
        """Make a repo (for test setup); returns the commit sha of its main branch."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo(**flags))
            sha = repo.commit({".gitattributes": GITATTRIBUTES, **(files or {})}, None, "initial commit")
            repo.refs["main"] = sha
            return sha


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: Hub
    endpoint: str

    def log_message(self, *args: object) -> None:  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _body(self) -> bytes | bytearray:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        size = int(self.headers.get("Content-Length") or 0)
        if self.command != "PUT":
            return self.rfile.read(size)
        # an upload is hashed as it arrives (as a real object store does), not after: reads go on meanwhile
        keep = self.hub.keep_uploads
        body, digest, received = bytearray(size if keep else 8 * 2**20), hashlib.sha256(), 0
        view = memoryview(body)
        while received < size:
            piece = view[received : received + 8 * 2**20] if keep else view[: size - received]
            count = self.rfile.readinto(piece)
            if not count:
                break
            digest.update(piece[:count])
            received += count
        self._sha256 = digest.hexdigest()
        if not keep:
            return b""
        return body if received == size else body[:received]

    def _send(
        self,
        status: int,
        body: bytes | memoryview = b"",
        headers: dict[str, str] | None = None,
        head: bool = False,
        fault: str | None = None,
    ) -> None:
        """Decide the response (under the hub's lock); `_flush` sends it after the lock is released, so that
        connections overlap their latency and bandwidth as on a real network. `fault`: "reset" sends half the body
        and drops the connection, "stall" sends half and holds the connection silent (`hub.stall` s) first."""
        self._out = (status, body, headers or {}, head, fault)

    def _flush(self) -> None:
        if self._out is None:
            return
        status, body, headers, head, fault = self._out
        self._out = None
        if self.hub.latency:
            time.sleep(self.hub.latency)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if fault == "onebyte":  # one byte of the body, then hang up: progress that never finishes
            self.wfile.write(body[:1])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault == "drip":  # a byte every 0.1 s, for up to `hub.stall` seconds: alive, but useless
            started = time.monotonic()
            for offset in range(len(body)):
                if time.monotonic() - started > self.hub.stall:
                    break
                try:
                    self.wfile.write(body[offset : offset + 1])
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.1)
            self.close_connection = True
            return
        if fault in ("reset", "stall"):  # send half, then drop the connection
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if fault == "stall":
                time.sleep(self.hub.stall)
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if not self.hub.bandwidth:
            self.wfile.write(body)
            return
        started = time.monotonic()
        for offset in range(0, len(body), 65536):  # paced: at most `bandwidth` bytes per second
            self.wfile.write(body[offset : offset + 65536])
            ahead = (offset + 65536) / self.hub.bandwidth - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ").strip() or None

    def _repo(self, repo_id: str, write: bool = False) -> Repo | None:
        """The repo if this request may see (and, with write, change) it; else the error is sent."""
        repo = self.hub.repos.get(repo_id)
        token = self._token()
        if repo is None or (repo.private and token not in (WRITE_TOKEN, READ_TOKEN)):
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return None
        if write and token != WRITE_TOKEN:
            self._error(403, "Forbidden", "You don't have the rights to write to this repo (read-only token).")
            return None
        return repo

    # -- routes ------------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        self._sha256: str | None = None  # of an uploaded body, computed by `_body` as it arrives
        body = self._body() if method in ("POST", "PUT") else b""
        self.hub.requests.append((method, path, self.headers.get("Range")))
        if self.path.startswith("http://"):  # sent to a proxy: this server plays one too
            self.hub.proxied.append((path, self.headers.get("Range"), self.headers.get("Proxy-Authorization")))
        self._out: tuple | None = None
        with self.hub.lock:
            self._dispatch(method, path, query, body)
        self._flush()

    def _dispatch(self, method: str, path: str, query: dict, body: bytes) -> None:
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self._info(m[1], m[2] or "main", "blobs" in query)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/refs", path):
            return self._refs(m[1], "include_prs" in query)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
            return self._tree(m[1], m[2], m[3] or "")
        if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            return self._cdn(m[1], float(query.get("expires", ["0"])[0]), method == "HEAD")
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(m[1], m[2], unquote(m[3]), method == "HEAD")
        if path == "/api/whoami-v2":
            if self._token() not in (WRITE_TOKEN, READ_TOKEN):
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            role = "write" if self._token() == WRITE_TOKEN else "read"
            return self._json(200, {"name": USER, "type": "user", "orgs": [], "auth": {"accessToken": {"role": role}}})
        if path == "/api/repos/create":
            return self._create(json.loads(body))
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path):
            return self._preupload(m[1], m[2], json.loads(body))
        if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            return self._batch(m[1], json.loads(body))
        if m := re.fullmatch(r"/lfs/([^/]+/[^/]+)/([0-9a-f]{64})", path):
            return self._lfs_put(m[1], m[2], body) if method == "PUT" else self._json(200, {})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
            return self._commit(m[1], m[2], body, "create_pr" in query)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/([^/]+)", path):
            return self._branch(m[1], unquote(m[2]), json.loads(body or b"{}"))
        self._error(404, "EntryNotFound", f"no route for {method} {path}")

    def _revision(self, repo_id: str, revision: str) -> tuple[Repo, str] | None:
        """The repo and the commit a revision names, or None once the 404 is sent."""
        repo = self._repo(repo_id)
        if repo is None:
            return None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}")
            return None
        return repo, sha

    def _blob(self, repo: Repo, path: str, data: bytes) -> dict:
        """What the Hub lists for a file: its git blob id and, for an LFS file, the pointer's object."""
        hashed = repo.etag(data)  # at commit: the git blob id, or an LFS file's sha256
        if not path.endswith((".safetensors", ".bin")):
            return {"blobId": hashed}
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashed}\nsize {len(data)}\n"
        lfs = {"sha256": hashed, "oid": hashed, "size": len(data), "pointerSize": len(pointer)}
        return {"blobId": git_blob_sha1(pointer.encode()), "lfs": lfs}

    def _info(self, repo_id: str, revision: str, blobs: bool = False) -> None:
        if (found := self._revision(repo_id, revision)) is None:
            return
        repo, sha = found
        files = repo.commits[sha]
        siblings = [{"rfilename": p, "size": len(d)} for p, d in sorted(files.items())]
        if blobs:  # files_metadata=True: each file's git blob id, and an LFS file's sha256
            for sibling in siblings:
                sibling.update(self._blob(repo, sibling["rfilename"], files[sibling["rfilename"]]))
        self._json(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "siblings": siblings,
            },
        )

    def _refs(self, repo_id: str, pull_requests: bool) -> None:
        if (repo := self._repo(repo_id)) is None:
            return
        branches = [r for r in repo.refs if not r.startswith("refs/")]
        prs = [r for r in repo.refs if r.startswith("refs/pr/")]
        answer = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": repo.refs[b]} for b in branches],
            "converts": [],
            "tags": [],
        }
        if pull_requests:
            answer["pullRequests"] = [{"name": r, "ref": r, "targetCommit": repo.refs[r]} for r in prs]
        self._json(200, answer)

    def _tree(self, repo_id: str, revision: str, prefix: str) -> None:
        if (found := self._revision(repo_id, revision)) is None:
            return
        repo, sha = found
        entries = []
        for path, data in sorted(repo.commits[sha].items()):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            blob = self._blob(repo, path, data)
            entry = {"type": "file", "path": path, "size": len(data), "oid": blob["blobId"]}
            if "lfs" in blob:  # git holds the LFS pointer
                entry["lfs"] = {k: blob["lfs"][k] for k in ("oid", "size", "pointerSize")}
            entries.append(entry)
        self._json(200, entries)

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if repo.gated:
            return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access.")
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}")
        data = repo.commits[sha].get(filename)
        if data is None:
            self.send_response(404)
            for k, v in {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha, "Content-Length": "0"}.items():
                self.send_header(k, v)
            self.end_headers()
            return
        headers = {"X-Repo-Commit": sha, "ETag": f'"{repo.etag(data)}"', "Accept-Ranges": "bytes"}
        if repo.unpinned:  # a mirror or proxy that does not say which commit it serves
            del headers["X-Repo-Commit"]
        if self.hub.signed_urls is not None and filename.endswith((".safetensors", ".bin")):
            expires = time.time() + self.hub.signed_urls
            port = self.endpoint.rsplit(":", 1)[1]  # another origin: "localhost", not the endpoint's 127.0.0.1
            location = f"{self.hub.cdn_scheme}://localhost:{port}/cdn/{repo.etag(data)}?expires={expires}"
            return self._send(
                302,
                headers={
                    **headers,
                    "Location": location,
                    "X-Linked-Etag": headers["ETag"],
                    "X-Linked-Size": str(len(data)),
                },
            )
        status, body, fault = 200, data, None
        if (wanted := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())):
            start = int(m[1])
            stop = min(int(m[2]) + 1 if m[2] else len(data), len(data))
            fault = None if head else self.hub.fault(repo_id, filename, data, start, stop)
            if fault in ("503", "429"):
                return self._send(int(fault), b"come back later", {"Retry-After": "0" if fault == "503" else "1"})
            if fault in ("retry-nan", "retry-huge"):  # a Retry-After no client should trust as it stands
                return self._send(503, b"come back later", {"Retry-After": "nan" if fault == "retry-nan" else "99999"})
            if fault == "short":  # a well-formed answer, but shorter than asked
                stop = start + max(1, (stop - start) // 2)
            if fault == "shifted":  # another range than the one asked for, as a broken proxy might send
                start += 1
            status, body = 206, memoryview(data)[start:stop]  # no copy: served as fast as a real server would
            if fault == "flip":  # one bit changed on the way (a plain-HTTP hop), the answer well-formed otherwise
                body = bytes([body[0] ^ 0x40]) + bytes(body[1:])
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        cut = repo.drop_downloads and not head and filename.endswith(".safetensors") and status == 200
        self._send(status, body, headers, head=head, fault="reset" if cut else fault)

    def _cdn(self, oid: str, expires: float, head: bool) -> None:
        """A signed URL of the CDN the Hub redirects LFS files to: refused (403) once it has expired."""
        expired = time.time() > expires
        self.hub.cdn_reads.append((self.headers.get("Range"), self.headers.get("Authorization"), expired))
        if expired:
            return self._error(403, "Forbidden", "Request has expired")
        data = next((d for r in self.hub.repos.values() for d, etag in r.etags.values() if etag == oid), None)
        if data is None:
            return self._error(404, "NotFound", "no such object")
        status, body, headers = 200, memoryview(data), {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        if (wanted := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())):
            start, stop = int(m[1]), min(int(m[2]) + 1 if m[2] else len(data), len(data))
            status, body = 206, body[start:stop]
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
        self._send(status, body, headers, head=head)

    def _create(self, request: dict) -> None:
        if self._token() != WRITE_TOKEN:
            return self._error(401 if self._token() is None else 403, "Unauthorized", "Invalid credentials")
        repo_id = f"{request.get('organization') or USER}/{request['name']}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.hub.repos:
            return self._json(409, {"error": "You already created this model repo", "url": url})
        private = bool(request.get("private")) or request.get("visibility") == "private"
        repo = self.hub.repos[repo_id] = Repo(private=private)
        repo.refs["main"] = repo.commit({".gitattributes": GITATTRIBUTES}, None, "initial commit")
        self._json(200, {"url": url, "name": repo_id})

    def _preupload(self, repo_id: str, revision: str, request: dict) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        current = repo.commits.get(repo.resolve(revision) or "", {})
        files = []
        for f in request["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith((".safetensors", ".bin")) or f["size"] >= 10 * 2**20 or b"\0" in sample
            existing = current.get(f["path"])
            oid = (
                None if existing is None else hashlib.sha256(existing).hexdigest() if lfs else git_blob_sha1(existing)
            )
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json(200, {"files": files})

    def _batch(self, repo_id: str, request: dict) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        objects = []
        for obj in request["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.hub.lfs:  # already uploaded objects get no actions: the client skips them
                href = f"{self.endpoint}/lfs/{repo_id}/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href}, "verify": {"href": href}}
            objects.append(entry)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_put(self, repo_id: str, oid: str, body: bytes) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is not None and repo.uploads_before_drop is not None:
            if repo.uploads_before_drop <= 0:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            repo.uploads_before_drop -= 1
        if self._sha256 != oid:
            return self._error(400, "BadRequest", "sha256 mismatch")
        self.hub.lfs[oid] = body
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def _commit(self, repo_id: str, revision: str, body: bytes, create_pr: bool) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        if repo.commit_failures:
            repo.commit_failures -= 1
            return self._send(503, b"come back later", {"Retry-After": "0"})
        if repo.commit_drops:  # the answer lost: the client cannot tell whether the commit was made
            repo.commit_drops -= 1
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        parent = repo.resolve(revision)
        if parent is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}")
        if repo.raced_commits and not create_pr:  # another writer got there first
            repo.raced_commits -= 1
            files = {**repo.commits[parent], "NOTES.md": b"someone else's commit"}
            parent = repo.refs[unquote(revision)] = repo.commit(files, parent, "a concurrent commit")
        files = dict(repo.commits[parent])
        summary = ""
        for line in body.decode().split("\n"):
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                summary = value.get("summary", "")
                if value.get("parentCommit") not in (None, parent):  # as the Hub: the branch moved since
                    return self._error(412, "PreconditionFailed", "A commit has happened since. Please refresh.")
            elif item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.hub.lfs:
                    return self._error(422, "BadRequest", f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.hub.lfs[value["oid"]]
                repo.etags.setdefault(id(files[value["path"]]), (files[value["path"]], value["oid"]))  # its sha256
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
        sha = repo.commit(files, parent, summary)
        result = {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha, "success": True}
        if create_pr:
            repo.prs += 1
            repo.refs[f"refs/pr/{repo.prs}"] = sha
            result["pullRequestUrl"] = f"{self.endpoint}/{repo_id}/discussions/{repo.prs}"
        else:
            repo.refs[unquote(revision)] = sha
        if repo.commits_then_504:  # made, but the answer never reaches the client
            repo.commits_then_504 -= 1
            return self._send(504, b"Gateway Time-out")
        self._json(200, result)

    def _branch(self, repo_id: str, branch: str, request: dict) -> None:
        repo = self._repo(repo_id, write=True)
        if repo is None:
            return
        if branch in repo.refs:
            return self._error(409, "Conflict", f"Reference already exists: {branch}")
        start = repo.resolve(request.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "RevisionNotFound", "Invalid starting point")
        repo.refs[branch] = start
        self._json(200, {})


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Connections cut on purpose (or by the client) are part of the tests, not errors to print."""


def serve(tls: ssl.SSLContext | None = None) -> tuple[Hub, ThreadingHTTPServer]:
    """Start a server on a free port of 127.0.0.1 in a daemon thread (HTTPS with `tls`, a server context)."""
    hub = Hub()
    handler = type("Handler", (Handler,), {"hub": hub})  # each server its own hub
    server = QuietServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    handler.endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, name="hub-server", daemon=True).start()
    return hub, server
