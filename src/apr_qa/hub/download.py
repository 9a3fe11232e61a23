"""Download one model from a HuggingFace hub and write its manifest (gates D1-D5 and G6: docs/gates.md).

The revision is resolved to a commit and recorded. Only an allow-list of safe files is fetched,
and every file is verified: LFS files against the hub's sha256, small files against their git blob
sha1. Online, the expectations come from the hub's file listing (`model_info(files_metadata=True)`);
with HF_HUB_OFFLINE=1 they come from the cache itself, whose blobs are named by exactly those ids.
A model may also pin the sha256 of its files (`sha256: {name: hex}` in the config, `--sha256
NAME=HEX`): then every fetched file must be pinned and match the pin, online and offline, so the
offline check compares with a recorded value rather than the blob's own name.
Repository file names are checked before anything is fetched: a name with `..`, an absolute path,
a backslash or an empty part is refused, and a cached file must resolve to a blob inside the
repo's own cache folder (a link pointing elsewhere is refused).

Gates: D1 repo missing and D2 no supported weights skip the model (manifest status "skipped", a
warning); G6 pickle weights are refused unless allowed (skip, like D2); D3 network errors are
retried with backoff, then fail; D4 checksum mismatch halts; D5 warns over the size limit.
D3 and D4 are recorded as measured: a download that failed either returns a manifest with status
"failed" holding the failed records (every file's expected and actual digest), which `apr-qa
download` writes beside the manifest (failure_record_path) before failing the job as that gate, so
the certification and the registry's provenance read the failure from evidence, not from its absence.
HF_TOKEN is read by huggingface_hub itself and never printed or written.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from collections.abc import Callable

from ..errors import AprQaError, GateFailure
from ..evidence import Evidence
from ..workflow.checksums import git_blob_sha1, sha256

SAFE_WEIGHTS = ("*.safetensors", "*.gguf")
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
SIDE_FILES = (
    "config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
)
COMMIT = re.compile(r"^[0-9a-f]{40}$")
T = TypeVar("T")


@dataclass
class ModelSpec:
    id: str
    repo: str
    revision: str = "main"
    files: list[str] = field(default_factory=list)  # extra narrowing patterns (e.g. one GGUF of many)
    allow_pickle: bool = False
    sha256: dict[str, str] = field(default_factory=dict)  # pinned file name -> expected sha256


@dataclass
class Options:
    cache_dir: Path | None = None       # HF cache; None = huggingface_hub's default (HF_HUB_CACHE)
    max_size_gb: float = 10.0           # D5
    retries: int = 3                    # D3
    backoff_s: float = 2.0              # first wait; doubles per retry
    lease_holder: str | None = None     # model cache lease holder (the manifest path): see model_cache
    slow_s: float = 600.0               # D6: a download slower than this is yellow (as a 10-minute conversion)


def _matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(base, p) for p in patterns)


def select_files(names: list[str], spec: ModelSpec) -> tuple[list[str], list[str]]:
    """(files to fetch, pickle weights refused). Weights: safetensors and gguf, pickle only if allowed."""
    weights = SAFE_WEIGHTS + (PICKLE_WEIGHTS if spec.allow_pickle else ())
    chosen = [n for n in names if _matches(n, weights + SIDE_FILES) and (not spec.files or _matches(n, spec.files)
                                                                         or _matches(n, SIDE_FILES))]
    refused = [n for n in names if _matches(n, PICKLE_WEIGHTS) and not spec.allow_pickle]
    return sorted(chosen), sorted(refused)


def weight_format(files: list[str]) -> str | None:
    for fmt, patterns in (("gguf", ("*.gguf",)), ("safetensors", ("*.safetensors",)), ("pytorch", PICKLE_WEIGHTS)):
        if any(_matches(f, patterns) for f in files):
            return fmt
    return None


def _is_transient(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code in (408, 429) or exc.response.status_code >= 500
    return False


class IncompleteDownload(GateFailure):
    """D3: a transient network or server error outlasted the retries."""

    def __init__(self, message: str):
        super().__init__(message, "fail")


def failure_record_path(manifest: str | Path) -> Path:
    """Where `apr-qa download` writes the manifest of a failed download (status "failed", the D3/D4
    records as measured): beside the manifest, which a failed job must not leave (the workflow
    deletes a failed job's outputs), so the failure's evidence survives for the certification."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.failed.json")


def with_retries(what: str, fn: Callable[[], T], opts: Options) -> T:
    """D3: retry transient network/server errors `opts.retries` times with exponential backoff."""
    for attempt in range(opts.retries + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not _is_transient(exc) or attempt == opts.retries:
                if _is_transient(exc):
                    raise IncompleteDownload(f"D3 download incomplete: {what} failed after {opts.retries} retries: "
                                             f"{type(exc).__name__}") from None
                raise
            wait = opts.backoff_s * 2**attempt
            print(f"warning: {what}: {type(exc).__name__} (attempt {attempt + 1}/{opts.retries + 1}), "
                  f"retrying in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
    raise AssertionError("unreachable")


@dataclass
class Listing:
    commit: str
    files: dict[str, dict[str, Any]]  # name -> {"size", "sha256" (LFS) or "git_sha1"}


def _online_listing(spec: ModelSpec, opts: Options) -> Listing:
    from huggingface_hub import HfApi

    info = with_retries(f"{spec.repo}@{spec.revision} listing",
                        lambda: HfApi().model_info(spec.repo, revision=spec.revision, files_metadata=True), opts)
    files = {}
    for s in info.siblings or []:
        files[s.rfilename] = ({"size": s.lfs.size, "sha256": s.lfs.sha256} if s.lfs is not None
                              else {"size": s.size, "git_sha1": s.blob_id})
    if info.sha is None:
        raise AprQaError(f"the hub resolved {spec.repo}@{spec.revision} to no commit; cannot pin the download")
    return Listing(info.sha, files)


def _cache_root(opts: Options) -> Path:
    from huggingface_hub import constants

    return Path(opts.cache_dir) if opts.cache_dir is not None else Path(constants.HF_HUB_CACHE)


def _offline_listing(spec: ModelSpec, opts: Options) -> Listing | None:
    """The cached snapshot's files; the expected ids are the names of the blobs they point to."""
    from huggingface_hub.file_download import repo_folder_name

    storage = _cache_root(opts) / repo_folder_name(repo_id=spec.repo, repo_type="model")
    commit = spec.revision if COMMIT.match(spec.revision) else None
    ref = storage / "refs" / spec.revision
    if commit is None and ref.is_file():
        commit = ref.read_text().strip()
    snapshot = storage / "snapshots" / (commit or "")
    if commit is None or not snapshot.is_dir():
        return None
    files = {}
    blobs = (storage / "blobs").resolve()
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        name = path.relative_to(snapshot).as_posix()
        if not path.resolve().is_relative_to(blobs):
            raise AprQaError("cached file links outside the repo's blob folder; refused", path)
        blob_id = Path(os.readlink(path)).name if path.is_symlink() else None
        content_addressed = blob_id is not None and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", blob_id)
        if not content_addressed and name in spec.sha256:  # a blob named otherwise (olah's offline etags)
            files[name] = {"size": path.stat().st_size, "sha256": spec.sha256[name]}
            continue
        if blob_id is None or not content_addressed:
            raise AprQaError("cached file is not a link to a content-addressed blob and has no pinned sha256; "
                             "cannot verify it offline", path)
        files[name] = {"size": path.stat().st_size, ("sha256" if len(blob_id) == 64 else "git_sha1"): blob_id}
    return Listing(commit, files)


def _remove_stale_partials(spec: ModelSpec, opts: Options) -> None:
    """Delete `<etag>.<id>.incomplete` files that killed downloads left in the repo's blob folder.

    huggingface_hub writes each download to a file unique to its process and holds
    `.locks/<repo>/<etag>.lock` meanwhile; a partial file whose lock can be taken at once has no live
    writer (its process died), so removing it cannot disturb a concurrent download of the same cache.
    """
    from filelock import FileLock, Timeout
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=spec.repo, repo_type="model")
    for partial in sorted((_cache_root(opts) / folder / "blobs").glob("*.incomplete")):
        lock = FileLock(_cache_root(opts) / ".locks" / folder / f"{partial.name.split('.')[0]}.lock")
        try:
            with lock.acquire(timeout=0):
                partial.unlink(missing_ok=True)
                print(f"note: removed {partial.name}, left by an interrupted download", file=sys.stderr)
        except Timeout:
            continue  # another process is downloading this blob right now


def _make_room(spec: ModelSpec, listing: Listing, chosen: list[str], opts: Options) -> None:
    """Under the workflow's model cache policy: lease the revision, then evict least-recently-used
    revisions until the files still to fetch fit the cap (apr_qa.hub.model_cache)."""
    from huggingface_hub import try_to_load_from_cache

    from .model_cache import ModelCache, policy_from_env

    policy = policy_from_env()
    if policy is None:
        return
    incoming = sum(listing.files[n]["size"] or 0 for n in chosen
                   if not isinstance(try_to_load_from_cache(spec.repo, n, cache_dir=_cache_root(opts),
                                                            revision=listing.commit), str))
    holder = opts.lease_holder or f"{spec.repo}@{listing.commit}"
    for e in ModelCache(_cache_root(opts), policy).prepare_download(spec.repo, listing.commit, incoming, holder):
        print(f"note: model cache: evicted {e.repo}@{e.commit[:12]} ({e.size / 1e6:.1f} MB): {e.reason}",
              file=sys.stderr)


def _record_ref(spec: ModelSpec, commit: str, opts: Options) -> None:
    """Point refs/<revision> at the commit (as huggingface_hub does), so HF_HUB_OFFLINE=1 can resolve it later."""
    from huggingface_hub.file_download import repo_folder_name

    from ..fsutil import write_text_atomic

    write_text_atomic(_cache_root(opts) / repo_folder_name(repo_id=spec.repo, repo_type="model") / "refs" /
                      spec.revision, commit)


def _skip(spec: ModelSpec, gate: Evidence, **extra: Any) -> dict[str, Any]:
    print(f"warning: skipping {spec.id} ({spec.repo}): {gate.id} {gate.message}", file=sys.stderr)
    return {"model": spec.id, "repo": spec.repo, "revision": spec.revision, "status": "skipped",
            "skip_reason": f"{gate.id}: {gate.message}", "gates": [gate.to_dict()], **extra}


D3_THRESHOLD = "every chosen file fetched"
D4_THRESHOLD = "all files match the hub"  # and the pins, when the model has them


def _failed(spec: ModelSpec, commit: str | None, gates: list[Evidence], files: list[dict[str, Any]],
            **extra: Any) -> dict[str, Any]:
    """The manifest of a download that failed a gate: status "failed", every record as measured, and
    the gate the job fails as (a halt before a fail: the worst one)."""
    tripped = [g for g in gates if not g.passed and g.level in ("fail", "halt")]
    worst = min(tripped, key=lambda g: g.level != "halt")
    return {"model": spec.id, "repo": spec.repo, "revision": spec.revision, "commit": commit, "status": "failed",
            "failure": {"gate": worst.id, "level": worst.level, "message": worst.message},
            "files": files, "gates": [g.to_dict() for g in gates], **extra}


def raise_failure(manifest: dict[str, Any]) -> None:
    """Fail as the gate a failed download's manifest names (D3: exit 1, D4: halt, exit 3)."""
    failure = manifest["failure"]
    raise GateFailure(failure["message"], failure["level"])


def download(spec: ModelSpec, opts: Options) -> dict[str, Any]:
    """Fetch and verify; return the manifest: status "ok", "skipped" (D1/D2/G6) or "failed" (D3/D4
    as measured; raise_failure fails the job as that gate)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    offline = constants.is_offline_mode()
    try:
        listing = _offline_listing(spec, opts) if offline else _online_listing(spec, opts)
    except IncompleteDownload as exc:  # the listing itself did not arrive: nothing could be fetched
        return _failed(spec, None, [Evidence("D3", "download complete", False, "no file listing", D3_THRESHOLD,
                                             "fail", str(exc))], [])
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        missing = "revision" if isinstance(exc, RevisionNotFoundError) else "repository"
        return _skip(spec, Evidence("D1", "repository exists", False, f"{missing} not found", "HTTP 200", "warn",
                                    f"{spec.repo}@{spec.revision}: {missing} not found on {constants.ENDPOINT}"))
    if listing is None:
        return _skip(spec, Evidence("D1", "repository exists", False, "not in offline cache", "cached snapshot",
                                    "warn", f"{spec.repo}@{spec.revision} is not in the HF cache {_cache_root(opts)} "
                                            "and HF_HUB_OFFLINE=1"))
    from .model_cache import check_repo_name

    for name in listing.files:
        check_repo_name(spec.repo, name)
    # Online the listing is the whole repo: a pin naming no file there is a mistake. Offline it is what
    # the cache holds: only the pinned files a download would fetch must be there.
    expected = select_files(list(spec.sha256), spec)[0] if offline else spec.sha256
    stray = sorted(set(expected) - set(listing.files))
    if stray:
        where = "the offline cache of " if offline else ""
        raise AprQaError(f"pinned files not in {where}{spec.repo}@{listing.commit[:12]}: {', '.join(stray)}")
    chosen, refused = select_files(sorted(listing.files), spec)
    fmt = weight_format(chosen)
    if fmt is None:
        if refused:
            gate = Evidence("G6", "format safety", False, f"pickle weights only: {', '.join(refused)}",
                            "safetensors or gguf", "warn",
                            "pickle files can execute code when loaded; "
                            "set allow_pickle: true for this model to opt in")
        else:
            gate = Evidence("D2", "format supported", False, "no safetensors/gguf weights",
                            "known weight extension", "warn", f"files: {', '.join(sorted(listing.files)) or 'none'}")
        return _skip(spec, gate, commit=listing.commit)
    ggufs = [f for f in chosen if f.endswith(".gguf")]
    if len(ggufs) > 1:
        raise AprQaError(f"{spec.repo} has {len(ggufs)} GGUF files ({', '.join(ggufs)}); "
                         "choose one with `files:`")
    if spec.sha256:
        unpinned = [n for n in chosen if n not in spec.sha256]
        if unpinned:
            message = (f"D4 unpinned files in {spec.repo}: {', '.join(unpinned)} have no recorded sha256 "
                       "(the model pins its files; add them to `sha256:` or remove the pins)")
            return _failed(spec, listing.commit, [Evidence("D4", "checksums valid", False,
                                                           f"{len(unpinned)} unpinned files", D4_THRESHOLD, "halt",
                                                           message, {"unpinned": unpinned})], [])

    if not offline:
        _make_room(spec, listing, chosen, opts)
        _remove_stale_partials(spec, opts)
    records: list[dict[str, Any]] = []
    mismatches: list[dict[str, Any]] = []
    incomplete = ""
    started = time.perf_counter()  # D6 and the cost accounting: fetch + verify of every chosen file
    for name in chosen:
        def fetch(name: str = name) -> str:
            return hf_hub_download(spec.repo, name, revision=listing.commit,
                                   cache_dir=str(opts.cache_dir) if opts.cache_dir is not None else None)

        try:
            path = with_retries(f"{spec.repo}/{name}", fetch, opts)
        except IncompleteDownload as exc:
            incomplete = str(exc)
            break
        if not Path(path).resolve().is_relative_to(_cache_root(opts).resolve()):
            raise AprQaError(f"downloaded file of {spec.repo}/{name} resolves outside the HF cache; refused", path)
        record, mismatch = _verify(spec, listing, name, Path(path))
        records.append(record)
        if mismatch is not None:  # every file is still checked: the evidence names all that differ
            mismatches.append(mismatch)

    total = sum(r["size"] for r in records)
    seconds = round(time.perf_counter() - started, 3)
    # D4 is judged on the files fetched; with D3 failed the rest were never verified, which D3 records.
    gates = [Evidence("D3", "download complete", not incomplete, len(records), len(chosen), "fail", incomplete),
             Evidence("D4", "checksums valid", not mismatches, len(records) - len(mismatches),
                      D4_THRESHOLD, "halt", "; ".join(m["message"] for m in mismatches),
                      {"verified": len(records), "mismatches": mismatches}),
             Evidence("D5", "size reasonable", total <= opts.max_size_gb * 1e9, total,
                      int(opts.max_size_gb * 1e9), "warn",
                      "" if total <= opts.max_size_gb * 1e9 else f"{total / 1e9:.1f} GB over {opts.max_size_gb:g} GB"),
             Evidence("D6", "download time", seconds <= opts.slow_s, seconds, f"<= {opts.slow_s:g} s", "warn",
                      "" if seconds <= opts.slow_s else f"{total / 1e6:.0f} MB took {seconds:.0f} s",
                      {"bytes": total, "mb_per_s": round(total / 1e6 / seconds, 3) if seconds else None})]
    if refused:
        gates.append(Evidence("G6", "format safety", True, f"ignored pickle files: {', '.join(refused)}",
                              "no pickle loaded", "warn"))
    if incomplete or mismatches:
        return _failed(spec, listing.commit, gates, records, offline=offline, total_bytes=total,
                       download_seconds=seconds)
    if not offline and not COMMIT.match(spec.revision):
        _record_ref(spec, listing.commit, opts)
    for g in gates:
        if not g.passed:
            print(f"warning: {spec.id}: {g.id} {g.message}", file=sys.stderr)
    snapshot = Path(records[0]["path"]).parent
    for _ in Path(records[0]["name"]).parts[1:]:
        snapshot = snapshot.parent
    source = snapshot / ggufs[0] if ggufs else snapshot
    return {"model": spec.id, "repo": spec.repo, "revision": spec.revision, "commit": listing.commit,
            "status": "ok", "format": fmt, "source": str(source), "offline": offline,
            "endpoint": None if offline else constants.ENDPOINT, "total_bytes": total,
            "download_seconds": seconds,
            "files": records, "gates": [g.to_dict() for g in gates]}


def _verify(spec: ModelSpec, listing: Listing, name: str, path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """D4: the downloaded bytes must be the ones the hub lists (sha256 for LFS, git sha1 otherwise)
    and the pins. Returns the file's record and, when it differs, the mismatch as measured."""
    expected = listing.files[name]
    if "sha256" in expected:
        kind, want, got = "sha256", expected["sha256"], sha256(path.resolve())
    else:
        kind, want, got = "git-sha1", expected["git_sha1"], git_blob_sha1(path)
    digest = got if kind == "sha256" else sha256(path.resolve())
    pinned = spec.sha256.get(name)
    size = path.stat().st_size
    record = {"name": name, "path": str(path), "size": size, "lfs": kind == "sha256", "sha256": digest,
              kind.replace("-", "_"): got, **({"pinned": True} if pinned is not None else {})}
    where = f"(file {path.resolve()}; inspect it, delete it to re-download)"
    if want != got:
        label = "pinned sha256" if pinned == want else kind
        return record, {"name": name, "kind": label, "expected": want, "actual": got, "path": str(path.resolve()),
                        "message": f"D4 checksum mismatch for {spec.repo}@{listing.commit[:12]}/{name}: expected "
                                   f"{label} {want}, got {got} {where}"}
    if pinned is not None and pinned.lower() != digest:
        return record, {"name": name, "kind": "pinned sha256", "expected": pinned, "actual": digest,
                        "path": str(path.resolve()),
                        "message": f"D4 checksum mismatch for {spec.repo}/{name}: pinned sha256 {pinned}, "
                                   f"got {digest} {where}"}
    return record, None


def weights_key(manifest: dict[str, Any]) -> str:
    """What a converted artifact depends on: the repo, commit and the bytes of every file."""
    if manifest.get("status") != "ok":
        return f"skipped:{manifest.get('skip_reason')}"
    files = ",".join(f"{f['name']}={f['sha256']}" for f in manifest["files"])
    return f"{manifest['repo']}@{manifest['commit']}:{files}"


def verify_manifest(manifest: dict[str, Any], use_cache: bool = True) -> int:
    """Re-check every file a manifest lists (the consumer-side check). Raises D4 on a mismatch."""
    for f in manifest.get("files", []):
        path = Path(f["path"])
        if not path.exists():
            raise AprQaError("file listed in the download manifest is missing", path)
        got = sha256(path.resolve(), use_cache=use_cache)
        if got != f["sha256"]:
            raise GateFailure(f"D4 checksum mismatch for {manifest['repo']}/{f['name']}: recorded sha256 "
                              f"{f['sha256']}, now {got}", "halt", path)
    return len(manifest.get("files", []))


def parse_pins(items: list[str]) -> dict[str, str]:
    """`NAME=HEX` pairs (the --sha256 option) -> {name: sha256}; a malformed pair is a one-line error."""
    pins = {}
    for item in items:
        name, _, digest = item.rpartition("=")
        if not name or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise AprQaError(f"--sha256 {item!r}: expected NAME=<64 hex digits>")
        pins[name] = digest.lower()
    return pins
