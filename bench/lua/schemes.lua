-- 100 credentials over the same 100 paths, each request sending its credential as either
-- `token X` or `Bearer X` (clients and libraries differ). GitHub treats both as the same
-- credential; a cache keyed on the raw Authorization header does not.
-- Requests are formatted once, in init() (see revalidate.lua).
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
local requests = {}
function init(args)
  math.randomseed(os.time())
  for _, scheme in ipairs({ "token", "Bearer" }) do
    for c = 0, 99 do
      local auth = string.format("%s bench-token-%04d", scheme, c)
      for k = 0, 99 do
        requests[#requests + 1] = wrk.format("GET", "/bench/" .. k, { ["Authorization"] = auth })
      end
    end
  end
end
function request() return requests[math.random(1, #requests)] end
