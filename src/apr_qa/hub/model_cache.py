"""The JIT model cache: the HF cache the workflow downloads into, kept under a size cap.

Models are fetched just in time and dropped once they are no longer needed, so a certification run
over many models needs the disk of a few. Everything about the cache itself (which revisions it
holds, their sizes and times, deleting them) goes through huggingface_hub's cache API
(`scan_cache_dir`, `HFCacheInfo.delete_revisions(...).execute()`); this module only adds policy.

Policy (config `model_cache:`, passed to every job as JSON in APR_QA_MODEL_CACHE; defaults below):
- Cap (`max_size_gb`, 10): before a download, least-recently-used revisions are evicted until the
  cache plus the incoming bytes fit. A revision's "last use" is the later of the time a download job
  last used it (fetched or found it cached; recorded in the state file) and huggingface_hub's
  `CachedRevisionInfo.last_modified` (newest blob mtime). Access times (`last_accessed`) are not
  used: the API has them per repo only, and relatime/noatime mounts make them stale.
- Retention by outcome (`retention_days`: pass 7, fail 3, blocked 1): when a model's certification
  ends, its revision's outcome and time are recorded; `gc` evicts it once that many days passed.
  A failed or blocked model stays a while for the person who investigates it.
- Eviction after certification (`evict_after_certify`, on): a passing model is evicted as soon as
  its certification is recorded (retention 0 for pass).
- Pins (`apr-qa cache pin REPO`): every revision of a pinned repo is never evicted.
- Leases: "never evict what a queued or running job needs". The download job of a model takes a
  lease on the revision it fetched, held by the model's manifest path, and `restore` (which puts an
  evicted revision back for a job that must rerun) takes it again. The lease lasts until that
  model's certification records its outcome (`release`), so the revision survives while any of the
  model's conversions, evaluations or its certification are queued or running. A run that dies
  never releases: a lease older than `lease_hours` (48) no longer protects the revision.
- Offline (HF_HUB_OFFLINE=1) the cache is the only copy of the models: the workflow's hooks evict
  nothing then; `apr-qa cache gc` still does what it is told.

State lives beside the cache, in `<cache>.apr-qa/`: `state.json` (pins, leases, last use, outcomes),
`evictions.json` (what was evicted, when and why; the report reads it) and `lock`, a filelock every
read-modify-write and every eviction holds, so parallel jobs and concurrent `gc` calls see and
leave a consistent cache.

A download manifest whose revision was evicted keeps its recorded sha256s: `evicted()` tells the
integrity checks that its files are away on purpose, and `restore()` fetches them again at the
recorded commit and checks them against those sha256s before a job reads them.
"""

from __future__ import annotations

import json
import re
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AprQaError
from ..fsutil import write_text_atomic

POLICY_ENV = "APR_QA_MODEL_CACHE"
OUTCOMES = ("pass", "fail", "blocked")
LOG_KEEP = 1000  # evictions kept in evictions.json
GB = 1e9


@dataclass
class Policy:
    max_size_gb: float = 10.0
    evict_after_certify: bool = True
    retention_days: dict[str, float] = field(default_factory=lambda: {"pass": 7, "fail": 3, "blocked": 1})
    lease_hours: float = 48.0

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Policy:
        unknown = set(doc) - {"max_size_gb", "evict_after_certify", "retention_days", "lease_hours"}
        if unknown:
            raise AprQaError(f"model_cache: unknown keys {', '.join(sorted(unknown))}")
        policy = cls(**{k: v for k, v in doc.items() if k != "retention_days"})
        policy.retention_days = {**policy.retention_days, **(doc.get("retention_days") or {})}
        if set(policy.retention_days) - set(OUTCOMES):
            raise AprQaError(f"model_cache.retention_days: outcomes are {', '.join(OUTCOMES)}")
        return policy

    def retention_s(self, outcome: str) -> float:
        if outcome == "pass" and self.evict_after_certify:
            return 0.0
        return float(self.retention_days[outcome]) * 86400


def policy_from_env() -> Policy | None:
    """The workflow's policy (rules/common.smk exports it); None outside the workflow."""
    raw = os.environ.get(POLICY_ENV)
    if not raw:
        return None
    try:
        return Policy.from_dict(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise AprQaError(f"{POLICY_ENV}: not a model_cache policy: {exc}") from None


def default_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


@dataclass
class Revision:
    repo: str
    commit: str
    size: int
    last_used: float
    refs: list[str]
    pinned: bool = False
    leased_by: list[str] = field(default_factory=list)
    outcome: str | None = None
    outcome_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.repo}@{self.commit}"


@dataclass
class Eviction:
    repo: str
    commit: str
    size: int
    reason: str
    at: float


class ModelCache:
    def __init__(self, cache_dir: str | Path | None = None, policy: Policy | None = None):
        self.dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.policy = policy or Policy()
        self.state_dir = self.dir.with_name(self.dir.name + ".apr-qa")
        self.state_file = self.state_dir / "state.json"
        self.log_file = self.state_dir / "evictions.json"

    # -- state -------------------------------------------------------------------------------
    def _lock(self):
        from filelock import FileLock

        self.state_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.state_dir / "lock")

    def _read(self, path: Path, empty: Any) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return empty
        except ValueError as exc:
            raise AprQaError(f"model cache state is not JSON ({exc}); delete it to start over", path) from None

    def _state(self) -> dict[str, Any]:
        state = self._read(self.state_file, {})
        for key, empty in (("pins", []), ("leases", {}), ("used", {}), ("outcomes", {})):
            state.setdefault(key, empty)
        return state

    def _save(self, state: dict[str, Any]) -> None:
        write_text_atomic(self.state_file, json.dumps(state, indent=1, sort_keys=True) + "\n")

    def evictions(self) -> list[dict[str, Any]]:
        return self._read(self.log_file, [])

    # -- listing -------------------------------------------------------------------------------
    def _scan(self):
        from huggingface_hub import scan_cache_dir

        self.dir.mkdir(parents=True, exist_ok=True)
        return scan_cache_dir(self.dir)

    def _live_leases(self, state: dict[str, Any], now: float) -> dict[str, list[str]]:
        horizon = now - self.policy.lease_hours * 3600
        return {key: sorted(h for h, t in holders.items() if t >= horizon)
                for key, holders in state["leases"].items()}

    def _revisions(self, info, state: dict[str, Any], now: float) -> list[Revision]:
        leases = self._live_leases(state, now)
        out = []
        for repo in info.repos:
            if repo.repo_type != "model":
                continue
            for rev in repo.revisions:
                key = f"{repo.repo_id}@{rev.commit_hash}"
                outcome = state["outcomes"].get(key, {})
                out.append(Revision(repo.repo_id, rev.commit_hash, rev.size_on_disk,
                                    max(rev.last_modified, state["used"].get(key, 0.0)), sorted(rev.refs),
                                    repo.repo_id in state["pins"], leases.get(key, []),
                                    outcome.get("outcome"), outcome.get("at")))
        return sorted(out, key=lambda r: r.last_used)

    def listing(self) -> tuple[int, list[Revision]]:
        """(cache size in bytes, its model revisions, least recently used first)."""
        with self._lock():
            info = self._scan()
            return info.size_on_disk, self._revisions(info, self._state(), time.time())

    # -- eviction ------------------------------------------------------------------------------
    def gc(self, max_size_gb: float | None = None, incoming: int = 0, dry_run: bool = False,
           keep: tuple[str, ...] = ()) -> tuple[list[Eviction], int]:
        """Evict expired retentions, then LRU revisions until size + `incoming` fits the cap.
        Pinned, leased and `keep` (repo@commit) revisions stay. Returns (evictions, size after)."""
        with self._lock():
            return self._gc_locked(max_size_gb, incoming, dry_run, keep)

    def _gc_locked(self, max_size_gb, incoming, dry_run, keep):
        cap = (self.policy.max_size_gb if max_size_gb is None else max_size_gb) * GB
        now = time.time()
        state = self._state()
        info = self._scan()
        revisions = self._revisions(info, state, now)
        movable = [r for r in revisions if not r.pinned and not r.leased_by and r.key not in keep]
        chosen: dict[str, tuple[Revision, str]] = {}
        for r in movable:
            if r.outcome is not None and now - (r.outcome_at or 0) >= self.policy.retention_s(r.outcome):
                kept = self.policy.retention_s(r.outcome)
                chosen[r.key] = (r, f"retention: {r.outcome}, kept {kept / 86400:g} d" if kept else
                                 f"certified ({r.outcome}): evict_after_certify")

        def size_after() -> int:
            return info.size_on_disk - (info.delete_revisions(*[r.commit for r, _ in chosen.values()])
                                        .expected_freed_size if chosen else 0)

        for r in movable:  # least recently used first
            if size_after() + incoming <= cap:
                break
            chosen.setdefault(r.key, (r, f"LRU: cache over its {cap / GB:g} GB cap"))
        # a commit hash is unique per repo only: delete_revisions() removes it from every repo holding it
        held = {}
        for r in revisions:
            held.setdefault(r.commit, []).append(r.key)
        for key in [k for k, (r, _) in chosen.items() if any(o not in chosen for o in held[r.commit])]:
            print(f"warning: {key}: its commit hash is also cached under another repo that stays; not evicted",
                  file=sys.stderr)
            del chosen[key]
        after = size_after()
        evicted = [Eviction(r.repo, r.commit, r.size, why, now) for r, why in chosen.values()]
        if after + incoming > cap:
            print(f"warning: model cache {self.dir}: {(after + incoming) / GB:.2f} GB needed, over the "
                  f"{cap / GB:g} GB cap: the rest is pinned or leased by pending jobs", file=sys.stderr)
        if dry_run or not chosen:
            return evicted, after
        info.delete_revisions(*[r.commit for r, _ in chosen.values()]).execute()
        for key in chosen:
            for table in ("used", "outcomes"):
                state[table].pop(key, None)
        self._save(state)
        log = self.evictions() + [asdict(e) for e in evicted]
        write_text_atomic(self.log_file, json.dumps(log[-LOG_KEEP:], indent=1) + "\n")
        return evicted, self._scan().size_on_disk

    # -- pins, leases, outcomes ------------------------------------------------------------------
    def pin(self, repo: str) -> None:
        with self._lock():
            state = self._state()
            if repo not in state["pins"]:
                state["pins"] = sorted(state["pins"] + [repo])
                self._save(state)

    def unpin(self, repo: str) -> None:
        with self._lock():
            state = self._state()
            if repo not in state["pins"]:
                raise AprQaError(f"{repo} is not pinned in the model cache {self.dir}")
            state["pins"].remove(repo)
            self._save(state)

    def lease(self, repo: str, commit: str, holder: str) -> None:
        """`holder` needs repo@commit until it releases it; counts as a use (LRU)."""
        with self._lock():
            self._lease_locked(self._state(), repo, commit, holder)

    def _lease_locked(self, state: dict[str, Any], repo: str, commit: str, holder: str) -> None:
        key, now = f"{repo}@{commit}", time.time()
        state["leases"].setdefault(key, {})[holder] = now
        state["used"][key] = now
        self._save(state)

    def prepare_download(self, repo: str, commit: str, incoming: int, holder: str) -> list[Eviction]:
        """Before a download: lease the revision, then make room for `incoming` bytes (one lock hold,
        so a concurrent job cannot evict the revision between the two)."""
        with self._lock():
            self._lease_locked(self._state(), repo, commit, holder)
            return self._gc_locked(None, incoming, False, (f"{repo}@{commit}",))[0]

    def release(self, holder: str, revision: str | None = None, outcome: str | None = None,
                collect: bool = True) -> list[Eviction]:
        """`holder` no longer needs its revisions; record `outcome` for `revision` (repo@commit: the
        model's), then collect (unless `collect` is off: offline nothing is evicted)."""
        if outcome is not None and outcome not in OUTCOMES:
            raise AprQaError(f"outcome {outcome!r}: expected one of {', '.join(OUTCOMES)}")
        with self._lock():
            state = self._state()
            for key in [k for k, holders in state["leases"].items() if holder in holders]:
                del state["leases"][key][holder]
                if not state["leases"][key]:
                    del state["leases"][key]
            if outcome is not None and revision is not None:
                state["outcomes"][revision] = {"outcome": outcome, "at": time.time()}
            self._save(state)
            return self._gc_locked(None, 0, False, ())[0] if collect else []


# -- the download manifest's side ------------------------------------------------------------------
def _manifest_cache(manifest: dict[str, Any]) -> Path | None:
    """The HF cache a manifest's files live in (the parent of their `models--org--name` folder)."""
    for f in manifest.get("files", []):
        parts = Path(f["path"]).parts
        for i, part in enumerate(parts):
            if part.startswith("models--") and i + 1 < len(parts) and parts[i + 1] == "snapshots":
                return Path(*parts[:i])
    return None


def evicted(manifest: dict[str, Any]) -> bool:
    """True when the manifest's revision was evicted by the model cache (and is not back): its files
    are away on purpose and its recorded sha256s still stand."""
    cache = _manifest_cache(manifest)
    if cache is None or manifest.get("status") != "ok":
        return False
    snapshot = cache / f"models--{manifest['repo'].replace('/', '--')}" / "snapshots" / manifest["commit"]
    if snapshot.exists():
        return False
    log = ModelCache(cache).evictions()
    return any(e["repo"] == manifest["repo"] and e["commit"] == manifest["commit"] for e in log)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AprQaError(f"cannot read download manifest: {exc}", path) from None


def check_repo_name(repo: str, name: str) -> None:
    """Refuse a repository file name that could write outside the snapshot folder."""
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or re.match(r"^[A-Za-z]:", name)
            or any(p in ("", ".", "..") for p in parts) or "\0" in name):
        raise AprQaError(f"unsafe file name {name!r} in {repo}: absolute, '..' or empty path parts are refused")


def restore(manifest_path: Path) -> int:
    """Lease the manifest's revision to it; first, if the model cache evicted it, fetch it again (the
    manifest's commit and files; the bytes must match the recorded sha256s). Returns files fetched."""
    from huggingface_hub import hf_hub_download

    from ..workflow.checksums import sha256

    manifest = _read_manifest(manifest_path)
    if manifest.get("status") != "ok":
        return 0
    cache = _manifest_cache(manifest)
    if cache is None:
        raise AprQaError("the manifest's files are not in an HF cache; nothing to restore", manifest_path)
    # Only an eviction is undone here: files lost otherwise are verify-checksums' to report (D4).
    missing = [f for f in manifest["files"] if not Path(f["path"]).exists()] if evicted(manifest) else []
    mc = ModelCache(cache, policy_from_env())
    if missing and is_offline():
        raise AprQaError(f"{len(missing)} files of {manifest['repo']}@{manifest['commit'][:12]} were evicted and "
                         "HF_HUB_OFFLINE=1: cannot fetch them again", manifest_path)
    if missing:
        mc.prepare_download(manifest["repo"], manifest["commit"], sum(f["size"] for f in missing),
                            str(Path(manifest_path).resolve()))
    else:
        mc.lease(manifest["repo"], manifest["commit"], str(Path(manifest_path).resolve()))
    for f in missing:
        check_repo_name(manifest["repo"], f["name"])
        path = Path(hf_hub_download(manifest["repo"], f["name"], revision=manifest["commit"], cache_dir=cache))
        got = sha256(path.resolve())
        if os.path.abspath(path) != os.path.abspath(f["path"]) or got != f["sha256"]:
            from ..errors import GateFailure

            raise GateFailure(f"D4 restored file differs from the manifest: {f['name']} sha256 {got}, recorded "
                              f"{f['sha256']} (path {path})", "halt", manifest_path)
    return len(missing)


def release(manifest_path: Path, outcome: str | None) -> list[Eviction]:
    """The model of this manifest is done (certified, or blocked): release its lease, record the
    outcome and collect. Offline only the lease and the outcome are recorded."""
    manifest = _read_manifest(manifest_path)
    cache = _manifest_cache(manifest)
    if manifest.get("status") != "ok" or cache is None:
        return []
    return ModelCache(cache, policy_from_env()).release(
        str(Path(manifest_path).resolve()), f"{manifest['repo']}@{manifest['commit']}", outcome,
        collect=not is_offline())


def outcome_of_certification(path: Path) -> str:
    """pass / fail / blocked from a model certification (`apr-qa certify --output`)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AprQaError(f"cannot read certification: {exc}", path) from None
    if (doc.get("mqs") or {}).get("status") == "BLOCKED":
        return "blocked"
    return "pass" if doc.get("tier_passed") else "fail"


def report_blocks(manifests: list[dict[str, Any]], limit: int = 20) -> list[tuple]:
    """The report's "Model cache" section: each cache the manifests' files live in, its size against the
    cap, and the latest evictions of the models' revisions (read only: no lock, no state written)."""
    from huggingface_hub import scan_cache_dir

    policy = policy_from_env() or Policy()
    caches = sorted({c for c in map(_manifest_cache, manifests) if c is not None})
    repos = {m.get("repo") for m in manifests}
    out: list[tuple] = []
    for cache in caches:
        mc = ModelCache(cache, policy)
        size = scan_cache_dir(cache).size_on_disk if cache.is_dir() else 0
        state = mc._read(mc.state_file, {}) if mc.state_file.exists() else {}
        out += [("h2", "Model cache"),
                ("p", f"`{cache}`: {size / GB:.2f} GB of the {policy.max_size_gb:g} GB cap; pinned: "
                      f"{', '.join(state.get('pins', [])) or 'none'}")]
        log = [e for e in mc.evictions() if e["repo"] in repos][-limit:][::-1]
        rows = [[time.strftime("%Y-%m-%d %H:%M", time.localtime(e["at"])), f"{e['repo']}@{e['commit'][:12]}",
                 f"{e['size'] / 1e6:.1f}", e["reason"]] for e in log]
        out += [("table", ["evicted", "revision", "MB", "why"], rows)] if rows else [("p", "Nothing evicted.")]
    return out
