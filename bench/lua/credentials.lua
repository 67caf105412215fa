-- 100 credentials over the same 100 paths: every (credential, path) is its own cache entry.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
function init(args) math.randomseed(os.time()) end
function request()
  local token = string.format("token bench-token-%04d", math.random(0, 99))
  return wrk.format("GET", "/bench/" .. math.random(0, 99), { ["Authorization"] = token })
end
