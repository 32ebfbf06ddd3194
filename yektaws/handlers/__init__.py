"""The events the gateway answers, each written once for both protocols.

:func:`build_dispatcher` is the one place that decides which handler modules a server has.
"""

from __future__ import annotations

from yektaws.dispatcher import Dispatcher
from yektaws.handlers import system
from yektaws.handlers.ai import AIChat
from yektaws.metrics import Metrics
from yektaws.settings import Settings

__all__ = ["AIChat", "build_dispatcher"]


def build_dispatcher(settings: Settings, ai_chat: AIChat, metrics: Metrics) -> Dispatcher:
    """The dispatcher with every event registered; ``ai_chat`` is started and stopped by the app."""
    dispatcher = Dispatcher(rate_limit_strikes=settings.rate_limit_strikes, metrics=metrics)
    features = {
        "socketio": True,
        "nativeWebSocket": True,
        "authentication": True,
        "aiChat": ai_chat.enabled,
        "streaming": True,
    }
    system.register(dispatcher, features=features)
    ai_chat.register(dispatcher)
    return dispatcher
