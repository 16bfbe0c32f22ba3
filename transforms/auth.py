"""Bearer tokens for the endpoint: Application Default Credentials, or none for loopback."""
import asyncio
import datetime
import ipaddress
import urllib.parse
from typing import Dict, Optional

AUTH_MODES = ("auto", "adc", "none")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN = datetime.timedelta(minutes=5)


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_auth(mode: str, endpoint: str) -> str:
    """`adc` or `none` for this endpoint; ValueError where a token would be exposed."""
    if mode not in AUTH_MODES:
        raise ValueError(f"--auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    scheme = urllib.parse.urlsplit(endpoint).scheme
    if mode == "auto":
        return "adc" if scheme == "https" else "none"
    if mode == "adc" and scheme != "https" and not is_loopback(endpoint):
        raise ValueError("--auth adc needs an https endpoint: a bearer token is never sent "
                         "over plain http to a non-loopback host")
    return mode


class TokenSource:
    """Authorization headers for requests; refreshes ADC tokens before they expire.

    Lives on one event loop; concurrent callers share one refresh.
    """

    def __init__(self, mode: str):
        self._mode = mode
        self._credentials = None
        self._lock: Optional[asyncio.Lock] = None

    async def headers(self, force_refresh: bool = False) -> Dict[str, str]:
        if self._mode == "none":
            return {}
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            loop = asyncio.get_running_loop()
            if self._credentials is None:
                self._credentials = await loop.run_in_executor(None, _default_credentials)
            if force_refresh or _needs_refresh(self._credentials):
                await loop.run_in_executor(None, _refresh, self._credentials)
            return {"Authorization": f"Bearer {self._credentials.token}"}


def _default_credentials():
    import google.auth
    credentials, _ = google.auth.default(scopes=list(SCOPES))
    return credentials


def _refresh(credentials):
    from google.auth.transport.requests import Request
    credentials.refresh(Request())


def _needs_refresh(credentials) -> bool:
    if not credentials.token or not credentials.valid:
        return True
    expiry = getattr(credentials, "expiry", None)
    if expiry is None:
        return False
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    expiry = expiry.replace(tzinfo=None) if expiry.tzinfo is None else \
        expiry.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return expiry - now < REFRESH_MARGIN
