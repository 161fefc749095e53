"""Bearer tokens for every listener (gRPC service, bridges): loading, header parsing, constant-time check."""

from __future__ import annotations

import hmac
from pathlib import Path

# "Bearer" is gRPC/HTTP practice; openpi's websocket client sends "Api-Key <key>"
SCHEMES = ("bearer ", "api-key ")


def load_tokens(path: str | Path, flag: str = "--auth-token-file") -> tuple[str, ...]:
    """Tokens from a file: one per line (several: rotation); blank lines and ``#`` comments ignored."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{flag}: cannot read {p}: {exc.strerror}") from None
    tokens = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    if not tokens:
        raise ValueError(f"{flag}: {p} holds no token (one per line)")
    short = [i for i, t in enumerate(tokens) if len(t) < 16]
    if short:
        raise ValueError(f"{flag}: token(s) number {[i + 1 for i in short]} are shorter than 16 characters "
                         "(use e.g. `openssl rand -hex 32`)")
    return tokens


def token_from_header(value: str | None) -> str | None:
    """The credential of an ``authorization`` header value ("Bearer X" / "Api-Key X"), else None."""
    if not isinstance(value, str):
        return None
    low = value[:16].lower()
    for scheme in SCHEMES:
        if low.startswith(scheme):
            return value[len(scheme):].strip()
    return None


def token_ok(presented: str | None, tokens: tuple[str, ...]) -> bool:
    """Constant time in the presented token's content: every accepted token is compared, no early exit."""
    if presented is None:
        return False
    p = presented.encode("utf-8", "surrogateescape")
    ok = False
    for t in tokens:
        ok |= hmac.compare_digest(p, t.encode("utf-8"))
    return ok
