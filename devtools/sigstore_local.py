"""A local Sigstore instance, in-process, for tests: a Fulcio CA, a CT log and a Rekor log.

Real Sigstore signing asks Fulcio (over the network, with an OIDC token) for a short-lived
certificate and Rekor for a transparency-log entry. Neither is reachable here, so this
module plays both, with real keys and the real wire formats, and writes a
`trusted_root.json` naming them. What it produces is what sigstore-python's `Verifier`
checks offline, step by step:

- the leaf: e-mail SAN (critical, empty subject, as Fulcio issues them), digitalSignature,
  code-signing EKU, the OIDC issuer extensions (1.3.6.1.4.1.57264.1.1 raw, .1.8 DER
  UTF8String), and an embedded SCT from the CT log key over the precertificate TBS (RFC 6962);
- a `dsse` 0.0.1 Rekor entry for the envelope, with a signed entry timestamp (the inclusion
  promise over the RFC 8785 canonical entry) and an inclusion proof in a one-leaf tree
  whose root is in a checkpoint signed by the same log key (a C2SP signed note).

`serve()` puts the same Fulcio and Rekor behind loopback HTTP in sigstore's v2/v1 API
shapes, so `enclave bundle create --sigstore` signs through sigstore-python's real client
against it. Nothing here is used by enclave itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from devtools.pki import Issued, issue

OIDC_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
TRUSTED_ROOT = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_id(key: ec.EllipticCurvePrivateKey) -> bytes:
    return hashlib.sha256(_spki(key)).digest()


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _der_utf8(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 128
    return bytes([0x0C, len(raw)]) + raw


def _der_octets(raw: bytes) -> bytes:
    n = len(raw)
    if n < 128:
        return bytes([0x04, n]) + raw
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x04, 0x80 | len(size)]) + size + raw


def _pae(payload_type: str, payload: bytes) -> bytes:
    return f"DSSEv1 {len(payload_type)} {payload_type} {len(payload)} ".encode() + payload


@dataclass
class LocalSigstore:
    """One Fulcio root, one CT log key, one Rekor key; `sign_dsse` plays the signing client."""

    name: str = "local"
    fulcio: Issued = field(init=False)
    ct_key: ec.EllipticCurvePrivateKey = field(init=False)
    rekor_key: ec.EllipticCurvePrivateKey = field(init=False)

    def __post_init__(self) -> None:
        self.fulcio = issue(f"{self.name} fulcio root", ca=True)
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())

    # --- the trusted root the host pins -------------------------------------------------

    def trusted_root(self) -> dict[str, Any]:
        start = {"start": "2020-01-01T00:00:00Z"}

        def log(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": _b64(_spki(key)),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": start,
                },
                "logId": {"keyId": _b64(_key_id(key))},
            }

        der = self.fulcio.cert.public_bytes(serialization.Encoding.DER)
        return {
            "mediaType": TRUSTED_ROOT,
            "tlogs": [log(self.rekor_key, f"https://rekor.{self.name}.test")],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "enclave test", "commonName": f"{self.name} fulcio"},
                    "uri": f"https://fulcio.{self.name}.test",
                    "certChain": {"certificates": [{"rawBytes": _b64(der)}]},
                    "validFor": start,
                }
            ],
            "ctlogs": [log(self.ct_key, f"https://ctfe.{self.name}.test")],
            "timestampAuthorities": [],
        }

    def client_trust_config(self, base_url: str) -> dict[str, Any]:
        """What `bundle create --sigstore-trust-config` reads: where to sign, and the root."""
        start = {"start": "2020-01-01T00:00:00Z"}

        def service(url: str, version: int = 1) -> dict[str, Any]:
            return {"url": url, "majorApiVersion": version, "validFor": start, "operator": "enclave test"}

        return {
            "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
            "trustedRoot": self.trusted_root(),
            "signingConfig": {
                "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                "caUrls": [service(f"{base_url}/fulcio")],
                "oidcUrls": [service(f"{base_url}/oauth2")],
                "rekorTlogUrls": [service(f"{base_url}/rekor")],
                "tsaUrls": [],
                "rekorTlogConfig": {"selector": "ANY"},
                "tsaConfig": {"selector": "ANY"},
            },
        }

    def write_trusted_root(self, path: Path) -> Path:
        path.write_text(json.dumps(self.trusted_root(), indent=2))
        return path

    # --- Fulcio: a short-lived leaf with an embedded SCT ------------------------------------

    def leaf(
        self, key: ec.EllipticCurvePrivateKey, email: str, issuer: str, now: datetime
    ) -> x509.Certificate:
        return self.leaf_for(key.public_key(), email, issuer, now)

    def leaf_for(self, public_key: Any, email: str, issuer: str, now: datetime) -> x509.Certificate:
        serial = x509.random_serial_number()

        def build(sct_list: bytes) -> x509.Certificate:
            ca = self.fulcio
            b = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(ca.cert.subject)
                .public_key(public_key)
                .serial_number(serial)
                .not_valid_before(now - timedelta(seconds=30))
                .not_valid_after(now + timedelta(minutes=10))
                .add_extension(
                    x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
                )
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False)
                .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), True)
                .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_V1, issuer.encode()), False)
                .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_V2, _der_utf8(issuer)), False)
                .add_extension(x509.UnrecognizedExtension(SCT_LIST, _der_octets(sct_list)), False)
            )
            return b.sign(ca.key, hashes.SHA256())

        placeholder = self._sct_list(b"\0" * 70, 0)
        tbs = build(placeholder).tbs_precertificate_bytes  # the TBS without the SCT extension
        timestamp = int(now.timestamp() * 1000)
        issuer_key_hash = hashlib.sha256(
            self.fulcio.cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).digest()
        signed = struct.pack("!BBQH", 0, 0, timestamp, 1) + issuer_key_hash
        signed += len(tbs).to_bytes(3, "big") + tbs + struct.pack("!H", 0)
        return build(self._sct_list(_sign(self.ct_key, signed), timestamp))

    def _sct_list(self, signature: bytes, timestamp: int) -> bytes:
        sct = struct.pack("!B", 0) + _key_id(self.ct_key) + struct.pack("!QH", timestamp, 0)
        sct += struct.pack("!BBH", 4, 3, len(signature)) + signature  # sha256, ecdsa
        one = struct.pack("!H", len(sct)) + sct
        return struct.pack("!H", len(one)) + one

    # --- Rekor: a dsse entry, its promise, its inclusion proof -------------------------------

    def tlog_entry(self, cert: x509.Certificate, payload: bytes, sig: bytes, now: datetime) -> dict[str, Any]:
        pem = cert.public_bytes(serialization.Encoding.PEM)
        body = json.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "envelopeHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(payload + sig).hexdigest(),
                    },
                    "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
                    "signatures": [{"signature": _b64(sig), "verifier": _b64(pem)}],
                },
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        integrated = int(now.timestamp())
        log_id = _key_id(self.rekor_key)
        canonical = json.dumps(
            {"body": _b64(body), "integratedTime": integrated, "logID": log_id.hex(), "logIndex": 0},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        root = hashlib.sha256(b"\x00" + body).digest()  # a one-leaf tree: the root is the leaf hash
        origin = f"rekor.{self.name}.test - 1"
        note = f"{origin}\n1\n{_b64(root)}\n"
        note_sig = _b64(log_id[:4] + _sign(self.rekor_key, note.encode()))
        return {
            "logIndex": "0",
            "logId": {"keyId": _b64(log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": str(integrated),
            "inclusionPromise": {"signedEntryTimestamp": _b64(_sign(self.rekor_key, canonical))},
            "inclusionProof": {
                "logIndex": "0",
                "rootHash": _b64(root),
                "treeSize": "1",
                "hashes": [],
                "checkpoint": {"envelope": f"{note}\n\u2014 rekor.{self.name}.test {note_sig}\n"},
            },
            "canonicalizedBody": _b64(body),
        }

    # --- the signing client ---------------------------------------------------------------

    def sign_dsse(
        self, payload: bytes, payload_type: str, *, email: str, issuer: str, now: datetime | None = None
    ) -> bytes:
        """A sigstore bundle (v0.3) for a DSSE envelope over PAYLOAD, as sigstore-python writes it."""
        now = now or datetime.now(UTC).replace(microsecond=0)
        key = ec.generate_private_key(ec.SECP256R1())  # the ephemeral key, as a keyless client makes
        cert = self.leaf(key, email, issuer, now)
        sig = _sign(key, _pae(payload_type, payload))
        bundle = {
            "mediaType": BUNDLE_V03,
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [self.tlog_entry(cert, payload, sig, now)],
            },
            "dsseEnvelope": {
                "payload": _b64(payload),
                "payloadType": payload_type,
                "signatures": [{"sig": _b64(sig)}],
            },
        }
        return json.dumps(bundle).encode()


class _Handler(BaseHTTPRequestHandler):
    instance: LocalSigstore

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, code: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        inst = self.instance
        now = datetime.now(UTC).replace(microsecond=0)
        if self.path.endswith("/api/v2/signingCert"):
            # Fulcio: the identity comes from the bearer token's claims (unsigned here), the
            # key from the CSR; the answer is the leaf (with its SCT) and the root.
            token = self.headers["Authorization"].removeprefix("Bearer ")
            claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
            csr = x509.load_pem_x509_csr(base64.b64decode(req["certificateSigningRequest"]))
            leaf = inst.leaf_for(csr.public_key(), claims["email"], claims["iss"], now)
            pems = [c.public_bytes(serialization.Encoding.PEM).decode() for c in (leaf, inst.fulcio.cert)]
            self._reply(201, {"signedCertificateEmbeddedSct": {"chain": {"certificates": pems}}})
        elif self.path.endswith("/api/v1/log/entries"):
            # Rekor v1: a dsse entry for the proposed envelope, in the API's own shape.
            proposed = req["spec"]["proposedContent"]
            envelope = json.loads(proposed["envelope"])
            cert = x509.load_pem_x509_certificate(base64.b64decode(proposed["verifiers"][0]))
            payload = base64.b64decode(envelope["payload"])
            sig = base64.b64decode(envelope["signatures"][0]["sig"])
            e = inst.tlog_entry(cert, payload, sig, now)
            proof = e["inclusionProof"]
            entry = {
                "body": e["canonicalizedBody"],
                "integratedTime": int(e["integratedTime"]),
                "logID": base64.b64decode(e["logId"]["keyId"]).hex(),
                "logIndex": 0,
                "verification": {
                    "inclusionProof": {
                        "logIndex": 0,
                        "rootHash": base64.b64decode(proof["rootHash"]).hex(),
                        "treeSize": 1,
                        "hashes": [],
                        "checkpoint": proof["checkpoint"]["envelope"],
                    },
                    "signedEntryTimestamp": e["inclusionPromise"]["signedEntryTimestamp"],
                },
            }
            self._reply(201, {hashlib.sha256(base64.b64decode(e["canonicalizedBody"])).hexdigest(): entry})
        else:
            self._reply(404, {"message": f"no such endpoint {self.path}"})


@contextlib.contextmanager
def serve(instance: LocalSigstore) -> Iterator[str]:
    """Fulcio and Rekor of INSTANCE over loopback HTTP; yields the base URL for a trust config."""
    handler = type("Handler", (_Handler,), {"instance": instance})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def model_signing_payload(manifest: Any) -> bytes:
    """The in-toto statement bytes model_signing's Sigstore signer hands sigstore-python."""
    from google.protobuf import json_format

    from appliance.bundle import dsse

    signing = dsse._load("_signing.signing")
    return json_format.MessageToJson(signing.Payload(manifest).statement.pb).encode()
