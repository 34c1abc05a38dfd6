"""Notebook 05b, "Build it yourself": take over a dead consumer's entries (checker: "take_over")."""


async def take_over(redis, stream, group, consumer, min_idle_ms):
    _next_start, claimed, *_deleted = await redis.xautoclaim(
        stream, group, consumer, min_idle_time=min_idle_ms, start_id="0-0"
    )
    return claimed
