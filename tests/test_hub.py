"""Hub download against a real HTTP server on 127.0.0.1 that mimics the Hugging Face hub.

The fake hub serves `/api/models/{repo}/revision/{rev}?blobs=true` (file listing with sizes and hashes)
and `/{repo}/resolve/{rev}/{file}`; LFS files (*.safetensors) are redirected to a "CDN" on a different
host name (localhost), as the real hub does. It checks the bearer token, honours Range, and can be told
to drop a connection half-way through a file, fail with 503, ignore Range, or lie about a file's hash.
"""

import hashlib
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

import data
from tools import hub as hub_client

TOKEN = "hf_good_token"


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    def __init__(self):
        self.repos = {}             # repo_id -> {filename: bytes}
        self.gated = set()          # repo ids whose files answer 403
        self.cut_once = set()       # file names: the next transfer sends half the body, then hangs up
        self.cut_always = set()     # file names: every transfer does that
        self.fail_once = set()      # file names: the next request gets a 503
        self.api_down = False       # the listing endpoint answers 500
        self.ignore_range = False   # answer 200 with the whole file even when asked for a range
        self.api_lies = {}          # (repo_id, filename) -> fields that override the listing's truth
        self.log = []               # (path, headers) of every request, in order
        self.lock = threading.Lock()

    # what a test asks about the traffic
    def gets(self, filename):
        return [h for p, h in self.log if p.endswith("/" + filename) and "/api/" not in p]


def handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def reply(self, status, body=b"", headers=None):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlsplit(self.path)
            path = unquote(url.path)
            with hub.lock:
                hub.log.append((path, dict(self.headers)))
            parts = path.strip("/").split("/")
            if parts[0] == "cdn":  # the redirect target: no auth on purpose, like a signed CDN URL
                return self.serve_file("/".join(parts[1:3]), "/".join(parts[3:]))
            auth = self.headers.get("Authorization")
            if auth is not None and auth != f"Bearer {TOKEN}":
                return self.reply(401, b"bad token", {"X-Error-Message": "Invalid credentials in Authorization header"})
            if parts[:2] == ["api", "models"]:
                return self.listing("/".join(parts[2:4]))
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
                if repo_id not in hub.repos:
                    return self.reply(404, b"", {"X-Error-Code": "RepoNotFound"})
                if repo_id in hub.gated:
                    return self.reply(403, b"gated", {"X-Error-Code": "GatedRepo"})
                if filename not in hub.repos[repo_id]:
                    return self.reply(404, b"", {"X-Error-Code": "EntryNotFound"})
                if filename in hub.fail_once:
                    hub.fail_once.discard(filename)
                    return self.reply(503, b"try later")
                if filename.endswith(".safetensors"):  # LFS: off to the CDN on another host name
                    port = self.server.server_address[1]
                    return self.reply(302, b"", {"Location": f"http://localhost:{port}/cdn/{repo_id}/{filename}"})
                return self.serve_file(repo_id, filename)
            self.reply(400, b"unknown route")

        def listing(self, repo_id):
            if hub.api_down:
                return self.reply(500, b"internal error")
            if repo_id not in hub.repos:
                return self.reply(404, b"", {"X-Error-Code": "RepoNotFound"})
            siblings = []
            for name, content in hub.repos[repo_id].items():
                s = {"rfilename": name, "size": len(content), "blobId": git_blob_sha1(content)}
                if name.endswith(".safetensors"):
                    s["blobId"] = "0" * 40  # the pointer file's id, useless for checking content
                    s["lfs"] = {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content),
                                "pointerSize": 134}
                for k, v in hub.api_lies.get((repo_id, name), {}).items():
                    if k in ("sha256", "size") and "lfs" in s:
                        s["lfs"][k] = v
                    if k != "sha256":
                        s[k] = v
                siblings.append(s)
            self.reply(200, json.dumps({"id": repo_id, "sha": "abc", "siblings": siblings}).encode(),
                       {"Content-Type": "application/json"})

        def serve_file(self, repo_id, filename):
            content = hub.repos[repo_id][filename]
            start, status, headers = 0, 200, {}
            rng = self.headers.get("Range")
            if rng and not hub.ignore_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(content):
                    return self.reply(416, b"", {"Content-Range": f"bytes */{len(content)}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
            body = content[start:]
            if filename in hub.cut_once | hub.cut_always:  # promise the whole body, deliver half, hang up
                hub.cut_once.discard(filename)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.reply(status, body, headers)

    return Handler


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(hub_client, "HUB_CHUNK", 8192)  # several writes per file, so a cut leaves a prefix
    fake = FakeHub()
    rng = random.Random(0)
    shard1, shard2 = rng.randbytes(300_000), rng.randbytes(200_000)
    index = {"metadata": {"total_size": len(shard1) + len(shard2)},
             "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                            "b.weight": "model-00002-of-00002.safetensors",
                            "c.weight": "model-00002-of-00002.safetensors"}}
    fake.repos["org/sharded"] = {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors.index.json": json.dumps(index).encode(),
        "model-00001-of-00002.safetensors": shard1,
        "model-00002-of-00002.safetensors": shard2,
        "tokenizer.json": b'{"model": {"type": "BPE"}}',
        "tokenizer_config.json": b"{}",
        "original/tokenizer.model": b"IQ== 0\n",
        "pytorch_model.bin": b"not wanted",
        "README.md": b"# not wanted",
    }
    fake.repos["org/single"] = {"config.json": b"{}", "model.safetensors": rng.randbytes(50_000)}
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(fake))
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    fake.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def download(hub, repo_id, out, **kw):
    kw.setdefault("token", TOKEN)
    return hub_client.download_repo(repo_id, out, endpoint=hub.endpoint, backoff=0.001, **kw)


WANTED = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
          "model-00002-of-00002.safetensors", "tokenizer.json", "tokenizer_config.json",
          "original/tokenizer.model"]


def test_full_download_of_sharded_repo(hub, tmp_path):
    out = download(hub, "org/sharded", tmp_path / "m")
    for name in WANTED:
        assert (out / name).read_bytes() == hub.repos["org/sharded"][name], name
    assert not (out / "pytorch_model.bin").exists() and not (out / "README.md").exists()
    assert not list(out.rglob("*.incomplete"))
    # the token goes to the hub, never to the CDN on another host
    for path, headers in hub.log:
        if path.startswith("/cdn/"):
            assert "Authorization" not in headers, path
        else:
            assert headers.get("Authorization") == f"Bearer {TOKEN}", path
    assert hub.gets("model-00001-of-00002.safetensors"), "LFS files are fetched via the redirect"


def test_single_file_checkpoint(hub, tmp_path):
    out = download(hub, "org/single", tmp_path / "s")
    assert (out / "model.safetensors").read_bytes() == hub.repos["org/single"]["model.safetensors"]


def test_resume_after_connection_cut(hub, tmp_path):
    name = "model-00001-of-00002.safetensors"
    hub.cut_once.add(name)
    out = download(hub, "org/sharded", tmp_path / "m")
    assert (out / name).read_bytes() == hub.repos["org/sharded"][name]
    cdn = [h for p, h in hub.log if p == f"/cdn/org/sharded/{name}"]
    assert len(cdn) == 2 and "Range" not in cdn[0]
    resumed_at = int(cdn[1]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 150_000  # continued from what the first transfer left, not from zero


def test_server_ignoring_range_restarts_from_zero(hub, tmp_path):
    name = "model-00002-of-00002.safetensors"
    out = tmp_path / "m"
    out.mkdir()
    (out / (name + ".incomplete")).write_bytes(b"\xff" * 1000)  # a stale prefix the server won't extend
    hub.ignore_range = True
    download(hub, "org/sharded", out)
    assert (out / name).read_bytes() == hub.repos["org/sharded"][name]
    assert hub.gets(name)[-1].get("Range") == "bytes=1000-"


def test_server_that_ignores_range_and_always_cuts_is_given_up_on(hub, tmp_path):
    name = "model-00002-of-00002.safetensors"
    hub.ignore_range = True
    hub.cut_always.add(name)
    with pytest.raises(hub_client.HubError, match=f"giving up.*{name}"):
        download(hub, "org/sharded", tmp_path / "m", retries=2)
    assert not (tmp_path / "m" / name).exists()
    cdn = [p for p, _ in hub.log if p.startswith("/cdn/") and p.endswith(name)]
    assert len(cdn) == 4  # progress to the cut point, then 3 tries without progress (retries=2 + 1)


def test_finished_partial_without_api_is_completed_by_416(hub, tmp_path):
    hub.api_down = True  # no sizes known: the server's 416 says the .incomplete file is already whole
    out = tmp_path / "s"
    out.mkdir()
    content = hub.repos["org/single"]["model.safetensors"]
    (out / "model.safetensors.incomplete").write_bytes(content)
    download(hub, "org/single", out)
    assert (out / "model.safetensors").read_bytes() == content
    assert hub.gets("model.safetensors")[-1]["Range"] == f"bytes={len(content)}-"


def test_bad_token_says_set_hf_token(hub, tmp_path):
    with pytest.raises(hub_client.HubError, match="HF_TOKEN") as e:
        download(hub, "org/sharded", tmp_path / "m", token="hf_wrong")
    assert e.value.status == 401


def test_token_defaults_to_env(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(hub_client.HubError, match="401"):
        hub_client.download_repo("org/sharded", tmp_path / "m", endpoint=hub.endpoint, backoff=0.001)


def test_gated_repo_says_accept_license(hub, tmp_path):
    hub.gated.add("org/sharded")
    with pytest.raises(hub_client.HubError, match=r"403.*org/sharded.*license") as e:
        download(hub, "org/sharded", tmp_path / "m")
    assert e.value.status == 403
    assert not [p for p in (tmp_path / "m").rglob("*") if p.is_file()]


def test_missing_repo_is_404(hub, tmp_path):
    with pytest.raises(hub_client.HubError, match=r"404.*org/nope") as e:
        download(hub, "org/nope", tmp_path / "m")
    assert e.value.status == 404


@pytest.mark.parametrize("lie", [{"sha256": "0" * 64}, {"size": 200_001}])
def test_corrupt_shard_is_deleted_and_named(hub, tmp_path, lie):
    name = "model-00002-of-00002.safetensors"
    hub.api_lies[("org/sharded", name)] = lie
    with pytest.raises(hub_client.HubError, match=name):
        download(hub, "org/sharded", tmp_path / "m")
    assert not (tmp_path / "m" / name).exists()
    assert not (tmp_path / "m" / (name + ".incomplete")).exists()


def test_corrupt_small_file_caught_by_git_hash(hub, tmp_path):
    hub.api_lies[("org/sharded", "config.json")] = {"blobId": "1" * 40}
    with pytest.raises(hub_client.HubError, match=r"config\.json.*git sha1"):
        download(hub, "org/sharded", tmp_path / "m")
    assert not (tmp_path / "m" / "config.json").exists()


def test_rerun_skips_complete_files(hub, tmp_path):
    out = download(hub, "org/sharded", tmp_path / "m")
    (out / "tokenizer.json").unlink()
    n_before = len(hub.log)
    download(hub, "org/sharded", out)
    new = [p for p, _ in hub.log[n_before:]]
    assert all(p.startswith("/api/") or p.endswith("/tokenizer.json") for p in new), new
    assert sum(p.endswith("/tokenizer.json") for p in new) == 1
    assert (out / "tokenizer.json").read_bytes() == hub.repos["org/sharded"]["tokenizer.json"]


def test_retries_5xx_and_falls_back_without_api(hub, tmp_path, capsys):
    hub.api_down = True
    hub.fail_once.add("config.json")
    out = download(hub, "org/sharded", tmp_path / "m")
    for name in WANTED:
        assert (out / name).read_bytes() == hub.repos["org/sharded"][name], name
    assert len(hub.gets("config.json")) == 2  # one 503, one success
    assert "hub API unavailable" in capsys.readouterr().err
    out2 = download(hub, "org/single", tmp_path / "s")  # no index there: its 404 is fine
    assert (out2 / "model.safetensors").read_bytes() == hub.repos["org/single"]["model.safetensors"]


def test_gives_up_after_bounded_retries(hub, tmp_path):
    hub.api_down = True
    hub.fail_once.add("config.json")
    with pytest.raises(hub_client.HubError, match="giving up"):
        download(hub, "org/single", tmp_path / "s", retries=0)


def test_index_naming_a_path_outside_is_refused(hub, tmp_path):
    hub.repos["org/sharded"]["model.safetensors.index.json"] = json.dumps(
        {"weight_map": {"a": "../evil.safetensors"}}).encode()
    with pytest.raises(hub_client.HubError, match="evil"):
        download(hub, "org/sharded", tmp_path / "m")
    assert not (tmp_path / "evil.safetensors").exists()


def test_cli_weights_uses_env(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    data.main(["weights", "--repo", "org/single", "--out", str(tmp_path)])
    assert (tmp_path / "org" / "single" / "model.safetensors").is_file()  # where desta.resolve_weights looks
    assert set(hub_client.WEIGHT_PRESETS["desta25"]) == {"DeSTA-ntu/Llama-3.1-8B-Instruct", "openai/whisper-large-v3",
                                                  "DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B"}


def test_server_that_never_answers_is_given_up_on_in_bounded_time(tmp_path, monkeypatch, capsys):
    """A server that accepts connections and never replies used to cost read timeout x 6 attempts x
    every file (~13 minutes), after a misleading 'hub API unavailable' note: the wait is bounded for the
    whole repo (HUB_STALL_S), and the error says the server does not answer."""
    import socket
    import time
    monkeypatch.setattr(hub_client, "HUB_TIMEOUT_S", (1, 0.3))
    monkeypatch.setattr(hub_client, "HUB_STALL_S", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(32)  # the kernel completes the handshakes; nobody ever reads or answers
    try:
        t0 = time.monotonic()
        with pytest.raises(hub_client.HubError, match=r"no answer from http://127\.0\.0\.1:\d+ for \d+ s"):
            hub_client.download_repo("org/single", tmp_path / "s", endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}",
                               backoff=0.001)
        elapsed = time.monotonic() - t0
    finally:
        silent.close()
    assert elapsed < 2.0, elapsed  # before: 6 attempts for the listing, then 6 for config.json
    assert "hub API unavailable" not in capsys.readouterr().err


def test_no_network_says_so_at_once(tmp_path, monkeypatch, capsys):
    """Name resolution failing (no network) used to take 64 s of retries and first print 'hub API
    unavailable ... downloading without size/sha256 checks'."""
    import socket
    import time
    real = socket.getaddrinfo

    def no_dns(host, *a, **kw):
        if host == "hub.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    t0 = time.monotonic()
    with pytest.raises(hub_client.HubError, match="no network: cannot resolve hub.invalid"):
        hub_client.download_repo("org/single", tmp_path / "s", endpoint="http://hub.invalid", backoff=0.5)
    assert time.monotonic() - t0 < 0.5  # no retry waits
    assert "hub API unavailable" not in capsys.readouterr().err
    with pytest.raises(hub_client.DownloadError, match="no network: cannot resolve hub.invalid"):
        hub_client.download_file("http://hub.invalid/corpus.zip", tmp_path / "corpus.zip", backoff=0.5)
