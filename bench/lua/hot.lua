-- One hot key, one credential.
dofile(os.getenv("BENCH_LUA") .. "/common.lua")
wrk.headers["Authorization"] = "token bench-token-0001"
wrk.path = "/repos/octo/hello"
