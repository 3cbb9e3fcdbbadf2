"""The child process of the crash test: appends turns to one conversation and prints
``<message id> <turn number>`` for each acknowledged append, until it is killed.

Usage: python tests/store_crash_child.py DATABASE_URL FIRST_TURN
"""

from __future__ import annotations

import asyncio
import sys

from chatcore.events import ChatMessage, ConversationKey
from chatcore.memory.sql import SqlStore

KEY = ConversationKey("crash", "channel", "writer")


async def main(url: str, first: int) -> None:
    store = SqlStore(url)
    await store.open()
    print("ready", flush=True)
    for turn in range(first, first + 100_000):
        (stored,) = await store.append(KEY, [ChatMessage("user", f"turn {turn}")])
        print(stored.id, turn, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
