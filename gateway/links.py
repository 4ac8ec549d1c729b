"""Expiring signed download links: ``<base_path><id>?exp=<unix seconds>&sig=<signature>``.

With auth on, a GET of an upload needs its owner's credentials, which a browser's plain link
(an ``<a href>``, a video's ``src``) cannot send. The status endpoint hands the owner a link
instead: the upload id and an expiry, signed with HMAC-SHA256 under the link key. Whoever
holds the link may download that one upload until it expires, and nothing else (not HEAD,
PATCH or DELETE). The signature is checked before the upload is looked up, so a link says
nothing about ids it was not made for.

The key is ``--link-secret``, else the HMAC auth secret, else a random key made when the
process starts: then links stop working at a restart and work only on the instance that
made them, which is why instances behind one balancer share ``--link-secret``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from gateway.config import GatewayConfig
from protocol import errors

# Longest sig= and exp= values looked at; anything longer is no link of ours.
MAX_SIG_CHARS = 64
MAX_EXP_CHARS = 12


class Links:
    def __init__(self, config: GatewayConfig) -> None:
        key = config.link_secret or (config.auth.secret if config.auth.mode == "hmac" else "")
        # Domain-separated from the auth tokens signed with the same secret.
        self._key = hashlib.sha256(b"tus-gateway download link\0" + (
            key.encode() if key else secrets.token_bytes(32))).digest()
        self.ttl_s = config.link_ttl_s

    def _sign(self, upload_id: str, exp: int) -> str:
        mac = hmac.new(self._key, f"{upload_id}\0{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def query(self, upload_id: str, *, now: float) -> str:
        """The query string of a fresh link (``exp=...&sig=...``)."""
        # Rounded up to the minute: the link a status gives stays the same for a minute, so
        # an event stream comparing snapshots does not see a change in every one.
        exp = (int(now + self.ttl_s) // 60 + 1) * 60
        return f"exp={exp}&sig={self._sign(upload_id, exp)}"

    def check(self, upload_id: str, exp_text: str, sig: str, *, now: float) -> None:
        """``errors.LinkInvalid`` unless ``sig`` signs ``upload_id`` and ``exp_text``;
        ``errors.LinkExpired`` once ``exp`` has passed."""
        if (len(sig) > MAX_SIG_CHARS or len(exp_text) > MAX_EXP_CHARS
                or not exp_text.isascii() or not exp_text.isdigit() or not sig.isascii()):
            raise errors.LinkInvalid()
        exp = int(exp_text)
        if not hmac.compare_digest(sig.encode(), self._sign(upload_id, exp).encode()):
            raise errors.LinkInvalid()
        if exp <= now:
            raise errors.LinkExpired()
