-- Revalidation-heavy: 100 keys, one credential, served with max-age=0 upstream.
-- Requests are formatted once, in init(): building one per call in Lua capped wrk's single
-- thread near 110k requests/s, below what the proxies serve.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
local requests = {}
function init(args)
  math.randomseed(os.time())
  for k = 0, 99 do
    requests[k + 1] = wrk.format("GET", "/bench/" .. k, { ["Authorization"] = "token bench-token-0001" })
  end
end
function request() return requests[math.random(1, 100)] end
