#!/usr/bin/env python3
"""Known-answer-test generator for the WireGuard handshake.

Produces handshake_kat.json next to this script: complete handshake
initiation/response messages (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, WireGuard
whitepaper section 5.4), derived transport keys, a first transport message and
a cookie reply (section 5.4.7), all from fixed, public, clearly non-secret
inputs.

This script is written from the whitepaper alone and is deliberately
independent of the Rust implementation in this repository; it shares no code
with it. It uses only the Python standard library and the `cryptography`
package (ChaCha20Poly1305, X25519). XChaCha20Poly1305 is built here from a
pure-Python HChaCha20, self-checked against draft-irtf-cfrg-xchacha-03 2.2.1.

Usage:
    python3 gen_handshake_kat.py           # (re)write handshake_kat.json
    python3 gen_handshake_kat.py --check   # regenerate, compare, exit 1 on mismatch
"""

import hashlib
import hmac
import json
import os
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handshake_kat.json")

# ---------------------------------------------------------------- primitives


def HASH(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def HMAC(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def MAC(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def KDF(n: int, key: bytes, data: bytes) -> list:
    """KDF_n from the whitepaper: tau0 = HMAC(key, input); tau_i = HMAC(tau0, tau_{i-1} || i)."""
    tau0 = HMAC(key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = HMAC(tau0, prev + bytes([i]))
        out.append(prev)
    return out


def AEAD(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    nonce = b"\x00" * 4 + struct.pack("<Q", counter)
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def AEAD_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    nonce = b"\x00" * 4 + struct.pack("<Q", counter)
    return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, ad)


def clamp(k: bytes) -> bytes:
    b = bytearray(k)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def DH_PUBKEY(priv: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).public_key().public_bytes_raw()


def DH(priv: bytes, pub: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(priv).exchange(X25519PublicKey.from_public_bytes(pub))


# ------------------------------------------------------ HChaCha20 / XAEAD


def _rotl(v: int, c: int) -> int:
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def _quarter(s: list, a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    assert len(key) == 32 and len(nonce16) == 16
    s = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    s += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        _quarter(s, 0, 4, 8, 12); _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14); _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15); _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13); _quarter(s, 3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def XAEAD(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    assert len(nonce24) == 24
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(b"\x00" * 4 + nonce24[16:], plaintext, ad)


def self_check_hchacha20() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    expected = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert hchacha20(key, nonce).hex() == expected, "HChaCha20 self-check failed"


def self_check_initial_state() -> None:
    # Widely published constants: HASH(CONSTRUCTION) and HASH(that || IDENTIFIER).
    c = HASH(CONSTRUCTION)
    assert c.hex() == "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
    assert HASH(c + IDENTIFIER).hex() == "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"


# ----------------------------------------------------------------- handshake


def seed(label: str, n: int = 32) -> bytes:
    """Fixed, public, non-secret test input derived from a label."""
    return hashlib.blake2s(label.encode()).digest()[:n]


def tai64n(unix_seconds: int, nanoseconds: int) -> bytes:
    return struct.pack(">QI", (1 << 62) + 10 + unix_seconds, nanoseconds)


def add_macs(body: bytes, receiver_static_pub: bytes, cookie) -> bytes:
    mac1 = MAC(HASH(LABEL_MAC1 + receiver_static_pub), body)
    mac2 = MAC(cookie, body + mac1) if cookie is not None else b"\x00" * 16
    return body + mac1 + mac2


def handshake(s_i: bytes, s_r: bytes, e_i: bytes, e_r: bytes, psk: bytes, ts: bytes,
              idx_i: int, idx_r: int, cookie) -> dict:
    S_i_pub, S_r_pub = DH_PUBKEY(s_i), DH_PUBKEY(s_r)
    E_i_pub, E_r_pub = DH_PUBKEY(e_i), DH_PUBKEY(e_r)

    # --- initiator -> responder: handshake initiation
    C = HASH(CONSTRUCTION)
    H = HASH(C + IDENTIFIER)
    H = HASH(H + S_r_pub)
    (C,) = KDF(1, C, E_i_pub)
    H = HASH(H + E_i_pub)
    C, k = KDF(2, C, DH(e_i, S_r_pub))
    enc_static = AEAD(k, 0, S_i_pub, H)
    H = HASH(H + enc_static)
    C, k = KDF(2, C, DH(s_i, S_r_pub))
    enc_ts = AEAD(k, 0, ts, H)
    H = HASH(H + enc_ts)
    body = struct.pack("<B3xI", 1, idx_i) + E_i_pub + enc_static + enc_ts
    initiation = add_macs(body, S_r_pub, cookie)
    assert len(initiation) == 148

    # --- responder: consume the initiation independently (sanity check)
    rC = HASH(CONSTRUCTION)
    rH = HASH(HASH(rC + IDENTIFIER) + S_r_pub)
    (rC,) = KDF(1, rC, initiation[8:40])
    rH = HASH(rH + initiation[8:40])
    rC, k = KDF(2, rC, DH(s_r, initiation[8:40]))
    assert AEAD_open(k, 0, initiation[40:88], rH) == S_i_pub
    rH = HASH(rH + initiation[40:88])
    rC, k = KDF(2, rC, DH(s_r, S_i_pub))
    assert AEAD_open(k, 0, initiation[88:116], rH) == ts
    rH = HASH(rH + initiation[88:116])
    assert (rC, rH) == (C, H)

    # --- responder -> initiator: handshake response
    (C,) = KDF(1, C, E_r_pub)
    H = HASH(H + E_r_pub)
    (C,) = KDF(1, C, DH(e_r, E_i_pub))
    (C,) = KDF(1, C, DH(e_r, S_i_pub))
    C, tau, k = KDF(3, C, psk)
    H = HASH(H + tau)
    enc_empty = AEAD(k, 0, b"", H)
    H = HASH(H + enc_empty)
    body = struct.pack("<B3xII", 2, idx_r, idx_i) + E_r_pub + enc_empty
    response = add_macs(body, S_i_pub, None)
    assert len(response) == 92

    # initiator's view of the response DH terms must agree with the responder's
    assert DH(e_i, E_r_pub) == DH(e_r, E_i_pub) and DH(s_i, E_r_pub) == DH(e_r, S_i_pub)

    # --- transport keys (initiator's perspective; responder's are swapped)
    send_i, recv_i = KDF(2, C, b"")

    # --- first transport message from the initiator
    pt = b"kat transport packet"
    assert len(pt) == 20
    pt += b"\x00" * (-len(pt) % 16)
    counter = 0
    transport = struct.pack("<B3xIQ", 4, idx_r, counter) + AEAD(send_i, counter, pt, b"")

    return {
        "initiator_static_private": s_i.hex(), "initiator_static_public": S_i_pub.hex(),
        "responder_static_private": s_r.hex(), "responder_static_public": S_r_pub.hex(),
        "initiator_ephemeral_private": e_i.hex(), "responder_ephemeral_private": e_r.hex(),
        "preshared_key": psk.hex(),
        "timestamp": ts.hex(),
        "initiator_index": idx_i, "responder_index": idx_r,
        "cookie": cookie.hex() if cookie is not None else None,
        # MAC1 keys: the initiation is keyed by the responder's static public key
        # (mac1_key), a cookie reply to it is encrypted under cookie_key.
        "mac1_key": HASH(LABEL_MAC1 + S_r_pub).hex(),
        "cookie_key": HASH(LABEL_COOKIE + S_r_pub).hex(),
        "initiation": initiation.hex(), "response": response.hex(),
        "initiator_send_key": send_i.hex(), "initiator_recv_key": recv_i.hex(),
        "first_transport": {"counter": counter, "plaintext": pt.hex(), "message": transport.hex()},
    }


def cookie_reply(responder_static_pub: bytes, cookie_secret: bytes, source: bytes,
                 nonce: bytes, receiver_index: int, mac1: bytes) -> dict:
    cookie = MAC(cookie_secret, source)
    enc_cookie = XAEAD(HASH(LABEL_COOKIE + responder_static_pub), nonce, cookie, mac1)
    msg = struct.pack("<B3xI", 3, receiver_index) + nonce + enc_cookie
    assert len(msg) == 64
    return {
        "responder_static_public": responder_static_pub.hex(), "cookie_secret": cookie_secret.hex(),
        "source_bytes": source.hex(), "nonce": nonce.hex(), "receiver_index": receiver_index,
        "mac1": mac1.hex(), "cookie": cookie.hex(), "message": msg.hex(),
    }


def generate() -> dict:
    self_check_hchacha20()
    self_check_initial_state()
    base = dict(
        s_i=clamp(seed("kat-initiator-static")), s_r=clamp(seed("kat-responder-static")),
        e_i=clamp(seed("kat-initiator-ephemeral")), e_r=clamp(seed("kat-responder-ephemeral")),
        ts=tai64n(1767225600, 0x01000000 * 3), idx_r=0x5EED0002,
    )
    no_psk = handshake(psk=b"\x00" * 32, idx_i=0x5EED0001, cookie=None, **base)
    with_psk = handshake(psk=seed("kat-preshared-key"), idx_i=0x5EED0011, cookie=None, **base)

    # Responder under load answers the no-psk initiation with a cookie reply.
    init = bytes.fromhex(no_psk["initiation"])
    source = bytes([192, 0, 2, 1]) + struct.pack(">H", 51820)
    reply = cookie_reply(DH_PUBKEY(base["s_r"]), seed("kat-cookie-secret"), source,
                         seed("kat-cookie-nonce", 24), no_psk["initiator_index"], init[116:132])
    with_cookie = handshake(psk=b"\x00" * 32, idx_i=0x5EED0021,
                            cookie=bytes.fromhex(reply["cookie"]), **base)

    cases = []
    for name, case in (("no-psk", no_psk), ("with-psk", with_psk), ("with-cookie", with_cookie)):
        cases.append({"name": name, **case})
    return {
        "description": "WireGuard handshake known-answer tests (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, "
                       "whitepaper 5.4), generated by tests/vectors/gen_handshake_kat.py independently "
                       "of the Rust code. Inputs are fixed public test values, not secrets. Private keys "
                       "are stored already clamped. Messages include mac1/mac2; transport keys are from "
                       "the initiator's view (responder: send=initiator_recv_key, recv=initiator_send_key).",
        "cases": cases,
        "cookie_reply": reply,
    }


def main() -> int:
    text = json.dumps(generate(), indent=2) + "\n"
    if "--check" in sys.argv[1:]:
        try:
            with open(OUT_PATH) as f:
                on_disk = json.load(f)
        except (OSError, ValueError) as e:
            print(f"cannot read {OUT_PATH}: {e}", file=sys.stderr)
            return 1
        if on_disk != json.loads(text):
            print(f"MISMATCH: {OUT_PATH} differs from regenerated vectors", file=sys.stderr)
            return 1
        print(f"OK: {OUT_PATH} matches regenerated vectors")
        return 0
    with open(OUT_PATH, "w") as f:
        f.write(text)
    print(f"wrote {OUT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
