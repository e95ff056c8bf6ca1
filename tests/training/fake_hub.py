"""A small fake of the Hugging Face Hub endpoints the publisher uses, for loopback tests.

It answers the requests huggingface_hub 2.4 sends for create_repo, list_repo_refs, list_repo_files,
create_commit (preupload, LFS batch + basic PUT upload + verify, the ndjson commit, YAML validation),
create_tag and snapshot_download (repo info at a revision, file resolve), and records what it received so tests can assert the exact files, bytes, commit and
tag. It is not the Hub: it checks only what the client must get right (auth, sha256 of LFS objects,
base64 of regular files). Start it with `serve_fake_hub(token)`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class FakeRepo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)      # main's tree
    commits: list[dict[str, Any]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)           # tag -> commit oid

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"]


@dataclass
class FakeHubState:
    token: str
    base_url: str = ""
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)          # sha256 -> bytes
    requests: list[tuple[str, str]] = field(default_factory=list)


def _signature(state: FakeHubState, oid: str) -> str:
    return hashlib.sha256(f"{state.token}:{oid}".encode()).hexdigest()[:32]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"X-Error-Message": message})


def _commit(repo: FakeRepo, files: dict[str, bytes], summary: str, description: str, operations: list) -> str:
    digest = hashlib.sha1(json.dumps([summary, sorted((p, hashlib.sha256(b).hexdigest()) for p, b in files.items()),
                                      len(repo.commits), time.time_ns()]).encode()).hexdigest()
    repo.files = files
    repo.commits.append({"oid": digest, "summary": summary, "description": description, "operations": operations,
                         "files": dict(files)})
    return digest


def create_app(state: FakeHubState) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def check_auth(request: Request, call_next):
        state.requests.append((request.method, request.url.path))
        if request.url.path.startswith("/lfs-upload/"):
            # like an S3 presigned URL: the signature is in the URL, no Authorization header
            if request.query_params.get("signature") != _signature(state, request.url.path.rsplit("/", 1)[1]):
                return _error(403, "bad signature")
        elif request.headers.get("authorization") != f"Bearer {state.token}":
            return _error(401, "Invalid credentials in Authorization header")
        return await call_next(request)

    def repo_or_404(repo_id: str) -> FakeRepo | JSONResponse:
        repo = state.repos.get(repo_id)
        return repo if repo is not None else _error(404, f"Repository Not Found for url: {repo_id}")

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        body = await request.json()
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = f"{state.base_url}/{repo_id}"
        if repo_id in state.repos:
            return JSONResponse({"error": "You already created this model repo", "url": url}, status_code=409)
        repo = FakeRepo(private=body.get("visibility") == "private")
        state.repos[repo_id] = repo
        _commit(repo, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit", "", [])
        return {"url": url, "name": repo_id}

    @app.get("/api/models/{org}/{name}/refs")
    async def refs(org: str, name: str):
        repo = repo_or_404(f"{org}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        return {
            "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head}],
            "converts": [],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, oid in sorted(repo.tags.items())],
        }

    def at_revision(repo: FakeRepo, revision: str) -> dict[str, Any] | None:
        """The commit a branch ("main"), tag or commit oid names."""
        oid = repo.head if revision == "main" else repo.tags.get(revision, revision)
        return next((c for c in repo.commits if c["oid"] == oid), None)

    @app.get("/api/models/{org}/{name}/tree/{revision}")
    async def tree(org: str, name: str, revision: str):
        repo = repo_or_404(f"{org}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        commit = at_revision(repo, revision)
        if commit is None:
            return _error(404, f"Invalid rev id: {revision}")
        return [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for p, b in sorted(commit["files"].items())]

    # --- downloads (snapshot_download): repo info at a revision, then each file ------------------

    @app.get("/api/models/{org}/{name}/revision/{revision}")
    async def revision_info(org: str, name: str, revision: str):
        repo = repo_or_404(f"{org}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        commit = at_revision(repo, revision)
        if commit is None:
            return _error(404, f"Invalid rev id: {revision}")
        return {"id": f"{org}/{name}", "sha": commit["oid"], "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(commit["files"])]}

    @app.api_route("/{org}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    async def resolve(org: str, name: str, revision: str, path: str, request: Request):
        repo = repo_or_404(f"{org}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        commit = at_revision(repo, revision)
        if commit is None or path not in commit["files"]:
            return _error(404, f"Entry not found: {path}")
        data = commit["files"][path]
        headers = {"X-Repo-Commit": commit["oid"], "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)
        return Response(content=data, headers=headers, media_type="application/octet-stream")

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        content = (await request.json())["content"]
        if not content.startswith("---\n"):
            return {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            yaml.safe_load(content.split("---\n", 2)[1])
        except yaml.YAMLError as exc:
            return JSONResponse({"errors": [{"message": str(exc)}], "warnings": []}, status_code=400)
        return {"errors": [], "warnings": []}

    @app.post("/api/models/{org}/{name}/preupload/{revision}")
    async def preupload(org: str, name: str, revision: str, request: Request):
        repo = repo_or_404(f"{org}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        files = (await request.json())["files"]
        return {"files": [
            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
             "shouldIgnore": False, "oid": None}
            for f in files
        ]}

    @app.post("/{org}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch(org: str, name: str, request: Request):
        body = await request.json()
        objects = []
        for obj in body["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in state.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{state.base_url}/lfs-upload/{obj['oid']}?signature={_signature(state, obj['oid'])}"},
                    "verify": {"href": f"{state.base_url}/lfs-verify"},
                }
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    @app.put("/lfs-upload/{oid}")
    async def lfs_upload(oid: str, request: Request):
        data = await request.body()
        if hashlib.sha256(data).hexdigest() != oid:
            return _error(400, "sha256 of the uploaded bytes does not match the oid")
        state.lfs[oid] = data
        return {}

    @app.post("/lfs-verify")
    async def lfs_verify(request: Request):
        body = await request.json()
        data = state.lfs.get(body["oid"])
        if data is None or len(data) != body["size"]:
            return _error(404, "object not uploaded")
        return {}

    @app.post("/api/models/{org}/{name}/commit/{revision}")
    async def commit(org: str, name: str, revision: str, request: Request):
        repo = repo_or_404(f"{org}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        header = lines[0]["value"]
        files = dict(repo.files)
        operations = []
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                operations.append(("file", value["path"]))
            elif key == "lfsFile":
                if value["oid"] not in state.lfs:
                    return _error(400, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = state.lfs[value["oid"]]
                operations.append(("lfsFile", value["path"]))
            elif key == "deletedFile":
                if value["path"] not in files:
                    return _error(404, "A file with this name doesn't exist")
                del files[value["path"]]
                operations.append(("deletedFile", value["path"]))
            else:
                return _error(400, f"unsupported operation {key}")
        oid = _commit(repo, files, header["summary"], header.get("description", ""), operations)
        return {"commitUrl": f"{state.base_url}/{org}/{name}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    @app.post("/api/models/{org}/{name}/tag/{revision}")
    async def tag(org: str, name: str, revision: str, request: Request):
        repo = repo_or_404(f"{org}/{name}")
        if isinstance(repo, JSONResponse):
            return repo
        body = await request.json()
        if body["tag"] in repo.tags:
            return _error(409, f"tag {body['tag']} already exists")
        known = {c["oid"] for c in repo.commits}
        target = repo.head if revision == "main" else revision
        if target not in known:
            return _error(404, f"revision {revision} not found")
        repo.tags[body["tag"]] = target
        return {}

    return app


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_fake_hub(token: str, port: int) -> Iterator[FakeHubState]:
    """Run the fake Hub on 127.0.0.1:`port` in a thread for the duration of the block."""
    state = FakeHubState(token=token, base_url=f"http://127.0.0.1:{port}")
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake Hub did not start")
        time.sleep(0.02)
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
