"""A local stand-in for the Hugging Face Hub, enough for `huggingface_hub` to create a repo, upload a folder in one
commit and download files: a ThreadingHTTPServer on 127.0.0.1 (port 0) in a daemon thread.

Endpoints: POST /api/repos/create, POST /api/validate-yaml, POST /api/models/{repo}/preupload/{revision} (every file
"regular", with the git oid of the file already there so unchanged files are skipped), POST
/api/models/{repo}/commit/{revision} (NDJSON, base64 content), GET /api/models/{repo}[/revision/{revision}],
GET /api/models/{repo}/tree/{revision}, the same under /api/spaces/ for Spaces (a created repo's `type` and `sdk` are
kept), GET/HEAD /{repo}/resolve/{revision}/{path} (ETag, X-Repo-Commit, Content-Length). Anything else answers 404
and is recorded in `unknown`.
"""

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

_REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_oid(content: bytes) -> str:
    """The git blob sha1, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _Repo:
    def __init__(self, private: bool, kind: str = "model", sdk: str | None = None):
        self.private = private
        self.kind, self.sdk = kind, sdk  # "model" or "space" (with its SDK)
        self.commits = []  # [(oid, message, {path: bytes})], oldest first

    @property
    def head(self):
        return self.commits[-1] if self.commits else (hashlib.sha1(b"empty").hexdigest(), "initial", {})


class HubStandIn:
    """`with HubStandIn() as hub:` serves on `hub.endpoint` until the block ends."""

    def __init__(self, request_timeout: float = 30.0):
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = request_timeout  # a stalled client cannot hold a thread for ever

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                stand_in._handle(self, "GET")

            def do_HEAD(self):
                stand_in._handle(self, "HEAD")

            def do_POST(self):
                stand_in._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    # -- responses -----------------------------------------------------------------------------------------------------

    @staticmethod
    def _send(handler, status: int, body=b"", headers=None, method="GET"):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(body)

    def _not_found(self, handler, method, code="RepoNotFound", message="Repository not found"):
        self._send(handler, 404, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, method)

    def _repo_info(self, repo_id, repo):
        oid, _, files = repo.head
        return {
            "id": repo_id, "modelId": repo_id, "sha": oid, "private": repo.private, "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": [], "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": path, "size": len(content)} for path, content in sorted(files.items())],
        }

    # -- routing -------------------------------------------------------------------------------------------------------

    def _handle(self, handler, method):
        url = urlparse(handler.path)
        path = unquote(url.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, path))
            try:
                self._route(handler, method, path, body)
            except Exception as error:  # a broken request must not kill the server thread silently
                self._send(handler, 500, {"error": repr(error)}, method=method)

    def _route(self, handler, method, path, body):
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            if repo_id in self.repos:
                return self._send(handler, 409, {"error": "You already created this model repo",
                                                 "url": f"{self.endpoint}/{repo_id}"})
            self.repos[repo_id] = _Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")),
                                        kind=payload.get("type") or "model", sdk=payload.get("sdk"))
            return self._send(handler, 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id})
        if method == "POST" and path == "/api/validate-yaml":
            return self._send(handler, 200, {"errors": [], "warnings": []})

        match = re.fullmatch(rf"/api/(?P<kind>models|spaces)/{_REPO}(?:/(?P<action>preupload|commit|revision|tree)/"
                             r"(?P<rev>[^/]+)(?:/(?P<sub>.*))?)?", path)
        if match:
            repo = self.repos.get(match["repo"])
            if repo is None or repo.kind + "s" != match["kind"]:
                return self._not_found(handler, method)
            action = match["action"]
            files = repo.head[2]
            if action is None or action == "revision":
                return self._send(handler, 200, self._repo_info(match["repo"], repo), method=method)
            if action == "tree":
                prefix = (match["sub"] or "").strip("/")
                listed = [{"type": "file", "oid": git_oid(content), "size": len(content), "path": name}
                          for name, content in sorted(files.items()) if not prefix or name.startswith(prefix + "/")]
                return self._send(handler, 200, listed, method=method)
            if action == "preupload" and method == "POST":
                answer = [
                    {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                     "oid": git_oid(files[item["path"]]) if item["path"] in files else None}
                    for item in json.loads(body)["files"]
                ]
                return self._send(handler, 200, {"files": answer, "commitOid": repo.head[0]})
            if action == "commit" and method == "POST":
                return self._commit(handler, match["repo"], repo, body)

        match = re.fullmatch(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
        if match and method in ("GET", "HEAD"):
            repo = self.repos.get(match["repo"])
            if repo is None:
                return self._not_found(handler, method)
            commit = next((c for c in reversed(repo.commits) if match["rev"] in ("main", c[0])), None)
            if commit is None and match["rev"] == "main":  # the Hub creates a repo with a first commit: main exists
                commit = repo.head
            if commit is None:
                return self._not_found(handler, method, "RevisionNotFound", "Invalid rev id")
            content = commit[2].get(match["file"])
            if content is None:
                return self._not_found(handler, method, "EntryNotFound", "Entry not found")
            headers = {"ETag": f'"{git_oid(content)}"', "X-Repo-Commit": commit[0],
                       "Content-Type": "application/octet-stream"}
            return self._send(handler, 200, content, headers, method)

        self.unknown.append((method, path))
        return self._not_found(handler, method, "EntryNotFound", f"the stand-in does not implement {method} {path}")

    def _commit(self, handler, repo_id, repo, body):
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = dict(repo.head[2])
        for line in lines:
            if line["key"] == "file":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] == "deletedFile":
                files.pop(line["value"]["path"], None)
            elif line["key"] != "header":
                return self._send(handler, 400, {"error": f"the stand-in does not accept {line['key']!r} operations"})
        oid = hashlib.sha1(f"{repo_id}:{len(repo.commits)}:{header.get('summary')}".encode()).hexdigest()
        repo.commits.append((oid, header.get("summary", ""), files))
        return self._send(handler, 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid,
                                         "pullRequestUrl": None, "success": True})
