"""The async-context-manager shape shared by every startable resource."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["StartClose"]


class StartClose:
    """Mixin: ``async with`` calls ``start()``, then ``close()`` (also when start fails).

    Subclasses implement ``start`` and an idempotent ``close``.
    """

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
