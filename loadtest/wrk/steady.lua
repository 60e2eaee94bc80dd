-- wrk script for run-steady.sh: credentials and Host from the environment, responses
-- counted by status, optional pacing, and k6-like thresholds checked at the end (the
-- process exits 1 when one fails).
--
--   API_KEY / API_KEY_HEADER (x-api-key)   BEARER_TOKEN   HOST_HEADER   METHOD (GET)
--   RATE          total requests/s to aim for (approximate, see below); unset: as fast as possible
--   CONNECTIONS   must match wrk -c (run-steady.sh sets it); used for pacing
--   P95_MS / P99_MS / MAX_FAILED   thresholds, as in the k6 scripts (failed = non-2xx/3xx,
--                 or not in EXPECTED_STATUSES, plus socket errors)
--   EXPECTED_STATUSES  e.g. "200,429"
--
-- Pacing: wrk is a closed-loop client (each connection sends its next request when the
-- previous answer arrives). With RATE set, each connection waits CONNECTIONS/RATE seconds
-- before each request, which gives about RATE requests/s while latency is much smaller
-- than that interval. For a true open-model (constant arrival rate) test use k6 steady.js.

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

wrk.method = env("METHOD", "GET")
local key = env("API_KEY", nil)
if key then wrk.headers[env("API_KEY_HEADER", "x-api-key")] = key end
local token = env("BEARER_TOKEN", nil)
if token then wrk.headers["Authorization"] = "Bearer " .. token end
local host = env("HOST_HEADER", nil)
if host then wrk.headers["Host"] = host end

local rate = tonumber(env("RATE", "0"))
local connections = tonumber(env("CONNECTIONS", "1"))
local interval_ms = 0
if rate and rate > 0 then interval_ms = connections * 1000 / rate end

local expected = nil
local expected_raw = env("EXPECTED_STATUSES", nil)
if expected_raw then
  expected = {}
  for code in string.gmatch(expected_raw, "%d+") do expected[tonumber(code)] = true end
end

-- Per thread (each wrk thread has its own Lua state).
statuses = {}

-- Defined only when pacing: wrk schedules every request through a timer when it exists.
if interval_ms > 0 then
  function delay()
    return interval_ms
  end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

-- In the main Lua state: collect the threads to read their counts at the end.
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local total, bad = {}, 0
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local codes = {}
  for status in pairs(total) do table.insert(codes, status) end
  table.sort(codes)
  io.write("\nresponses by status:\n")
  for _, status in ipairs(codes) do
    local n = total[status]
    local ok
    if expected then ok = expected[status] else ok = status >= 200 and status < 400 end
    if not ok then bad = bad + n end
    io.write(string.format("  %d: %d%s\n", status, n, ok and "" or "  (failed)"))
  end
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  local attempts = summary.requests + socket_errors
  local failed = attempts > 0 and (bad + socket_errors) / attempts or 1
  local p95 = latency:percentile(95) / 1000
  local p99 = latency:percentile(99) / 1000
  local seconds = summary.duration / 1e6
  io.write(string.format("requests: %d in %.1fs = %.1f/s; socket errors: %d\n",
    summary.requests, seconds, summary.requests / seconds, socket_errors))

  local ok = true
  local function threshold(name, value, limit, unit)
    local pass = value <= limit
    ok = ok and pass
    io.write(string.format("  %s %s %.3f%s (limit %s%s)\n", pass and "PASS" or "FAIL", name, value, unit, limit, unit))
  end
  io.write("thresholds:\n")
  threshold("p(95) latency", p95, tonumber(env("P95_MS", "50")), "ms")
  threshold("p(99) latency", p99, tonumber(env("P99_MS", "100")), "ms")
  threshold("failed rate", failed, tonumber(env("MAX_FAILED", "0.001")), "")
  if not ok then os.exit(1) end
end
