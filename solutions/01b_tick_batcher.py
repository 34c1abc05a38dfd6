"""Notebook 01b, "Build it yourself": a per-tick batcher (checker: "tick_batcher")."""

import asyncio


class MyBatcher:
    def __init__(self, mget):
        self.mget = mget
        self.waiting = []  # (key, future) of every caller in this tick
        self.sending = set()  # batches on their way (a task nobody holds can be collected)

    async def get(self, key):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.waiting:  # the first caller of the tick: flush when the tick ends
            loop.call_soon(self.flush)
        self.waiting.append((key, future))
        return await future

    def flush(self):
        batch, self.waiting = self.waiting, []  # callers from now on go into the next batch
        task = asyncio.ensure_future(self.send(batch))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def send(self, batch):
        keys = list(dict.fromkeys(key for key, _future in batch))  # each key once
        try:
            values = dict(zip(keys, await self.mget(keys), strict=True))
        except Exception as exc:  # the whole batch failed: every caller hears it
            for _key, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for key, future in batch:
            if not future.done():  # a caller that gave up is skipped; the others get theirs
                future.set_result(values[key])
