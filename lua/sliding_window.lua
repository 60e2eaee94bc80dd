-- Sliding window (two-window weighted counter, as Cloudflare describes it): the
-- previous window's count weighted by how much of it still overlaps the sliding
-- period, plus the current window's count, must stay within `limit`:
--
--   estimate = prev * (period - elapsed) / period + cur
--
-- State, in the subject's hash: `<policy>:<period>:s` (current window start, ms),
-- `:c` (units in the current window) and `:p` (units in the previous window).
--
-- Mirrors `window::sliding` in src/limit/window.rs: change both together.
local sliding_window = {}

-- Same return values as fixed_window.check.
function sliding_window.check(h, f, now, limit, period, cost, counting)
  local v = redis.call('HMGET', h, f .. 's', f .. 'c', f .. 'p')
  local start = now - (now % period)
  local cur, prev = 0, 0
  local s = tonumber(v[1])
  if s ~= nil then
    local c = tonumber(v[2]) or 0
    if s >= start then
      -- s > start only if Redis's clock went back: stay in the stored window.
      start = s
      cur = c
      prev = tonumber(v[3]) or 0
    elseif s + period == start then
      prev = c
    end
  end
  local elapsed = math.min(math.max(now - start, 0), period)
  local weight = (period - elapsed) / period
  local allowed = prev * weight + cur + cost <= limit
  local used = cur
  if allowed and counting then
    used = cur + cost
  end
  local remaining = math.max(math.floor(limit - (prev * weight + used)), 0)
  local to_roll = math.max(start + period - now, 0)
  local reset = 0
  if used > 0 then
    reset = to_roll + period
  elseif prev > 0 then
    reset = to_roll
  end
  local retry = 0
  if not allowed then
    if cost > limit then
      retry = to_roll + period
    elseif cur + cost <= limit then
      -- Wait until the previous window's weight has dropped enough.
      -- (prev - slack) > 0 here; multiplying first keeps whole numbers exact.
      local slack = limit - cur - cost
      retry = math.ceil(period * (prev - slack) / prev - elapsed)
    else
      -- Wait for the next window, then until this window's weight (as the previous
      -- one) has dropped enough.
      retry = to_roll + math.ceil(period * (cur - (limit - cost)) / cur)
    end
    retry = math.max(retry, 1)
  end
  return allowed, remaining, reset, retry, start, to_roll + period,
    { f .. 's', start, f .. 'c', used, f .. 'p', prev }
end

-- Takes back `cost` units counted in the window that started at `tag`, which may since
-- have become the previous window.
function sliding_window.undo(h, f, limit, period, cost, tag)
  local v = redis.call('HMGET', h, f .. 's', f .. 'c', f .. 'p')
  local s = tonumber(v[1])
  if s == tag then
    redis.call('HSET', h, f .. 'c', math.max((tonumber(v[2]) or 0) - cost, 0))
  elseif s ~= nil and s == tag + period then
    redis.call('HSET', h, f .. 'p', math.max((tonumber(v[3]) or 0) - cost, 0))
  end
end
