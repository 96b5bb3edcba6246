-- Shared by read.lua, identifier.lua and compartment.lua (loaded with dofile).
-- Each request is a GET of path_for(target) for a target picked at random from the file
-- $PEER_TARGETS (one target a line). $PEER_PREFIX is the FHIR base path ("/fhir" or "");
-- $PEER_TOKEN, when set, goes in an Authorization: Bearer header.
-- done() prints one line "PEERJSON {...}" that bench/peer/peer.py parses. wrk counts a
-- response with status >= 400 as errors.status; connect/read/write/timeout errors apart.

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  targets = {}
  for line in io.lines(os.getenv("PEER_TARGETS")) do
    if #line > 0 then
      targets[#targets + 1] = line
    end
  end
  if #targets == 0 then
    error("no targets in " .. os.getenv("PEER_TARGETS"))
  end
  prefix = os.getenv("PEER_PREFIX") or ""
  math.randomseed(os.time() + 7919 * (tid or 0))
  local token = os.getenv("PEER_TOKEN")
  if token and #token > 0 then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
  wrk.headers["Accept"] = "application/fhir+json"
end

function request()
  return wrk.format("GET", path_for(targets[math.random(#targets)]))
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'PEERJSON {"requests":%d,"duration_s":%.3f,"bytes":%d,"requests_per_s":%.1f,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"errors_status":%d,"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_timeout":%d}\n',
    summary.requests, secs, summary.bytes, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect, e.read, e.write, e.timeout))
end
