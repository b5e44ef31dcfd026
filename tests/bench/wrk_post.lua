-- wrk script for the HTTP write benchmark: POST /v1/transfers, each request with its own
-- Idempotency-Key (run prefix, thread id, counter) and a valid transfer body.
--
--   wrk -t2 -c16 -d12s -s wrk_post.lua http://127.0.0.1:PORT/v1/transfers -- <api key> <prefix>
--
-- done() prints one line, `wrk-result {json}`: requests, non-2xx responses, socket errors,
-- requests/s, and latency percentiles in microseconds.

local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  api_key = args[1] or ""
  prefix = args[2] or "bench"
  counter = 0
  non_2xx = 0
  statuses = {}
  math.randomseed(id * 7919 + os.time())
  headers = {
    ["Authorization"] = "Bearer " .. api_key,
    ["Content-Type"] = "application/json",
  }
end

function request()
  counter = counter + 1
  headers["Idempotency-Key"] = string.format("%s-%d-%d", prefix, id, counter)
  local from = math.random(1, 1000)
  local body = string.format(
    '{"from_account":"acc-%05d","to_account":"acc-%05d","amount":%d,"currency":"EUR",'
      .. '"memo":"bench %s"}',
    from, from % 1000 + 1, math.random(1, 100000), prefix
  )
  return wrk.format("POST", wrk.path, headers, body)
end

function response(status, _, _)
  statuses[status] = (statuses[status] or 0) + 1
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

function done(summary, latency, _)
  local bad, by_status = 0, {}
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non_2xx")
    for status, count in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(by_status) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'wrk-result {"requests":%d,"non_2xx":%d,"duration_us":%d,"requests_per_s":%.1f,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"statuses":{%s}}\n',
    summary.requests, bad, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")
  ))
end
