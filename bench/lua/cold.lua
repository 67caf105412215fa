-- Cold misses: every request a key never seen before (a fresh query string).
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
local counter = 0
function setup(thread) thread:set("id", math.random(1, 1e9)) end
function request()
  counter = counter + 1
  local path = string.format("/bench/%d?cold=%d-%d", counter % 10000, id or 0, counter)
  return wrk.format("GET", path, { ["Authorization"] = "token bench-token-0001" })
end
