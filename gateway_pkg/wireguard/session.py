"""Transport keypairs: the per-session send counter, replay window and AEAD objects.

This is the hot path. Each keypair builds its two ChaCha20Poly1305 objects once; the nonce is
packed from the counter in both directions, and the received ciphertext is passed as a
memoryview so the payload is not copied before decryption.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .messages import MESSAGE_TRANSPORT_DATA, TRANSPORT_HEADER, TRANSPORT_HEADER_LEN
from .replay import ReplayWindow
from .timers import TimerConfig

PADDING_MULTIPLE = 16
_NONCE = struct.Struct("<4xQ")
_ZEROS = [bytes(n) for n in range(PADDING_MULTIPLE)]


class Keypair:
    """One direction-pair of transport keys derived by a completed handshake."""

    __slots__ = (
        "_receiver",
        "_sender",
        "created",
        "expires_at",
        "expiry_reported",
        "is_initiator",
        "local_index",
        "owner",
        "peer_public_key",
        "rekey_on_receive_at",
        "rekey_on_send_at",
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
        owner: object,
        config: TimerConfig,
    ) -> None:
        self._sender = ChaCha20Poly1305(sending_key)
        self._receiver = ChaCha20Poly1305(receiving_key)
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.created = created
        self.peer_public_key = peer_public_key
        self.owner = owner  # the device's peer record, saving a lookup per packet
        self.send_counter = 0
        self.replay = ReplayWindow(config.reject_after_messages)
        self.expiry_reported = False
        # Deadlines computed once so the per-packet checks are single comparisons.
        self.expires_at = created + config.reject_after_time
        if is_initiator:
            # Whitepaper §6.2: the initiator rekeys on send after REKEY_AFTER_TIME, and on
            # receive early enough to finish before REJECT_AFTER_TIME.
            self.rekey_on_send_at = created + config.rekey_after_time
            self.rekey_on_receive_at = (
                created + config.reject_after_time - config.keepalive_timeout - config.rekey_timeout
            )
        else:
            # The whitepaper leaves rekeying to the initiator. If it has not rekeyed by then
            # (its timers may be longer than ours), we do, instead of letting our side of a
            # busy session expire under it. With equal timers this comes after both of the
            # initiator's deadlines, so a conforming initiator always goes first.
            self.rekey_on_send_at = self.rekey_on_receive_at = created + max(
                config.rekey_after_time, config.reject_after_time - config.keepalive_timeout
            )

    def encrypt(self, plaintext: bytes) -> bytes:
        """A transport data message; padding to 16 bytes hides exact packet lengths."""
        counter = self.send_counter
        self.send_counter = counter + 1
        padding = -len(plaintext) % PADDING_MULTIPLE
        if padding:
            plaintext = b"".join((plaintext, _ZEROS[padding]))  # also takes memoryviews
        # Header + ciphertext by concatenation measured as fast as encrypt_into a
        # preallocated bytearray followed by the copy to bytes (bench/bench_wireguard_core.py).
        return TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT_DATA, self.remote_index, counter) + (
            self._sender.encrypt(_NONCE.pack(counter), plaintext, None)
        )

    def decrypt(self, message: bytes, counter: int) -> bytes:
        """Plaintext (with padding) of a transport message whose header carried `counter`
        (already unpacked by the caller); raises InvalidTag if forged."""
        return self._receiver.decrypt(_NONCE.pack(counter), memoryview(message)[TRANSPORT_HEADER_LEN:], None)
