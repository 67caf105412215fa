-- 100 credentials over the same 100 paths: every (credential, path) is its own cache entry.
-- Requests are formatted once, in init() (see revalidate.lua).
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
local requests = {}
function init(args)
  math.randomseed(os.time())
  for c = 0, 99 do
    local token = string.format("token bench-token-%04d", c)
    for k = 0, 99 do
      requests[#requests + 1] = wrk.format("GET", "/bench/" .. k, { ["Authorization"] = token })
    end
  end
end
function request() return requests[math.random(1, #requests)] end
