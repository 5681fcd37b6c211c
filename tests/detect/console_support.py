"""A small HTTP client for the console's tests: cookies kept, redirects not followed, forms posted."""
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, Optional, Tuple


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Browser:
    """Cookies like a browser; answers (status, headers, text) without following redirects."""

    def __init__(self, base: str):
        self.base = base
        self.cookies: Dict[str, str] = {}

    def request(self, method: str, path: str, form: Optional[Dict[str, str]] = None,
                headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], str]:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=dict(headers or {}))
        if data is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        if self.cookies:
            request.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            response = opener.open(request, timeout=10)
        except urllib.error.HTTPError as exc:
            response = exc
        text = response.read().decode()
        for value in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            cookie_value = rest.split(";", 1)[0]
            if 'Max-Age=0' in value or cookie_value in ('""', ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = cookie_value
        self.last_set_cookie = response.headers.get_all("Set-Cookie") or []
        return response.status if hasattr(response, "status") else response.code, dict(response.headers), text

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, form: Dict[str, str], **kw):
        return self.request("POST", path, form=form, **kw)

    def sign_in(self, token: str) -> str:
        status, headers, _ = self.post("/console/login", {"token": token})
        assert status == 303 and headers["location"].endswith("/console/fleet"), (status, headers)
        return self.csrf()

    def csrf(self) -> str:
        status, _, text = self.get("/console/fleet")
        assert status == 200, text
        return re.search(r'name="csrf-token" content="([^"]+)"', text).group(1)
