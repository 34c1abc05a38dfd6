"""Notebook 03b, "Build it yourself": a fenced fill (checker: "fenced_fill").

Store the filler's value only if the key's fence still holds the token the filler got when it
read (or was granted the lease): any write since then moved the fence, and the fill is refused.
"""

FENCED_FILL = """
if redis.call('get', KEYS[2]) == ARGV[3] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
