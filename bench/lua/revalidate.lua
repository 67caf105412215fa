-- Revalidation-heavy: 100 keys, one credential, served with max-age=0 upstream.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
function init(args) math.randomseed(os.time()) end
function request()
  return wrk.format("GET", "/bench/" .. math.random(0, 99), { ["Authorization"] = "token bench-token-0001" })
end
