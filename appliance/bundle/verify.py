"""Verifying a bundle (a directory, a tar, or the parts of a split tar) against trusted keys.

The order is the security argument, so it is fixed here and nowhere else:

1. Look without trusting: walk the tree (or each tar member header) refusing links,
   devices, FIFOs, sockets, absolute names and `..`, before reading any content.
2. Signatures first: every `signatures/*.sig` envelope is checked against the trusted
   public keys with model-signing's own DSSE verifier, which hands back the signed
   statement ({path: sha256}). Until then no byte of bundle.json is believed.
3. bundle.json's sha256 must be the one the statement signs; only then is it parsed, its
   format version checked, then its expiry.
4. Every file: nothing unlisted, nothing missing, each size and sha256 equal to bundle.json
   AND to the signed statement. The tree is hashed once (we do not let model-signing hash
   it a second time), in parallel threads, streaming.

A tar is verified as a stream (`enclave bundle pack` puts bundle.json and signatures/
first), so a split bundle on removable media is checked without first being copied out.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from glob import glob, has_magic
from pathlib import Path
from typing import Any

from appliance.bundle import certs, dsse, keyless, keys
from appliance.bundle.format import (
    BUNDLE_JSON,
    SIGNATURE_SUFFIX,
    SIGNATURES_DIR,
    BundleManifest,
    parse_manifest,
)
from appliance.bundle.signing import GIT_PATHS, check_not_git_path
from appliance.bundle.tree import Progress, check_rel_path, hash_files, walk
from appliance.errors import (
    BundleError,
    BundleExpired,
    ChangedFile,
    EnclaveError,
    MissingFile,
    SignatureInvalid,
    SignatureMissing,
    SpecialFile,
    SymlinkFound,
    UnlistedFile,
    UnsafePath,
    UntrustedKey,
    UsageError,
)

MAX_MANIFEST_BYTES = 256 << 20
MAX_SIGNATURE_BYTES = 64 << 20
STREAM_CHUNK = 1 << 20
PART_RE = re.compile(r"^(?P<stem>.+)\.(?P<num>\d{3,})$")


@dataclass(frozen=True)
class Signer:
    name: str
    fingerprint: str
    key: str
    # Who a certificate names (its e-mail SAN, else its subject); "" for a key. For a
    # certificate `key` is the trusted CA file and root it chains to.
    identity: str = ""


@dataclass
class VerifyReport:
    manifest: BundleManifest
    signers: list[Signer]
    source: str
    kind: str  # "directory" or "tar"
    parts: int = 1
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    untrusted_signatures: list[str] = field(default_factory=list)
    required_signatures: int = 1
    # What was read and checked, for the installer to write rather than read the media again.
    manifest_sha256: str = ""
    signature_files: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def fingerprints(self) -> list[str]:
        return [s.fingerprint for s in self.signers]

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "ok": True,
            "source": self.source,
            "kind": self.kind,
            "parts": self.parts,
            "name": m.name,
            "version": m.version,
            "release": m.release_name,
            "format": m.format,
            "created": m.created.isoformat(),
            "expires": m.expires.isoformat() if m.expires else None,
            "signers": [s.__dict__ for s in self.signers],
            "required_signatures": self.required_signatures,
            "untrusted_signatures": self.untrusted_signatures,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "models": [{"repo_id": r.repo_id, "revision": r.revision} for r in m.models],
            "datasets": [{"repo_id": r.repo_id, "revision": r.revision} for r in m.datasets],
            "wheels": len(m.wheels),
            "debs": len(m.debs),
            "base": (
                {
                    "release": f"{m.base.name}-{m.base.version}",
                    "digest": m.base.digest,
                    "files": len(m.from_base),
                    "bytes": sum(f.size for f in m.from_base),
                }
                if m.base is not None
                else None
            ),
        }


# --- trust --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    path: Path
    fingerprint: str
    verifier: Any


@dataclass
class Trust:
    """What the host trusts: officer public keys (--trust), CA roots (--trust-ca), and
    keyless identities under a pinned Sigstore trusted root (--trusted-root with
    --trust-identity and --trust-issuer).

    `at` is the time X.509 certificates are checked at (None: now), the same `now` that
    judges a bundle's expiry; a keyless certificate is checked at its log entry's time.
    """

    keys: dict[str, TrustedKey]
    cas: list[certs.TrustedCA] = field(default_factory=list)
    at: datetime | None = None
    keyless: keyless.KeylessTrust | None = None


def load_trusted(
    trusted_keys: Iterable[Path | str] | Trust,
    trust_cas: Iterable[Path | str] = (),
    *,
    trusted_root: Path | str | None = None,
    trust_identities: Sequence[str] = (),
    trust_issuer: str | None = None,
    now: datetime | None = None,
) -> Trust:
    if isinstance(trusted_keys, Trust):
        if now is not None:
            trusted_keys.at = now
        return trusted_keys
    found: dict[str, TrustedKey] = {}
    for p in trusted_keys:
        path = Path(p)
        fp = keys.fingerprint(keys.load_public_key(path))
        found[fp] = TrustedKey(path, fp, dsse.verifier(path))
    cas = certs.load_cas(trust_cas)
    if trusted_root is None and (trust_identities or trust_issuer):
        raise UsageError(
            "--trust-identity and --trust-issuer need --trusted-root FILE (a Sigstore trusted root)"
        )
    sigstore = (
        keyless.load(trusted_root, trust_identities, trust_issuer) if trusted_root is not None else None
    )
    if not found and not cas and sigstore is None:
        raise UsageError(
            "no trusted public key given (--trust officer.pub, --trust-ca ca.pem, or --trusted-root "
            "trusted_root.json with --trust-identity and --trust-issuer)"
        )
    return Trust(found, cas, now, sigstore)


def _cert_signer(
    parsed: Any, chain: list[bytes], trusted: Trust, name: str, sig_path: str
) -> tuple[Signer, Any] | str:
    """(signer, verifier) for a certificate signature, or why it is not trusted (a string).

    Not chaining to a trusted root is "untrusted" (ignored beside other signers, exit 15
    alone), like a key nobody trusts; a certificate out of its validity period, a leaf not
    meant for signing or an unparsable chain is a bad signature (exit 14).
    """
    rel = f"{SIGNATURES_DIR}/{name}"
    try:
        verified = certs.verify_chain(chain, trusted.cas, trusted.at)
        verifier_ = dsse.leaf_verifier(verified.leaf.public_key())
    except certs.CertUntrusted as exc:
        return str(exc)
    except ValueError as exc:  # CertExpired, usage, parsing, key type
        raise SignatureInvalid(f"{sig_path}: {exc}", path=rel) from None
    fp = keys.fingerprint(verified.leaf.public_key())
    anchor = verified.anchor.subject.rfc4514_string()
    ca_path = next((str(ca.path) for ca in trusted.cas if ca.cert == verified.anchor), "")
    signer = Signer(name.removesuffix(SIGNATURE_SUFFIX), fp, f"{ca_path} ({anchor})", verified.identity)
    return signer, verifier_


def check_signatures(
    sigs: Mapping[str, bytes], trusted: Trust, require: int, where: str
) -> tuple[dict[str, str], list[Signer], list[str]]:
    """The signed statement {path: sha256}, the distinct trusted signers, untrusted sig names.

    Signers are distinct people: a key counts once however many files it signed, and a
    certificate counts once per key and once per identity (a renewed certificate for the
    same officer, or an officer's key also present as a certificate, is still one signer).
    """
    sig_dir = f"{where}/{SIGNATURES_DIR}"
    if not sigs:
        raise SignatureMissing(f"{sig_dir}: no signature in the bundle", path=SIGNATURES_DIR)
    statement: dict[str, str] | None = None
    first = ""
    signers: list[Signer] = []
    seen: set[str] = set()
    untrusted: list[tuple[str, str]] = []
    for name in sorted(sigs):
        sig_path = f"{sig_dir}/{name}"
        try:
            parsed = dsse.read(sigs[name])
        except ValueError as exc:
            raise SignatureInvalid(f"{sig_path}: {exc}", path=f"{SIGNATURES_DIR}/{name}") from None
        chain = dsse.certificate_chain(parsed)
        if keyless.is_keyless(parsed):
            if trusted.keyless is None:
                untrusted.append((name, "a Sigstore keyless signature, and no --trusted-root was given"))
                continue
            verifier_, found = keyless.verifier(trusted.keyless, sigs[name])
            try:
                digests, serialization = dsse.verify(verifier_, parsed)
            except keyless.Untrusted as exc:
                untrusted.append((name, str(exc)))
                continue
            except Exception as exc:  # VerificationError as ValueError, InvalidSignature: a bad signature
                raise SignatureInvalid(f"{sig_path}: {exc}", path=f"{SIGNATURES_DIR}/{name}") from None
            fp = keys.fingerprint(found.public_key)
            where_from = f"{trusted.keyless.trusted_root} ({found.issuer})"
            signer = Signer(name.removesuffix(SIGNATURE_SUFFIX), fp, where_from, found.identity)
            ids = {fp, f"id:{found.identity}"}
        elif chain is not None:
            judged = _cert_signer(parsed, chain, trusted, name, sig_path)
            if isinstance(judged, str):
                untrusted.append((name, judged))
                continue
            signer, verifier_ = judged
            try:
                digests, serialization = dsse.verify(verifier_, parsed)
            except Exception as exc:  # InvalidSignature, ValueError: all mean "does not verify"
                detail = f" ({type(exc).__name__}: {exc})" if str(exc) else ""
                raise SignatureInvalid(
                    f"{sig_path}: does not verify under its certificate {signer.identity}{detail}",
                    path=f"{SIGNATURES_DIR}/{name}",
                ) from None
            ids = {signer.fingerprint, f"id:{signer.identity}"}
        else:
            hint = dsse.key_hint(parsed)
            if hint and hint not in trusted.keys:
                untrusted.append((name, f"signed by key {hint[:16]}, which is not a trusted key"))
                continue
            candidates = [trusted.keys[hint]] if hint else list(trusted.keys.values())
            verified = None
            problem: Exception | None = None
            for cand in candidates:
                try:
                    verified = (cand, *dsse.verify(cand.verifier, parsed))
                    break
                except Exception as exc:  # InvalidSignature, ValueError: all mean "does not verify"
                    problem = exc
            if verified is None:
                if not candidates:
                    untrusted.append((name, "signed by a key without a hint, and no key is trusted"))
                    continue
                which = f"trusted key {hint[:16]}" if hint else "any trusted key"
                detail = f" ({type(problem).__name__}: {problem})" if str(problem) else ""
                raise SignatureInvalid(
                    f"{sig_path}: does not verify under {which}{detail}", path=f"{SIGNATURES_DIR}/{name}"
                )
            key, digests, serialization = verified
            signer = Signer(name.removesuffix(SIGNATURE_SUFFIX), key.fingerprint, str(key.path))
            ids = {key.fingerprint}
        _check_serialization(serialization, sig_path)
        # Another officer's signature file, if one existed when this one was made, is not content.
        digests = {p: d for p, d in digests.items() if not p.startswith(SIGNATURES_DIR + "/")}
        if statement is None:
            statement, first = digests, name
        elif digests != statement:
            raise SignatureInvalid(
                f"{sig_path}: signs different contents than {first}", path=f"{SIGNATURES_DIR}/{name}"
            )
        if not ids & seen:
            signers.append(signer)
        seen |= ids
    if len(signers) < require:
        if not signers and untrusted:
            name, why = untrusted[0]
            raise UntrustedKey(f"{sig_dir}/{name}: {why}", path=f"{SIGNATURES_DIR}/{name}")
        raise SignatureMissing(
            f"{sig_dir}: {len(signers)} distinct trusted signature(s), {require} required",
            path=SIGNATURES_DIR,
        )
    assert statement is not None
    return statement, signers, [n for n, _ in untrusted]


def _ignorable(path: str) -> bool:
    """Paths a statement may leave out: signatures (they are checked on their own) and git
    names (refused on disk, so nothing can hide there). This admits signatures made with the
    plain `model_signing sign key` CLI, which ignores the file it writes and, by default, git names."""
    return path == SIGNATURES_DIR or path.startswith(SIGNATURES_DIR + "/") or path in GIT_PATHS


def _check_serialization(ser: Mapping[str, Any], sig_path: str) -> None:
    ok = (
        ser.get("method") == "files"
        and ser.get("hash_type") == dsse.HASH_TYPE
        and not ser.get("allow_symlinks")
        and all(_ignorable(str(p)) for p in ser.get("ignore_paths", []))
    )
    if not ok:
        raise SignatureInvalid(
            f"{sig_path}: signed with settings enclave does not accept ({dict(ser)}); "
            "expected per-file sha256, no symlinks, ignoring only signatures/",
            path=sig_path,
        )


# --- bundle.json --------------------------------------------------------------------


def check_manifest(
    raw: bytes, statement: Mapping[str, str], where: str, now: datetime | None
) -> BundleManifest:
    path = f"{where}/{BUNDLE_JSON}"
    signed = statement.get(BUNDLE_JSON)
    if signed is None:
        raise SignatureInvalid(f"{path}: not covered by the signature", path=BUNDLE_JSON)
    if hashlib.sha256(raw).hexdigest() != signed:
        raise ChangedFile(f"{path}: sha256 differs from the signed statement", path=BUNDLE_JSON)
    manifest = parse_manifest(raw, where)

    seen: set[str] = set()
    for entry in manifest.files:
        _check_listed_path(entry.path, path)
        if entry.path in seen:
            raise UnsafePath(f"{path}: {entry.path!r} is listed twice", path=entry.path)
        seen.add(entry.path)
    # A delta carries only some files: those marked `base` are pinned here (size, sha256, signed
    # through bundle.json's own hash) and must be absent from the tree and the statement.
    listed = {f.path: f.sha256 for f in manifest.carried}
    for f in manifest.from_base:
        if f.path in statement:
            raise UnlistedFile(
                f"{where}/{f.path}: marked as taken from the base release, yet signed as carried", path=f.path
            )
    for ref in [*manifest.models, *manifest.datasets, *manifest.wheels, *manifest.debs]:
        check_rel_path(ref.path, where=path)
    for rel in statement:
        if rel != BUNDLE_JSON:
            _check_listed_path(rel, f"{where}/{SIGNATURES_DIR}")

    for rel in sorted(set(statement) - set(listed) - {BUNDLE_JSON}):
        raise UnlistedFile(f"{where}/{rel}: in the signed statement but not listed in bundle.json", path=rel)
    for rel in sorted(set(listed) - set(statement)):
        raise UnlistedFile(f"{where}/{rel}: listed in bundle.json but not covered by the signature", path=rel)
    for rel, sha in sorted(listed.items()):
        if statement[rel] != sha:
            raise ChangedFile(
                f"{where}/{rel}: bundle.json and the signed statement disagree on sha256", path=rel
            )

    if manifest.expires is not None:
        expires = manifest.expires if manifest.expires.tzinfo else manifest.expires.replace(tzinfo=UTC)
        current = now or datetime.now(UTC)
        current = current if current.tzinfo else current.replace(tzinfo=UTC)
        if current >= expires:
            raise BundleExpired(f"{path}: expired at {expires.isoformat()}", path=BUNDLE_JSON)
    return manifest


def _check_listed_path(rel: str, where: str) -> None:
    check_rel_path(rel, where=where)
    check_not_git_path(rel, where=where)
    if rel == BUNDLE_JSON or rel.split("/", 1)[0] == SIGNATURES_DIR:
        raise UnsafePath(f"{where}: lists {rel!r}, a name reserved for the bundle's own metadata", path=rel)


# --- directories --------------------------------------------------------------------


def read_small(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path}: larger than {limit} bytes; not a bundle's metadata", path=str(path))
    return data


def listed_dirs(listed: Iterable[str]) -> set[str]:
    """The directories a bundle may hold: signatures/ and the parents of listed files.

    Any other directory, even an empty one, is content nobody signed, refused like an
    unlisted file (in a directory and in a tar alike)."""
    dirs = {SIGNATURES_DIR}
    for rel in listed:
        parts = rel.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return dirs


def _is_signature_name(rel: str) -> bool:
    name = rel.removeprefix(SIGNATURES_DIR + "/")
    return "/" not in name and name.endswith(SIGNATURE_SUFFIX) and len(name) > len(SIGNATURE_SUFFIX)


def _verify_dir(
    root: Path,
    trusted: Trust,
    require: int,
    now: datetime | None,
    progress: Progress | None,
    workers: int | None,
) -> VerifyReport:
    where = str(root)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle (a directory, a .tar or the first part of a split tar)")
    entries = walk(root)
    for e in entries:
        check_not_git_path(e.path, where=where)
    files = {e.path: e.size for e in entries if not e.is_dir}
    sig_names: list[str] = []
    for e in entries:
        if e.path.startswith(SIGNATURES_DIR + "/"):
            if e.is_dir or not _is_signature_name(e.path):
                raise UnlistedFile(
                    f"{root / e.path}: only signatures/*.sig files belong in signatures/", path=e.path
                )
            sig_names.append(e.path)
        elif e.path == SIGNATURES_DIR and not e.is_dir:
            raise UnlistedFile(f"{root / e.path}: must be a directory of signatures", path=e.path)
    if BUNDLE_JSON not in files:
        raise MissingFile(f"{root / BUNDLE_JSON}: missing; not a bundle", path=BUNDLE_JSON)

    sigs = {
        p.removeprefix(SIGNATURES_DIR + "/"): read_small(root / p, MAX_SIGNATURE_BYTES) for p in sig_names
    }
    statement, signers, untrusted = check_signatures(sigs, trusted, require, where)
    raw = read_small(root / BUNDLE_JSON, MAX_MANIFEST_BYTES)
    manifest = check_manifest(raw, statement, where, now)
    listed = {f.path: f for f in manifest.carried}

    data_files = {p: s for p, s in files.items() if p != BUNDLE_JSON and p not in sig_names}
    for rel in sorted(data_files):
        if rel not in listed:
            raise UnlistedFile(f"{root / rel}: not listed in bundle.json", path=rel)
    needed = listed_dirs(listed)
    for e in entries:
        if e.is_dir and e.path not in needed:
            raise UnlistedFile(f"{root / e.path}: a directory holding nothing bundle.json lists", path=e.path)
    for rel in sorted(listed):
        if rel not in data_files:
            raise MissingFile(f"{root / rel}: listed in bundle.json but missing", path=rel)
    for rel, entry in sorted(listed.items()):
        if data_files[rel] != entry.size:
            raise ChangedFile(
                f"{root / rel}: size {data_files[rel]} differs from bundle.json ({entry.size})", path=rel
            )
    hashed = hash_files(root, sorted(listed), workers=workers, progress=progress, sizes=data_files)
    for rel, entry in sorted(listed.items()):
        sha, size = hashed[rel]
        if size != entry.size or sha != entry.sha256 or sha != statement[rel]:
            raise ChangedFile(f"{root / rel}: sha256 differs from bundle.json and the signature", path=rel)
    return VerifyReport(
        manifest=manifest,
        signers=signers,
        source=where,
        kind="directory",
        files=len(listed),
        bytes=sum(e.size for e in listed.values()),
        untrusted_signatures=untrusted,
        required_signatures=require,
        manifest_sha256=statement[BUNDLE_JSON],
        signature_files=sigs,
    )


# --- tars and their parts -----------------------------------------------------------


def resolve_parts(paths: Sequence[Path | str]) -> list[Path]:
    """The files of a packed bundle, in order: one .tar, or FILE.tar.000, .001, ... (no gaps)."""
    names: list[str] = []
    for p in paths:
        s = str(p)
        if has_magic(s) and not os.path.exists(s):
            matched = sorted(glob(s))
            if not matched:
                raise BundleError(f"{s}: matches no file")
            names.extend(matched)
        else:
            names.append(s)
    if len(names) == 1:
        only = Path(names[0])
        m = PART_RE.match(only.name)
        if m is None:
            return [only]
        if int(m["num"]) != 0:
            raise BundleError(f"{only}: give the first part ({m['stem']}.{'0' * len(m['num'])})")
        found = [only]
        width = len(m["num"])
        while (nxt := only.with_name(f"{m['stem']}.{len(found):0{width}d}")).exists():
            found.append(nxt)
        return found
    parsed = []
    for n in names:
        m = PART_RE.match(Path(n).name)
        if m is None:
            raise BundleError(f"{n}: not a part of a split bundle (expected NAME.000, NAME.001, ...)")
        parsed.append((int(m["num"]), str(Path(n).with_name(m["stem"])), Path(n)))
    parsed.sort()
    stems = {stem for _, stem, _ in parsed}
    if len(stems) != 1:
        raise BundleError(f"parts of different bundles given: {sorted(stems)}")
    for i, (num, _, path) in enumerate(parsed):
        if num != i:
            raise BundleError(f"{path}: part {i:03d} is missing before it")
    return [p for _, _, p in parsed]


class ConcatReader(io.RawIOBase):
    """The parts of a split tar as one seekable file, one part open at a time.

    Reads are always full (tarfile treats a short read as a truncated archive) and use
    pread, so the position is ours alone. A part that shrank after it was listed is an
    error, not a silent end of the stream.
    """

    def __init__(self, parts: Sequence[Path]) -> None:
        super().__init__()
        self._parts = list(parts)
        self._starts: list[int] = []
        total = 0
        for p in self._parts:
            self._starts.append(total)
            total += p.stat().st_size
        self.total = total
        self._pos = 0
        self._open_index = -1
        self._fd = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.total}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _fd_for(self, index: int) -> int:
        if index != self._open_index:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._fd = os.open(self._parts[index], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            self._open_index = index
        return self._fd

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        got = 0
        while got < len(view) and self._pos < self.total:
            index = bisect.bisect_right(self._starts, self._pos) - 1
            end = self._starts[index + 1] if index + 1 < len(self._starts) else self.total
            want = min(len(view) - got, end - self._pos)
            n = os.preadv(self._fd_for(index), [view[got : got + want]], self._pos - self._starts[index])
            if n <= 0:
                raise BundleError(f"{self._parts[index]}: shorter than when verification began")
            got += n
            self._pos += n
        return got

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


def check_member(member: tarfile.TarInfo, where: str) -> None:
    """A tar member's header, judged before any of its content is read."""
    name = member.name
    if name.startswith("/") or name.startswith("./") or "\\" in name:
        raise UnsafePath(f"{where}: member {name!r} has an absolute or non-canonical name", path=name)
    check_rel_path(name, where=f"{where}: member")
    check_not_git_path(name, where=f"{where}: member")
    if member.issym():
        raise SymlinkFound(f"{where}: member {name!r} is a symlink (to {member.linkname!r})", path=name)
    if member.islnk():
        raise SymlinkFound(f"{where}: member {name!r} is a hard link (to {member.linkname!r})", path=name)
    if member.ischr() or member.isblk() or member.isfifo():
        raise SpecialFile(f"{where}: member {name!r} is a device file or FIFO", path=name)
    if member.issparse() or not (member.isreg() or member.isdir()):
        raise SpecialFile(f"{where}: member {name!r} is not a regular file or directory", path=name)
    if any(k.startswith("GNU.sparse") for k in member.pax_headers):
        raise SpecialFile(f"{where}: member {name!r} is a sparse file", path=name)


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo, limit: int, where: str) -> bytes:
    if member.size > limit:
        raise BundleError(f"{where}: member {member.name!r} is larger than {limit} bytes", path=member.name)
    fh = tf.extractfile(member)
    assert fh is not None
    return fh.read()


def _stream_tar(
    parts: list[Path],
    trusted: Trust,
    require: int,
    now: datetime | None,
    progress: Progress | None,
    extract_to: Path | None,
) -> VerifyReport:
    where = str(parts[0])
    reader = ConcatReader(parts)
    try:
        try:
            tf = tarfile.open(fileobj=reader, mode="r:")  # noqa: SIM115
        except tarfile.TarError as exc:
            raise BundleError(f"{where}: not a plain tar ({exc})") from None
        with tf:
            return _walk_stream(tf, reader, parts, where, trusted, require, now, progress, extract_to)
    except tarfile.TarError as exc:
        raise BundleError(f"{where}: corrupt tar ({exc})") from None
    finally:
        reader.close()


def _walk_stream(
    tf: tarfile.TarFile,
    reader: ConcatReader,
    parts: list[Path],
    where: str,
    trusted: Trust,
    require: int,
    now: datetime | None,
    progress: Progress | None,
    extract_to: Path | None,
) -> VerifyReport:
    seen: set[str] = set()

    def next_member() -> tarfile.TarInfo | None:
        tf.members.clear()  # we never look back; a bundle of many files stays small in memory
        member = tf.next()
        if member is not None:
            check_member(member, where)
            if member.name in seen:
                raise UnsafePath(f"{where}: member {member.name!r} appears twice", path=member.name)
            seen.add(member.name)
        return member

    first = next_member()
    if first is None or first.name != BUNDLE_JSON or not first.isreg():
        got = first.name if first is not None else "nothing"
        raise BundleError(
            f"{where}: first member is {got!r}, not {BUNDLE_JSON} (not made by `enclave bundle pack`)",
            path=got,
        )
    raw = _read_member(tf, first, MAX_MANIFEST_BYTES, where)
    sigs: dict[str, bytes] = {}
    member = next_member()
    while member is not None and (
        member.name == SIGNATURES_DIR or member.name.startswith(SIGNATURES_DIR + "/")
    ):
        if member.name == SIGNATURES_DIR:
            if not member.isdir():
                raise UnlistedFile(f"{where}: member {member.name!r} must be a directory", path=member.name)
        elif member.isdir() or not _is_signature_name(member.name):
            raise UnlistedFile(
                f"{where}: member {member.name!r}: only signatures/*.sig belong in signatures/",
                path=member.name,
            )
        else:
            sigs[member.name.removeprefix(SIGNATURES_DIR + "/")] = _read_member(
                tf, member, MAX_SIGNATURE_BYTES, where
            )
        member = next_member()

    statement, signers, untrusted = check_signatures(sigs, trusted, require, where)
    manifest = check_manifest(raw, statement, where, now)
    listed = {f.path: f for f in manifest.carried}
    total = sum(e.size for e in listed.values())
    done = 0
    if extract_to is not None:
        (extract_to / BUNDLE_JSON).write_bytes(raw)
        for name, data in sigs.items():
            (extract_to / SIGNATURES_DIR).mkdir(exist_ok=True)
            (extract_to / SIGNATURES_DIR / name).write_bytes(data)

    verified: set[str] = set()
    needed = listed_dirs(listed)
    while member is not None:
        rel = member.name
        if member.isdir():
            if rel.split("/", 1)[0] == SIGNATURES_DIR:
                raise UnlistedFile(
                    f"{where}: member {rel!r}: signatures/ must come right after bundle.json", path=rel
                )
            if rel not in needed:
                raise UnlistedFile(
                    f"{where}: member {rel!r} is a directory holding nothing bundle.json lists", path=rel
                )
            if extract_to is not None:
                (extract_to / rel).mkdir(parents=True, exist_ok=True)
            member = next_member()
            continue
        entry = listed.get(rel)
        if entry is None:
            raise UnlistedFile(f"{where}: member {rel!r} is not listed in bundle.json", path=rel)
        if member.size != entry.size:
            raise ChangedFile(
                f"{where}: member {rel!r} has size {member.size}, bundle.json says {entry.size}", path=rel
            )
        fh = tf.extractfile(member)
        assert fh is not None
        h = hashlib.sha256()
        out = None
        tmp: Path | None = None
        if extract_to is not None:
            target = extract_to / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.partial")
            out = open(tmp, "xb")  # noqa: SIM115
        try:
            while chunk := fh.read(STREAM_CHUNK):
                h.update(chunk)
                if out is not None:
                    out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            if h.hexdigest() != entry.sha256 or h.hexdigest() != statement[rel]:
                raise ChangedFile(
                    f"{where}: member {rel!r}: sha256 differs from bundle.json and the signature", path=rel
                )
        except BaseException:
            if out is not None:
                out.close()
                assert tmp is not None
                tmp.unlink(missing_ok=True)
            raise
        if out is not None:
            out.close()
            assert tmp is not None
            os.replace(tmp, extract_to / rel)  # type: ignore[operator]
        verified.add(rel)
        member = next_member()

    for rel in sorted(listed):
        if rel not in verified:
            raise MissingFile(f"{where}: {rel!r} is listed in bundle.json but not in the tar", path=rel)
    _check_trailing(parts, tf.offset, where)
    return VerifyReport(
        manifest=manifest,
        signers=signers,
        source=where,
        kind="tar",
        parts=len(parts),
        files=len(listed),
        bytes=total,
        untrusted_signatures=untrusted,
        required_signatures=require,
        manifest_sha256=statement[BUNDLE_JSON],
        signature_files=sigs,
    )


def _check_trailing(parts: list[Path], offset: int, where: str) -> None:
    """After the end-of-archive marker only zero padding may follow: no data rides along unread."""
    with ConcatReader(parts) as rest:
        rest.seek(offset)
        while chunk := rest.read(STREAM_CHUNK):
            if chunk.strip(b"\0"):
                raise BundleError(f"{where}: data after the end of the archive (offset {offset})")


# --- entry points -------------------------------------------------------------------


def source_parts(path: Path | str | Sequence[Path | str]) -> list[Path]:
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths:
        raise UsageError("no bundle given")
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return [Path(paths[0])]
    parts = resolve_parts(paths)
    for p in parts:
        if p.is_symlink() or not p.is_file():
            raise BundleError(f"{p}: no such bundle (a directory, a .tar or the first part of a split tar)")
    return parts


def verify_bundle(
    path: Path | str | Sequence[Path | str],
    trusted_keys: Iterable[Path | str] | Trust,
    *,
    trust_cas: Iterable[Path | str] = (),
    require_signatures: int = 1,
    now: datetime | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> VerifyReport:
    """Verify a bundle directory, tar, or split parts; raise the typed error of the first refusal."""
    if require_signatures < 1:
        raise UsageError(f"--require-signatures must be at least 1, not {require_signatures}")
    started = time.monotonic()
    trusted = load_trusted(trusted_keys, trust_cas, now=now)
    parts = source_parts(path)
    try:
        if parts[0].is_dir():
            report = _verify_dir(parts[0], trusted, require_signatures, now, progress, workers)
        else:
            report = _stream_tar(parts, trusted, require_signatures, now, progress, None)
    except OSError as exc:  # unreadable media, a part removed mid-read: one line, not a traceback
        raise BundleError(f"{exc.filename or parts[0]}: {exc.strerror or exc}") from None
    report.seconds = time.monotonic() - started
    return report


def verified_bundle_dir(
    path: Path | str | Sequence[Path | str],
    trusted_keys: Iterable[Path | str] | Trust,
    staging_dir: Path | str,
    *,
    trust_cas: Iterable[Path | str] = (),
    require_signatures: int = 1,
    now: datetime | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> tuple[Path, VerifyReport]:
    """A verified bundle directory for the installer.

    A directory is verified in place and returned as is. A tar (or its parts) is
    extracted into `staging_dir/NAME-VERSION` while it is verified: each member is written
    to a temporary name and renamed only once its sha256 matches, and on any refusal the
    whole extraction is removed, so nothing unverified is left behind. An existing
    `staging_dir/NAME-VERSION` is replaced only after the new one verified.
    """
    if require_signatures < 1:
        raise UsageError(f"--require-signatures must be at least 1, not {require_signatures}")
    started = time.monotonic()
    trusted = load_trusted(trusted_keys, trust_cas, now=now)
    parts = source_parts(path)
    if parts[0].is_dir():
        try:
            report = _verify_dir(parts[0], trusted, require_signatures, now, progress, workers)
        except OSError as exc:
            raise BundleError(f"{exc.filename or parts[0]}: {exc.strerror or exc}") from None
        report.seconds = time.monotonic() - started
        return parts[0], report
    staging = Path(staging_dir)
    staging.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=staging))
    try:
        report = _stream_tar(parts, trusted, require_signatures, now, progress, incoming)
        final = staging / report.manifest.release_name
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=staging))
            os.replace(final, old / "x")
            shutil.rmtree(old)
        os.replace(incoming, final)
    except OSError as exc:
        shutil.rmtree(incoming, ignore_errors=True)
        raise BundleError(f"{parts[0]}: cannot extract into {staging}: {exc}") from None
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    report.seconds = time.monotonic() - started
    return final, report


def error_json(exc: EnclaveError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": type(exc).__name__,
        "exit_code": exc.exit_code,
        "message": exc.message,
        "path": exc.path,
    }
