"""Sliding-window replay protection for transport counters (RFC 6479 style).

The window is a ring of 64-bit blocks. Advancing the window clears whole blocks instead of
shifting a large bitmap, so each packet costs O(1) apart from rare long jumps. Checking and
recording are separate so that the cheap check runs before decryption while only an
authenticated packet may move the window (a forged huge counter must not).
"""

from __future__ import annotations

BLOCK_BITS = 64
RING_BLOCKS = 128  # power of two; the ring holds one spare block beyond the window
WINDOW_SIZE = (RING_BLOCKS - 1) * BLOCK_BITS  # 8128 counters behind the newest are tracked
_BLOCK_SHIFT = 6
_BIT_MASK = BLOCK_BITS - 1
_RING_MASK = RING_BLOCKS - 1


class ReplayWindow:
    __slots__ = ("_blocks", "_greatest", "_limit")

    def __init__(self, reject_after_messages: int) -> None:
        self._blocks = [0] * RING_BLOCKS
        self._greatest = 0  # highest counter recorded; bit 0 unset so counter 0 is fresh
        self._limit = reject_after_messages

    def check(self, counter: int) -> bool:
        """True if `counter` could be fresh. Does not change the window."""
        if counter >= self._limit:
            return False
        if counter > self._greatest:
            return True
        if self._greatest - counter >= WINDOW_SIZE:
            return False
        bit = 1 << (counter & _BIT_MASK)
        return not self._blocks[(counter >> _BLOCK_SHIFT) & _RING_MASK] & bit

    def record(self, counter: int) -> bool:
        """Mark `counter` as seen after its packet authenticated; False if it was a replay."""
        if counter >= self._limit:
            return False
        blocks = self._blocks
        block = counter >> _BLOCK_SHIFT
        greatest = self._greatest
        if counter > greatest:
            current = greatest >> _BLOCK_SHIFT
            if block != current:
                # Clear the blocks the window slides over; a jump past the ring clears it all.
                for i in range(current + 1, current + 1 + min(block - current, RING_BLOCKS)):
                    blocks[i & _RING_MASK] = 0
            self._greatest = counter
        elif greatest - counter >= WINDOW_SIZE:
            return False
        index = block & _RING_MASK
        bit = 1 << (counter & _BIT_MASK)
        if blocks[index] & bit:
            return False
        blocks[index] |= bit
        return True
