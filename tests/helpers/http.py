"""Plain HTTP to a bot on loopback (urllib, 5 s timeouts): an error status is returned, not raised."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request


def post_form(url: str, params: dict, headers: dict | None = None) -> tuple[int, str]:
    """POSTs ``params`` form-encoded, as Twilio posts a webhook: (status, body; "" for an error status)."""
    req = urllib.request.Request(
        url, data=urllib.parse.urlencode(params).encode(), method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


async def post_form_async(url: str, params: dict, headers: dict | None = None) -> tuple[int, str]:
    """``post_form`` off the event loop (the bot under test runs on it)."""
    return await asyncio.to_thread(post_form, url, params, headers)


def get_status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
