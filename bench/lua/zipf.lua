-- 10,000 keys with a Zipf(1.0) spread, one credential: a few keys take most requests.
-- Requests are formatted once and 2^20 Zipf draws made in init(); request() walks the draws
-- (see revalidate.lua for why).
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
local n = 10000
local cdf, total = {}, 0
for k = 1, n do total = total + 1 / k; cdf[k] = total end
for k = 1, n do cdf[k] = cdf[k] / total end
local function pick()
  local u, lo, hi = math.random(), 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end
local requests, draws, next_draw = {}, {}, 0
local draw_count = 1048576
function setup(thread) thread:set("seed", math.random(1, 1e9)) end
function init(args)
  math.randomseed(seed or 1)
  for k = 1, n do
    requests[k] = wrk.format("GET", "/bench/" .. (k - 1), { ["Authorization"] = "token bench-token-0001" })
  end
  for i = 1, draw_count do draws[i] = pick() end
end
function request()
  next_draw = next_draw % draw_count + 1
  return requests[draws[next_draw]]
end
