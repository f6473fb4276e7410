"""Transport keypairs: the per-session send counter, replay window and AEAD objects.

This is the hot path. Each keypair builds its two ChaCha20Poly1305 objects once; encryption
writes header and ciphertext into one preallocated buffer with `encrypt_into`, and the
nonce is the counter packed straight from (or into) the header bytes.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .messages import MESSAGE_TRANSPORT_DATA, TRANSPORT_HEADER, TRANSPORT_HEADER_LEN
from .primitives import AEAD_TAG_LEN
from .replay import ReplayWindow

PADDING_MULTIPLE = 16
_NONCE = struct.Struct("<4xQ")
_NONCE_PREFIX = bytes(4)


class Keypair:
    """One direction-pair of transport keys derived by a completed handshake."""

    __slots__ = (
        "_receiver",
        "_sender",
        "created",
        "expiry_reported",
        "is_initiator",
        "local_index",
        "peer_public_key",
        "remote_index",
        "replay",
        "send_counter",
    )

    def __init__(
        self,
        *,
        sending_key: bytes,
        receiving_key: bytes,
        local_index: int,
        remote_index: int,
        is_initiator: bool,
        created: float,
        peer_public_key: bytes,
        reject_after_messages: int,
    ) -> None:
        self._sender = ChaCha20Poly1305(sending_key)
        self._receiver = ChaCha20Poly1305(receiving_key)
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.created = created
        self.peer_public_key = peer_public_key
        self.send_counter = 0
        self.replay = ReplayWindow(reject_after_messages)
        self.expiry_reported = False

    def encrypt(self, plaintext: bytes) -> bytearray:
        """A transport data message; padding to 16 bytes hides exact packet lengths."""
        counter = self.send_counter
        self.send_counter = counter + 1
        length = len(plaintext)
        padding = -length % PADDING_MULTIPLE
        if padding:
            plaintext = plaintext + bytes(padding)
        message = bytearray(TRANSPORT_HEADER_LEN + length + padding + AEAD_TAG_LEN)
        TRANSPORT_HEADER.pack_into(message, 0, MESSAGE_TRANSPORT_DATA, self.remote_index, counter)
        self._sender.encrypt_into(_NONCE.pack(counter), plaintext, None, memoryview(message)[TRANSPORT_HEADER_LEN:])
        return message

    def decrypt(self, message: bytes) -> bytes:
        """Plaintext (with padding) of a transport message; raises InvalidTag if forged."""
        view = memoryview(message)
        return self._receiver.decrypt(_NONCE_PREFIX + view[8:TRANSPORT_HEADER_LEN], view[TRANSPORT_HEADER_LEN:], None)
