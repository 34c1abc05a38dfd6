"""Writes that a newer writer can overrule: the version counter and its Lua scripts.

Every cache key ``K`` that uses a fenced policy (``distributed`` or ``lease``) has a counter, the
*fence*, stored beside it (``K:fence``, in the same cluster hash slot). It only ever goes up:

- each grant of the key's lock or lease increments it and hands the new number to the filler;
- each write or delete through the cache increments it too.

A fill (a loader's value being stored) succeeds only if the fence still holds the number the filler
was given, so a filler that was overtaken (its lock expired while it was paused, or the key was
written or deleted during its load) cannot store its now-outdated value. That is the fencing token
of Kleppmann's "How to do distributed locking" and the lease of Facebook's memcache, as one
mechanism.
"""

from __future__ import annotations

__all__ = [
    "CLAIM",
    "FENCE_TTL_MS",
    "FILL",
    "FILL_AND_RELEASE",
    "GIVE_BACK",
    "LEASE",
    "WRITE",
]

FENCE_TTL_MS = 24 * 3600 * 1000
"""Counters live a day past their last use: far longer than any fill, short enough to clean up."""

FILL = """
-- KEYS: value, fence, lease   ARGV: data, px, token
if tonumber(redis.call('get', KEYS[2]) or '0') ~= tonumber(ARGV[3]) then
  return 0
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('del', KEYS[3])
return 1
"""

WRITE = """
-- KEYS: value, fence, lease, stale   ARGV: data ('' deletes), px, fence ttl, stale ms
redis.call('incr', KEYS[2])
redis.call('pexpire', KEYS[2], ARGV[3])
redis.call('del', KEYS[3])
if ARGV[1] == '' then
  local old = redis.call('get', KEYS[1])
  if old and tonumber(ARGV[4]) > 0 then
    redis.call('set', KEYS[4], old, 'PX', ARGV[4])
  end
  return redis.call('del', KEYS[1])
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('del', KEYS[4])
return 1
"""

LEASE = """
-- KEYS: value, fence, lease, stale   ARGV: lease ms, fence ttl, unreadable value
-- returns {1, value} | {2, stale value or '', lease pttl} | {3, token}
-- A value equal to ARGV[3] (bytes the caller could not decode) counts as missing.
local value = redis.call('get', KEYS[1])
if value and value ~= ARGV[3] then
  return {1, value}
end
if redis.call('exists', KEYS[3]) == 1 then
  return {2, redis.call('get', KEYS[4]) or '', redis.call('pttl', KEYS[3])}
end
local token = redis.call('incr', KEYS[2])
redis.call('pexpire', KEYS[2], ARGV[2])
redis.call('set', KEYS[3], token, 'PX', ARGV[1])
return {3, token}
"""

GIVE_BACK = """
-- KEYS: lease   ARGV: token   (a failed filler returns its lease, if it still holds it)
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

CLAIM = """
-- KEYS: value, lock, fence   ARGV: token, lock ms, fence ttl, unreadable value
-- The distributed policy's first step, one round trip: the value if someone stored it
-- meanwhile ({2, value}), else the lock and its fencing token ({1, fence}), else how long the
-- current holder's lock still runs ({0, pttl}). A value equal to ARGV[4] (bytes the caller
-- could not decode) counts as missing, so the fill that follows overwrites it.
local value = redis.call('get', KEYS[1])
if value and value ~= ARGV[4] then
  return {2, value}
end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('incr', KEYS[3])
  redis.call('pexpire', KEYS[3], ARGV[3])
  return {1, fence}
end
return {0, redis.call('pttl', KEYS[2])}
"""

FILL_AND_RELEASE = """
-- KEYS: value, fence, lease, lock   ARGV: data, px, token ('' = unfenced), lock token, channel
-- The holder's last step, one round trip: store if the fence still holds our token, release
-- our lock, and tell the waiters, with the stored entry in the message so that they need not
-- read it again. Returns 1 if stored, 0 if the fence refused it.
local stored = 0
if ARGV[3] == '' or tonumber(redis.call('get', KEYS[2]) or '0') == tonumber(ARGV[3]) then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('del', KEYS[3])
  stored = 1
end
if redis.call('get', KEYS[4]) == ARGV[4] then
  redis.call('del', KEYS[4])
end
if stored == 1 then
  redis.call('publish', ARGV[5], 'filled\\n' .. ARGV[1])
else
  redis.call('publish', ARGV[5], 'refused')
end
return stored
"""
