"""Middleware: hooks around sending and processing, run in order before and in reverse after."""

from taskmill.middleware.base import Middleware

__all__ = ["Middleware"]
