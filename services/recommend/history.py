"""Each user's recent purchases, answered from this instance's memory.

Every instance runs a consumer of its own over user.purchased, so each sees every event (a
shared one would split them between instances). The consumer writes an event to Postgres first
(idempotent by event id: every instance writes it, the first one wins) and then to memory, for
the users memory holds. A user memory does not hold is read from Postgres once; since this
instance's consumer writes Postgres before memory, that read holds everything the consumer has
seen, and what it sees later is appended. Events are kept with their ids, so one that reached
Postgres through another instance first is not counted twice.

While the consumer is behind (NATS away, a backlog), memory may be stale: reads go to Postgres,
where another instance may have written what this one has not seen."""
from __future__ import annotations

from collections import OrderedDict, deque

from services.kit.events import Progress

from .store import Purchase, RecommendStore

LENGTH = 50             # the model sees a user's last 50 purchases
MAX_USERS = 100_000     # users held (LRU); about 50 MB at full length
CURRENT_WITHIN_S = 5.0  # the consumer must have been caught up this recently to trust memory


class Histories:
    def __init__(self, store: RecommendStore, progress: Progress, *, length: int = LENGTH,
                 max_users: int = MAX_USERS):
        self.store, self.progress = store, progress
        self.length, self.max_users = length, max_users
        self.users: OrderedDict[str, deque[Purchase]] = OrderedDict()
        self.loading: dict[str, list[Purchase]] = {}   # events that arrived during a user's read

    async def recent(self, user_id: str) -> list[int]:
        """Item ids, newest first."""
        if not self.progress.current(CURRENT_WITHIN_S):
            return _items(await self.store.recent(user_id, self.length))
        held = self.users.get(user_id)
        if held is not None:
            self.users.move_to_end(user_id)
            return [p.item_id for p in reversed(held)]
        if user_id in self.loading:   # another call is reading this user: answer, keep theirs
            return _items(await self.store.recent(user_id, self.length))
        self.loading[user_id] = []
        try:
            newest_first = await self.store.recent(user_id, self.length)
        finally:
            arrived = self.loading.pop(user_id)
        held = deque(reversed(newest_first), maxlen=self.length)
        for purchase in arrived:
            _add(held, purchase)
        self.users[user_id] = held
        if len(self.users) > self.max_users:
            self.users.popitem(last=False)
        return [p.item_id for p in reversed(held)]

    async def record(self, user_id: str, purchase: Purchase) -> None:
        """The consumer's handler: Postgres first, then memory."""
        await self.store.record(user_id, purchase)
        if user_id in self.loading:
            self.loading[user_id].append(purchase)
        if (held := self.users.get(user_id)) is not None:
            _add(held, purchase)


def _add(held: deque[Purchase], purchase: Purchase) -> None:
    if all(p.event_id != purchase.event_id for p in held):
        held.append(purchase)


def _items(newest_first: list[Purchase]) -> list[int]:
    return [p.item_id for p in newest_first]
