-- wrk: POST one fixed OIP request body; count non-2xx answers.
--   BODY_FILE  the request body      HEADERS  extra headers, 'K: V' separated by ';;'
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
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
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + t:get("non2xx")
  end
  io.write(string.format("non2xx=%d bad=0\n", total))
end
