-- Token bucket: holds at most `limit` tokens (the burst) and refills at `limit` tokens
-- per `period` ms, with millisecond precision; a request takes `cost` tokens.
--
-- State, in the subject's hash: `<policy>:<period>:t` (tokens after the last request)
-- and `:u` (when that was, ms). A missing bucket is full.
--
-- Mirrors `window::token_bucket` in src/limit/window.rs: change both together.
local token_bucket = {}

-- Same return values as fixed_window.check; the tag is unused (0).
function token_bucket.check(h, f, now, limit, period, cost, counting)
  local v = redis.call('HMGET', h, f .. 't', f .. 'u')
  local tokens = tonumber(v[1])
  local updated = tonumber(v[2])
  if tokens == nil or updated == nil then
    tokens = limit
    updated = now
  end
  -- The clock may have gone back: never refill for negative time, never move back.
  local elapsed = math.max(now - updated, 0)
  tokens = math.min(limit, tokens + elapsed * limit / period)
  updated = math.max(updated, now)
  local allowed = tokens >= cost
  local after = tokens
  if allowed and counting then
    after = tokens - cost
  end
  local remaining = math.max(math.floor(after), 0)
  local reset = 0
  if limit > 0 then
    reset = math.max(math.ceil((limit - after) * period / limit), 0)
  end
  local retry = 0
  if not allowed then
    if cost > limit then
      retry = period
    else
      retry = math.ceil((cost - tokens) * period / limit)
    end
    retry = math.max(retry, 1)
  end
  return allowed, remaining, reset, retry, 0, reset, { f .. 't', after, f .. 'u', updated }
end

-- Gives `cost` tokens back (never beyond the burst).
function token_bucket.undo(h, f, limit, period, cost, tag)
  local t = tonumber(redis.call('HGET', h, f .. 't'))
  if t ~= nil then
    redis.call('HSET', h, f .. 't', math.min(t + cost, limit))
  end
end
