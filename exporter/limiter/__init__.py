"""Request budgets: :class:`RateLimiter` keeps one token's budget on this process."""

from exporter.limiter.local import RateLimiter

__all__ = ["RateLimiter"]
