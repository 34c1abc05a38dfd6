"""Notebook 01, "Build it yourself": single-flight in a few lines (checker: "single_flight")."""

import asyncio


class MySingleFlight:
    def __init__(self):
        self.calls = {}  # key -> the task running fn() for it

    async def do(self, key, fn):
        task = self.calls.get(key)
        if task is None:
            # The call runs in a task of its own, so that no single caller owns it.
            task = self.calls[key] = asyncio.ensure_future(fn())
            # Forget the key as soon as the call ends, value or error: nothing is cached.
            task.add_done_callback(lambda _done: self.calls.pop(key, None))
        # shield: a caller that gives up (is cancelled) must not cancel the call for the others.
        return await asyncio.shield(task)
