"""Notebook 05, "Build it yourself": replay what you missed, or flush (checker: "catch_up")."""


async def catch_up(redis, stream, last_id):
    # A trim removes the oldest entries first: if anything at or before last_id is still in the
    # stream, nothing after it was trimmed.
    still_there = await redis.xrange(stream, min="-", max=last_id, count=1)
    entries = await redis.xrange(stream, min=f"({last_id}", max="+")
    return entries, not still_there
