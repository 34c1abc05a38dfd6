"""Notebook 02, "Build it yourself": release a lock only if it is still yours
(checker: "lock_release"). Redis runs the whole script atomically, so no other client's command
can come between the GET and the DEL."""

RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
