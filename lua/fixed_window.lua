-- Fixed window: at most `limit` units per window of `period` ms, windows aligned to
-- multiples of `period` on Redis's clock. Exact.
--
-- State, in the subject's hash, fields `<policy>:<period>:s` (window start, ms) and
-- `<policy>:<period>:c` (units counted in that window).
--
-- Mirrors `window::fixed` in src/limit/window.rs: change both together.
local fixed_window = {}

-- Returns allowed, remaining, reset_ms, retry_ms, tag, ttl_ms and the fields to write
-- if every window allows. `counting` is false for a peek: remaining then leaves `cost`
-- out. The tag (the window start) lets an undo find the window it counted in.
function fixed_window.check(h, f, now, limit, period, cost, counting)
  local v = redis.call('HMGET', h, f .. 's', f .. 'c')
  local start = now - (now % period)
  local count = 0
  local s = tonumber(v[1])
  -- s > start only if Redis's clock went back: stay in the stored window.
  if s ~= nil and s >= start then
    start = s
    count = tonumber(v[2]) or 0
  end
  local allowed = count + cost <= limit
  local used = count
  if allowed and counting then
    used = count + cost
  end
  local remaining = math.max(limit - used, 0)
  local left = math.max(start + period - now, 0)
  local reset = 0
  if used > 0 then
    reset = left
  end
  local retry = 0
  if not allowed then
    retry = math.max(left, 1)
  end
  return allowed, remaining, reset, retry, start, left, { f .. 's', start, f .. 'c', used }
end

-- Takes back `cost` units counted in the window that started at `tag`.
function fixed_window.undo(h, f, limit, period, cost, tag)
  local v = redis.call('HMGET', h, f .. 's', f .. 'c')
  if tonumber(v[1]) == tag then
    redis.call('HSET', h, f .. 'c', math.max((tonumber(v[2]) or 0) - cost, 0))
  end
end
