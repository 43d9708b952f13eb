"""The Lua scripts of :class:`~asynctoken.stores.RedisStore`: each one touches one key, so that it
runs on Redis Cluster too (the key's node runs it, atomically)."""

from __future__ import annotations

__all__ = ["RENEW_LUA", "REPLACE_LUA", "SWAP_ATTEMPTS", "SWAP_LUA", "UNLOCK_LUA"]

# Compare-and-swap on the refresh token inside the stored JSON record, atomic in the server.
# KEYS[1]: credential key. ARGV[1]: new record. ARGV[2]: "1" if a refresh token is expected, "0" if
# the stored one must be null/absent. ARGV[3]: the expected refresh token.
# Returns 1 if stored (or already equal to the new record, so a retried call is harmless), 0 if
# the record is missing or holds another refresh token, -1 if it is sealed (the caller reads it
# to raise the right error). cjson decodes JSON null as cjson.null, a
# sentinel distinct from nil, so both spellings of "no refresh token" are checked.
REPLACE_LUA = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if current == ARGV[1] then return 1 end
local ok, record = pcall(cjson.decode, current)
if not ok or type(record) ~= 'table' then
  return redis.error_reply('ASYNCTOKEN_BAD_RECORD the stored record is not a JSON object')
end
if record['sealed'] ~= nil then return -1 end
local stored = record['refresh_token']
if ARGV[2] == '1' then
  if type(stored) ~= 'string' or stored ~= ARGV[3] then return 0 end
elseif stored ~= nil and stored ~= cjson.null then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# Compare-and-swap on the whole stored value, for sealed records whose refresh token the server
# cannot see. KEYS[1]: credential key. ARGV[1]: the value read before. ARGV[2]: the new value.
SWAP_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# How often a compare-and-swap on a sealed record is retried when the value changed between the
# read and the swap (another writer of an unrelated field); each retry re-checks everything.
SWAP_ATTEMPTS = 10

# Extend a lock's lease only if it still carries our random token.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Release a lock only if it still carries our random token (it may have expired and been taken).
UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
