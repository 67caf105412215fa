-- 100 credentials over the same 100 paths, each request sending its credential as either
-- `token X` or `Bearer X` (clients and libraries differ). GitHub treats both as the same
-- credential; a cache keyed on the raw Authorization header does not.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
function init(args) math.randomseed(os.time()) end
function request()
  local scheme = (math.random(0, 1) == 0) and "token" or "Bearer"
  local auth = string.format("%s bench-token-%04d", scheme, math.random(0, 99))
  return wrk.format("GET", "/bench/" .. math.random(0, 99), { ["Authorization"] = auth })
end
