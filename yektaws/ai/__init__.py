"""AI chat: a streaming client for OpenAI-compatible endpoints and the system prompts.

Knows nothing about transports or events; the ``ai:chat`` handler puts the pieces together.
"""

from .client import AIError, ChatClient, ErrorCode
from .prompts import Language, language_for, system_prompt

__all__ = ["AIError", "ChatClient", "ErrorCode", "Language", "language_for", "system_prompt"]
