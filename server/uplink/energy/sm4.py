"""SM4 (GB/T 32907-2016) through `cryptography`: the only module that imports it for the energy uplink.

    sm4_ecb_encrypt_hex(key_hex, "123.45")      # variant A: each dataValue, PKCS#7 padded, hex
    sm4_ecb_decrypt_hex(key_hex, cipher_hex)    # the simulator's side; raises Sm4Error
    sm4_cbc_encrypt_hex(key_hex, iv_hex, text)  # variant B: the requestAK password
    sm4_block_encrypt(key, block)               # one raw block, for the standard's test vector

Every failure (a bad key, bad hex, bad padding) becomes `Sm4Error`.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class Sm4Error(ValueError):
    """SM4 input that cannot be used: a key or IV of the wrong size, bad hex, bad padding."""


def _key(key_hex: str) -> bytes:
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise Sm4Error("SM4 key is not hex") from None
    if len(key) != 16:
        raise Sm4Error(f"SM4 key must be 16 bytes (32 hex digits), not {len(key)}")
    return key


def _cipher(key: bytes, mode) -> Cipher:
    try:
        return Cipher(algorithms.SM4(key), mode)
    except ValueError as exc:
        raise Sm4Error(f"SM4: {exc}") from exc


def sm4_block_encrypt(key: bytes, block: bytes) -> bytes:
    """One 16-byte block, no padding (GB/T 32907-2016 Appendix A)."""
    if len(block) != 16:
        raise Sm4Error("an SM4 block is 16 bytes")
    enc = _cipher(key, modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _pad(data: bytes) -> bytes:
    p = padding.PKCS7(128).padder()
    return p.update(data) + p.finalize()


def _unpad(data: bytes) -> bytes:
    u = padding.PKCS7(128).unpadder()
    try:
        return u.update(data) + u.finalize()
    except ValueError:
        raise Sm4Error("SM4: bad padding (wrong key?)") from None


def _crypt(cipher: Cipher, data: bytes, encrypt: bool) -> bytes:
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    try:
        return ctx.update(data) + ctx.finalize()
    except ValueError as exc:
        raise Sm4Error(f"SM4: {exc}") from None


def sm4_ecb_encrypt_hex(key_hex: str, text: str) -> str:
    return _crypt(_cipher(_key(key_hex), modes.ECB()), _pad(text.encode("utf-8")), True).hex()


def sm4_ecb_decrypt_hex(key_hex: str, cipher_hex: str) -> str:
    try:
        data = bytes.fromhex(cipher_hex)
    except ValueError:
        raise Sm4Error("SM4: ciphertext is not hex") from None
    if not data or len(data) % 16:
        raise Sm4Error("SM4: ciphertext is not a whole number of blocks")
    plain = _unpad(_crypt(_cipher(_key(key_hex), modes.ECB()), data, False))
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise Sm4Error("SM4: plaintext is not UTF-8 (wrong key?)") from None


def _iv(iv_hex: str) -> bytes:
    try:
        iv = bytes.fromhex(iv_hex)
    except ValueError:
        raise Sm4Error("SM4 IV is not hex") from None
    if len(iv) != 16:
        raise Sm4Error("SM4 IV must be 16 bytes")
    return iv


def sm4_cbc_encrypt_hex(key_hex: str, iv_hex: str, text: str) -> str:
    return _crypt(_cipher(_key(key_hex), modes.CBC(_iv(iv_hex))), _pad(text.encode("utf-8")), True).hex()


def sm4_cbc_decrypt_hex(key_hex: str, iv_hex: str, cipher_hex: str) -> str:
    try:
        data = bytes.fromhex(cipher_hex)
    except ValueError:
        raise Sm4Error("SM4: ciphertext is not hex") from None
    if not data or len(data) % 16:
        raise Sm4Error("SM4: ciphertext is not a whole number of blocks")
    plain = _unpad(_crypt(_cipher(_key(key_hex), modes.CBC(_iv(iv_hex))), data, False))
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise Sm4Error("SM4: plaintext is not UTF-8 (wrong key?)") from None
