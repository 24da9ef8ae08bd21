-- wrk script for bench/deduct.ts: Connect unary JSON over HTTP/1.1, as
-- bench/lean-clients.ts's leanConnectClient sends it.
--
--   wrk -t 1 -c 64 -d 10s --timeout 10s --latency -s bench/wrk-deduct.lua http://127.0.0.1:PORT \
--       -- MODE TOKEN PREFIX ACCOUNTS THREADS
--
-- MODE: "spread" (DeductCredits round-robin over bench_0..bench_{ACCOUNTS-1}),
-- "hot" (DeductCredits on bench_0) or "echo" (DiagnosticsService.Echo);
-- THREADS: wrk's -t (thread i takes accounts i, i+THREADS, ...).
-- Every DeductCredits carries a fresh idempotency key PREFIX-THREAD-N (a
-- replay would be cheaper than a deduction). An answer counts only when it
-- is HTTP 200 with the body the lean client expects ("transaction" /
-- "payload"); anything else is counted, and one is kept, as an error.
-- done() prints machine-readable "wrk-<name> <value>" lines for the bench.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  local mode, token = args[1], args[2]
  prefix = args[3] .. "-" .. tid .. "-"
  accounts = tonumber(args[4])
  hot = mode == "hot"
  echo = mode == "echo"
  nthreads = tonumber(args[5])
  n = 0
  ok = 0
  bad = 0
  last_bad = ""
  local path = echo and "/billing.v1.DiagnosticsService/Echo" or "/billing.v1.CreditService/DeductCredits"
  expect = echo and '"payload"' or '"transaction"'
  head = "POST " .. path .. " HTTP/1.1\r\n"
    .. "Host: " .. wrk.host .. ":" .. tostring(wrk.port) .. "\r\n"
    .. "Content-Type: application/json\r\n"
    .. "Authorization: Bearer " .. token .. "\r\n"
    .. "Content-Length: "
  echo_request = head .. #'{"payload":"ping"}' .. "\r\n\r\n" .. '{"payload":"ping"}'
end

function request()
  if echo then return echo_request end
  n = n + 1
  local account = hot and "bench_0" or ("bench_" .. ((n * nthreads + tid) % accounts))
  local body = '{"accountId":"' .. account
    .. '","operationType":"content_generation","usage":{"credits":"1"},"idempotencyKey":"'
    .. prefix .. n .. '"}'
  return head .. #body .. "\r\n\r\n" .. body
end

function response(status, headers, body)
  if status == 200 and string.find(body, expect, 1, true) then
    ok = ok + 1
  else
    bad = bad + 1
    last_bad = "HTTP " .. status .. ": " .. string.sub(body, 1, 200)
  end
end

function done(summary, latency, requests)
  local ok, bad, last_bad = 0, 0, ""
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok")
    bad = bad + t:get("bad")
    if t:get("bad") > 0 then last_bad = t:get("last_bad") end
  end
  local e = summary.errors
  io.write(string.format("wrk-ok %d\n", ok))
  io.write(string.format("wrk-bad %d\n", bad))
  io.write(string.format("wrk-socket-errors %d\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("wrk-duration-us %d\n", summary.duration))
  io.write(string.format("wrk-p50-us %d\n", latency:percentile(50)))
  io.write(string.format("wrk-p99-us %d\n", latency:percentile(99)))
  -- CPU of the whole wrk process (every thread), user + system: clock() is
  -- CLOCK_PROCESS_CPUTIME_ID on Linux.
  io.write(string.format("wrk-cpu-s %.4f\n", os.clock()))
  if bad > 0 then io.write("wrk-last-bad " .. string.gsub(last_bad, "[\r\n]", " ") .. "\n") end
end
