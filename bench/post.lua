-- wrk script: POST the file named by $WRK_BODY to the URL given on the command line, and print
-- one JSON line at the end (requests/s, p50, p99, errors) for bench/serving_bench.py to read.
-- wrk counts a non-2xx/3xx answer as a "status" error; socket errors are counted too.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.body = file:read("*a")
file:close()

-- $WRK_DELAY_MS (optional): each connection waits a random time, this long on average
-- (exponential), between an answer and its next request: a load below the server's capacity
-- (wrk's closed loop with think time; wrk2's fixed rate is not installed here).
local mean_delay = tonumber(os.getenv("WRK_DELAY_MS") or "")
if mean_delay and mean_delay > 0 then
  function delay()
    return -mean_delay * math.log(1 - math.random())
  end
end

-- $WRK_HISTOGRAM (optional): a file to write every latency wrk recorded into, one "microseconds
-- count" line per distinct value, so rounds can be pooled into one distribution.
local histogram = os.getenv("WRK_HISTOGRAM")

function done(summary, latency, requests)
  if histogram and histogram ~= "" then
    local out = assert(io.open(histogram, "w"))
    -- latency(i) is the i-th distinct value and its count; past the last one wrk returns value 0
    -- (with the last count), and every latency is at least 1 us.
    for i = 1, 100000 do
      local value, count = latency(i)
      if value == 0 then break end
      out:write(string.format("%d %d\n", value, count))
    end
    out:close()
  end
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    '{"requests": %d, "rps": %.2f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d, ' ..
    '"error_kinds": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, "seconds": %.2f}\n',
    summary.requests, summary.requests / seconds, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.status + e.timeout, e.connect, e.read, e.write, e.status, e.timeout, seconds))
end
