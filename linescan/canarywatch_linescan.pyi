"""canarywatch's request-log line scanner (Rust, linescan/src/lib.rs)."""

SIMPLE: int
OTHER: int
MESSAGE_OK: int
MESSAGE_OVERSIZED: int
MESSAGE_EMPTY: int
NAMESPACE_WIDTH: int
HASH_WIDTH: int
KEY_WIDTH: int

def scan(
    messages: list[bytes], max_message_bytes: int, max_line_bytes: int, max_bad_lines: int
) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes]:
    """Column buffers for the non-blank lines of the messages, in line order.

    (message index i64, start i64, end i64, kind u8) per line, (packed keys, status i64,
    duration_ms f64, ts f64) per SIMPLE line only, then the state of each message (u8: ok,
    oversized or empty), then per message the lines that cannot be JSON past the first
    `max_bad_lines` of them (i64): they have no row.
    """

class KeyIndex:
    def __init__(self, keys: bytes, codes: list[int]) -> None: ...
    def __len__(self) -> int: ...
    def lookup(self, keys: object) -> bytearray:
        """int64 code of each packed key in a uint8 buffer, -1 for an unknown one."""
