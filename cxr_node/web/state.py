"""What the web app keeps between requests: settings, timings and the login throttle."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from cxr_node.settings import Settings
from cxr_node.web.auth import LoginThrottle


@dataclass
class WebState:
    """The web app's settings-derived values and the login throttle."""

    settings: Settings
    ageing_seconds: float = 3600.0
    session_seconds: float = 8 * 3600.0
    throttle: LoginThrottle = field(default_factory=LoginThrottle)


def web_state(request: Request) -> WebState:
    """Dependency: the app's state."""
    state: WebState = request.app.state.web
    return state
