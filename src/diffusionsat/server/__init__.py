"""``diffusionsat serve``: the REST API, its job queue and the offline web page."""

from .app import create_app
from .config import DEFAULT_HOST, DEFAULT_PORT, InsecureBindError, ServerConfig, check_bind, is_loopback

__all__ = ["create_app", "ServerConfig", "InsecureBindError", "check_bind", "is_loopback", "DEFAULT_HOST", "DEFAULT_PORT"]
