-- wrk drives one proxy with the request mix that the bench (scripts/bench) writes to a file.
--
--   wrk -t1 -c10 -d60s --timeout 10s -s scripts/bench/wrk.lua http://127.0.0.1:PROXY_PORT -- MIX NAME
--
-- wrk has no proxy support: it connects to the proxy's port and sends absolute-form request
-- targets (`GET http://127.0.0.1:CP/apps HTTP/1.1`) with the CP's Host header, which
-- mitmproxy's regular mode forwards. MIX has one request a line, `METHOD URL [JSON BODY]`;
-- every connection cycles through them in order. Every request carries the bench's API key
-- and `X-Bench-Proxy: NAME`, which tells the servers (the simulator) which proxy it crossed.
-- At the end it prints `bench_wrk: requests=N connect=N read=N write=N timeout=N`.

local mix = {}
local next_index = 0

function init(args)
  local path, name = args[1], args[2]
  if not path or not name then
    error("usage: wrk ... -s wrk.lua URL -- MIX_FILE PROXY_NAME")
  end
  for line in io.lines(path) do
    local method, target, body = line:match("^(%u+) (%S+) ?(.*)$")
    if method then
      local headers = {
        ["Host"] = target:match("^%a+://([^/]+)"),
        ["Authorization"] = "Bearer sk-bench",
        ["X-Bench-Proxy"] = name,
      }
      if body == "" then
        body = nil
      else
        headers["Content-Type"] = "application/json"
      end
      mix[#mix + 1] = wrk.format(method, target, headers, body)
    end
  end
  if #mix == 0 then
    error("bench_wrk: no requests in " .. path)
  end
end

function request()
  next_index = next_index % #mix + 1
  return mix[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("bench_wrk: requests=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, e.connect, e.read, e.write, e.timeout))
end
