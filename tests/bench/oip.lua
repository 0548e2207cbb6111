-- wrk: POST one fixed OIP request body; count answers by class.
--   BODY_FILE  the request body      HEADERS  extra headers, 'K: V' separated by ';;'
-- Prints one line: `non2xx=N bad=0 ok=N limited=N other=N` (limited: 429; other: any other
-- non-2xx). Socket errors are in wrk's own summary.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok, limited, other = 0, 0, 0
  local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
  local body = f:read("*a")
  f:close()
  local headers = { ["Content-Type"] = "application/json" }
  for h in ((os.getenv("HEADERS") or "") .. ";;"):gmatch("(.-);;") do
    local k, v = h:match("^%s*([^:]+):%s*(.-)%s*$")
    if k then headers[k] = v end
  end
  req = wrk.format("POST", nil, headers, body)
end

function request()
  return req
end

function response(status, headers, body)
  if status >= 200 and status <= 299 then
    ok = ok + 1
  elseif status == 429 then
    limited = limited + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local totals = { ok = 0, limited = 0, other = 0 }
  for _, t in ipairs(threads) do
    for k, _ in pairs(totals) do
      totals[k] = totals[k] + t:get(k)
    end
  end
  io.write(string.format("non2xx=%d bad=0 ok=%d limited=%d other=%d\n",
    totals.limited + totals.other, totals.ok, totals.limited, totals.other))
end
