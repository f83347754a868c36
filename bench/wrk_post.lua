-- wrk script for bench/intake.py: POST Falco alerts to the drift-responder intake.
--
--   wrk ... -s bench/wrk_post.lua http://127.0.0.1:PORT/v1/falco -- BODIES TOKEN CTYPE RUN
--
-- BODIES is a file of request bodies separated by the byte 0x1E (which JSON never contains raw).
-- A body may contain the placeholder @@SEQ@@ once (inside the alert uuid): it is replaced per
-- request by 12 hex digits (run, wrk thread, request counter), so every alert sent is distinct.
-- Requests cycle through the bodies, so consecutive requests name different containers.
-- done() prints one line "BENCH_JSON {...}" with the counts and exact latency percentiles.

local threads = {}

function setup(thread)
  thread:set("thread_no", #threads)
  table.insert(threads, thread)
end

local prefixes, suffixes, plain = {}, {}, {}
local count = 0
local counter = 0
local headers = {}
local run_no = 0

function init(args)
  local path = args[1]
  headers["Authorization"] = "Bearer " .. args[2]
  headers["Content-Type"] = args[3] or "application/json"
  run_no = tonumber(args[4] or "0")
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  for body in string.gmatch(data, "[^\30]+") do
    count = count + 1
    local s, e = string.find(body, "@@SEQ@@", 1, true)
    if s then
      prefixes[count] = string.sub(body, 1, s - 1)
      suffixes[count] = string.sub(body, e + 1)
    else
      plain[count] = wrk.format("POST", nil, headers, body)
    end
  end
  assert(count > 0, "no bodies in " .. path)
  -- start each thread at a different body so threads do not march in lockstep
  counter = (thread_no or 0) * 7
end

function request()
  counter = counter + 1
  local i = (counter % count) + 1
  if plain[i] then
    return plain[i]
  end
  local seq = string.format("%02x%02x%08x", run_no % 256, (thread_no or 0) % 256,
                            counter % 4294967296)
  return wrk.format("POST", nil, headers, prefixes[i] .. seq .. suffixes[i])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
