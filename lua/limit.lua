-- tollgate rate limiter: the one script every request runs (EVALSHA), built by
-- appending this file to fixed_window.lua, sliding_window.lua and token_bucket.lua
-- (see src/limit/script.rs). Redis runs a script atomically, so checking every window
-- and counting in all of them (or in none) needs no locks.
--
-- One script call decides one or more calls in turn, in order: the requests that waited
-- on one gateway worker at the same moment (src/limit/batch.rs). Each call sees what the
-- calls before it counted, exactly as if each had been its own script call.
--
-- KEYS: every call's keys, call after call; a call's keys are, for each subject, its
--       windows hash `tg:{<key>}:w`, then its leases sorted set `tg:{<key>}:l` (lease
--       id -> time taken, ms).
-- ARGV: the number of calls, then per call: mode, cost, lease id, lease ttl (ms),
--       subject count, then per subject: algorithm ("f", "s" or "t"), policy name,
--       concurrency cap (-1: none), block (ms, 0: none), window count, and per window:
--       limit, period (ms), tag (undo only, else 0).
-- mode: "a" acquire (count if every window allows), "p" peek (count nothing),
--       "u" undo (take back what an acquire with these tags counted).
--
-- Returns one reply per call, in order. A call's reply (a and p): {all allowed (1/0),
-- now (ms), then five integers per entry: allowed (1/0), remaining, reset (ms), retry
-- (ms), tag}; an entry is a window, and after a subject's windows, its concurrency cap if
-- it has one, then its block if it has one. Undo's reply is 0.
--
-- Blocks: a subject whose own windows or cap refuse an acquire, under a policy with a
-- block, is blocked for that long (field `<policy>:b` of its hash: until when, ms);
-- while blocked every request of it is refused. Written even though nothing is counted.
-- Time is Redis's (TIME), so every gateway instance shares one clock.
local algorithms = { f = fixed_window, s = sliding_window, t = token_bucket }

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- Decides the call whose keys follow KEYS[key] and whose arguments start at ARGV[arg];
-- returns its reply and where the next call's keys and arguments start.
local function decide(key, arg)
  local mode = ARGV[arg]
  local cost = tonumber(ARGV[arg + 1])
  local lease_id = ARGV[arg + 2]
  local lease_ttl = tonumber(ARGV[arg + 3])
  local subjects = tonumber(ARGV[arg + 4])
  local counting = mode == 'a'
  arg = arg + 5

  local out = { 1, now }
  local all_allowed = true
  -- What to write once every window has allowed: per subject, hash fields and a ttl.
  local writes = {}
  local leases = {}
  local blocks = {}
  for i = 1, subjects do
    local hash = KEYS[key + 2 * i - 1]
    local lease_key = KEYS[key + 2 * i]
    local algorithm = algorithms[ARGV[arg]]
    local policy = ARGV[arg + 1]
    local cap = tonumber(ARGV[arg + 2])
    local block = tonumber(ARGV[arg + 3])
    local windows = tonumber(ARGV[arg + 4])
    arg = arg + 5
    local refused_here = false
    local fields = {}
    local ttl = 0
    for _ = 1, windows do
      local limit = tonumber(ARGV[arg])
      local period = tonumber(ARGV[arg + 1])
      local tag = tonumber(ARGV[arg + 2])
      arg = arg + 3
      local f = policy .. ':' .. period .. ':'
      if mode == 'u' then
        algorithm.undo(hash, f, limit, period, cost, tag)
      else
        local allowed, remaining, reset, retry, window_tag, window_ttl, window_fields =
          algorithm.check(hash, f, now, limit, period, cost, counting)
        if not allowed then
          all_allowed = false
          refused_here = true
        end
        out[#out + 1] = allowed and 1 or 0
        out[#out + 1] = remaining
        out[#out + 1] = reset
        out[#out + 1] = retry
        out[#out + 1] = window_tag
        for _, x in ipairs(window_fields) do
          fields[#fields + 1] = x
        end
        ttl = math.max(ttl, window_ttl)
      end
    end
    if #fields > 0 then
      writes[#writes + 1] = { hash, fields, ttl }
    end
    if cap >= 0 then
      if mode == 'u' then
        redis.call('ZREM', lease_key, lease_id)
      else
        -- Leases older than the ttl belong to requests whose instance never gave them
        -- back (it crashed); they no longer count.
        local in_flight
        if counting then
          redis.call('ZREMRANGEBYSCORE', lease_key, '-inf', now - lease_ttl)
          in_flight = redis.call('ZCARD', lease_key)
        else
          in_flight = redis.call('ZCOUNT', lease_key, '(' .. (now - lease_ttl), '+inf')
        end
        local allowed = in_flight < cap
        if not allowed then
          all_allowed = false
          refused_here = true
        end
        local used = in_flight
        if allowed and counting then
          used = in_flight + 1
          leases[#leases + 1] = lease_key
        end
        out[#out + 1] = allowed and 1 or 0
        out[#out + 1] = math.max(cap - used, 0)
        out[#out + 1] = 0
        out[#out + 1] = allowed and 0 or 1000
        out[#out + 1] = 0
      end
    end
    if block > 0 and mode ~= 'u' then
      local field = policy .. ':b'
      local blocked_until = tonumber(redis.call('HGET', hash, field)) or 0
      if blocked_until <= now and refused_here and counting then
        blocked_until = now + block
        blocks[#blocks + 1] = { hash, field, blocked_until, block }
      end
      local blocked = blocked_until > now
      if blocked then
        all_allowed = false
      end
      local left = blocked and (blocked_until - now) or 0
      out[#out + 1] = blocked and 0 or 1
      out[#out + 1] = blocked and 0 or 1
      out[#out + 1] = left
      out[#out + 1] = left
      out[#out + 1] = 0
    end
  end

  for _, b in ipairs(blocks) do
    redis.call('HSET', b[1], b[2], b[3])
    if redis.call('PTTL', b[1]) < b[4] then
      redis.call('PEXPIRE', b[1], b[4])
    end
  end

  key = key + 2 * subjects
  if mode == 'u' then
    return 0, key, arg
  end

  if all_allowed and counting then
    for _, w in ipairs(writes) do
      redis.call('HSET', w[1], unpack(w[2]))
      -- One ttl per hash: only ever extended, so a short window never cuts short the
      -- state of a longer one. At least a second, so a zero ttl never deletes the key.
      local ttl = math.max(w[3], 1000)
      if redis.call('PTTL', w[1]) < ttl then
        redis.call('PEXPIRE', w[1], ttl)
      end
    end
    for _, lease_key in ipairs(leases) do
      redis.call('ZADD', lease_key, now, lease_id)
      redis.call('PEXPIRE', lease_key, lease_ttl)
    end
  end
  out[1] = all_allowed and 1 or 0
  return out, key, arg
end

local replies = {}
local key, arg = 0, 2
for call = 1, tonumber(ARGV[1]) do
  replies[call], key, arg = decide(key, arg)
end
return replies
