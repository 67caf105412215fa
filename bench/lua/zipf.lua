-- 10,000 keys with a Zipf(1.0) spread, one credential: a few keys take most requests.
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
  return lo - 1
end
function setup(thread) thread:set("seed", math.random(1, 1e9)) end
function init(args) math.randomseed(seed or 1) end
function request()
  return wrk.format("GET", "/bench/" .. pick(), { ["Authorization"] = "token bench-token-0001" })
end
