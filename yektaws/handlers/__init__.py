"""The events the gateway answers, each written once for both protocols.

:func:`build_dispatcher` is the one place that decides which handler modules a server has.
"""

from __future__ import annotations

from yektaws.dispatcher import Dispatcher
from yektaws.handlers import system
from yektaws.settings import Settings

__all__ = ["build_dispatcher"]


def build_dispatcher(settings: Settings) -> Dispatcher:
    dispatcher = Dispatcher(rate_limit_strikes=settings.rate_limit_strikes)
    features = {
        "socketio": True,
        "nativeWebSocket": True,
        "authentication": True,
        "aiChat": bool(settings.ai_base_url),
        "streaming": True,
    }
    system.register(dispatcher, features=features)
    return dispatcher
