"""Bearer tokens for the endpoint: Application Default Credentials, or none.

`--auth auto` sends a token only to Google API hosts (GOOGLE_API_HOST_SUFFIXES); any other
host gets one only with `--auth adc`, and never over plain http unless it is loopback.

Tokens go only into request headers: never into messages, logs or dead letters.
"""
import asyncio
import datetime
import ipaddress
import urllib.parse
from typing import Optional

AUTH_MODES = ("auto", "adc", "none")
# Hosts `--auth auto` sends ADC to: Google APIs, and Vertex AI dedicated endpoints
# (ENDPOINT_ID.REGION-PROJECT_NUMBER.prediction.vertexai.goog).
GOOGLE_API_HOST_SUFFIXES = (".googleapis.com", ".prediction.vertexai.goog")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Refresh this long before the token expires (google-auth's own threshold is 3 min 45 s).
REFRESH_MARGIN = datetime.timedelta(minutes=5)


class AuthError(Exception):
    """No token could be had. `retryable`: a failed refresh (worth another attempt), as
    opposed to no credentials at all."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_google_api(url: str) -> bool:
    """An https URL on a Google API host."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    return parts.scheme == "https" and host.endswith(GOOGLE_API_HOST_SUFFIXES)


def token_may_travel(endpoint: str) -> bool:
    """A bearer token is sent only over https, or to a loopback host."""
    return urllib.parse.urlsplit(endpoint).scheme == "https" or is_loopback(endpoint)


def resolve_auth(mode: str, endpoint: str) -> str:
    """`adc` or `none` for this endpoint; ValueError where a token would be exposed."""
    if mode not in AUTH_MODES:
        raise ValueError(f"--auth must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
    if mode == "auto":
        return "adc" if is_google_api(endpoint) else "none"
    if mode == "adc" and not token_may_travel(endpoint):
        raise ValueError("--auth adc needs an https endpoint: a bearer token is never sent "
                         "over plain http to a non-loopback host")
    return mode


class TokenSource:
    """The current access token; refreshed before expiry, or when a request was refused with
    the token it carried. Lives on one event loop: concurrent callers share one refresh."""

    def __init__(self, mode: str, endpoint: str):
        if mode not in ("adc", "none"):
            raise ValueError(f"auth must be resolved to adc or none, not {mode!r}")
        if mode == "adc" and not token_may_travel(endpoint):
            raise ValueError("refusing to send a bearer token over plain http")
        self.enabled = mode == "adc"
        self._credentials = None
        self._missing: Optional[str] = None
        self._lock: Optional[asyncio.Lock] = None

    async def token(self, refused: Optional[str] = None) -> Optional[str]:
        """A valid token (None when auth is off). `refused`: a token the endpoint answered
        401 to; it is replaced unless another request already did so."""
        if not self.enabled:
            return None
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            loop = asyncio.get_running_loop()
            if self._credentials is None:
                if self._missing is None:
                    try:
                        self._credentials = await loop.run_in_executor(
                            None, _default_credentials)
                    except Exception as e:  # google.auth.exceptions.DefaultCredentialsError
                        self._missing = (f"no Application Default Credentials "
                                         f"({type(e).__name__}: {e}); run `gcloud auth "
                                         f"application-default login` or use --auth none")
                if self._missing is not None:
                    raise AuthError(self._missing, retryable=False)
            credentials = self._credentials
            stale = refused is not None and credentials.token == refused
            if stale or needs_refresh(credentials.token, credentials.expiry):
                try:
                    await loop.run_in_executor(None, _refresh, credentials)
                except Exception as e:  # google.auth.exceptions.RefreshError, transport errors
                    raise AuthError(f"cannot refresh the access token: {type(e).__name__}: "
                                    f"{_shortened(str(e))}", retryable=True)
            return credentials.token


def needs_refresh(token: Optional[str], expiry: Optional[datetime.datetime],
                  now: Optional[datetime.datetime] = None) -> bool:
    """No token yet, or one that expires within REFRESH_MARGIN (expiry: naive UTC, as
    google-auth keeps it, or aware)."""
    if not token:
        return True
    if expiry is None:
        return False
    if expiry.tzinfo is not None:
        expiry = expiry.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    now = now or datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    return expiry - now < REFRESH_MARGIN


def _default_credentials():
    import google.auth
    credentials, _ = google.auth.default(scopes=list(SCOPES))
    return credentials


def _refresh(credentials):
    from google.auth.transport.requests import Request
    credentials.refresh(Request())


def _shortened(message: str, limit: int = 300) -> str:
    """A refresh error's text, cut short."""
    return message if len(message) <= limit else message[:limit] + "..."
